"""TensorBoard (``logger=tensorboard``): Keras's TensorBoard callback, which writes every epoch
log (loss, accuracy and, on the epochs ``callbacks.val_captions`` runs, the caption scores
``val_cider``, ``val_bleu_4``, ...: ``validation/epoch_cider``), plus, written here with
``tf.summary`` into ``<log_dir>/captions``: the validation captions of those epochs as text,
and at the end the final scores, the sample validation images with their captions and their
attention plots.

    tensorboard --logdir <run_dir>/tensorboard
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from captioning.console import console
from captioning.runs.files import TENSORBOARD


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A Markdown table (TensorBoard's text plugin renders Markdown)."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows])


class TensorBoardLogger:
    """``RunLogger`` (``tracking/loggers.py``) for TensorBoard."""

    def __init__(self, cfg, run_dir: Path):
        c = cfg.logger.tensorboard
        self.dir = Path(c.get("log_dir") or Path(run_dir) / TENSORBOARD)
        self.histogram_freq = int(c.get("histogram_freq", 0))
        self.max_captions = int(c.get("max_captions", 8))
        self.writer = tf.summary.create_file_writer(str(self.dir / "captions"))
        # Steps are Keras's (its callback's): the epoch index from 0. The end's summaries go at
        # the last epoch's.
        self.step = 0
        self.final_lines: list[tuple[str, str, str]] = []

    def callbacks(self) -> list:
        # No graph (a large, slow write of the traced step); epoch summaries only.
        return [keras.callbacks.TensorBoard(log_dir=str(self.dir), write_graph=False,
                                            histogram_freq=self.histogram_freq,
                                            update_freq="epoch", profile_batch=0)]

    def log_epoch(self, epoch: int, logs: dict) -> None:
        self.step = epoch - 1                # the scalars themselves: Keras's callback

    def log_captions(self, epoch: int, records, captions) -> None:
        rows = [(r.id, c, r.captions[0] if r.captions else "")
                for r, c in zip(records[: self.max_captions], captions, strict=False)]
        with self.writer.as_default():
            tf.summary.text("captions/val", _table(rows, ("image", "caption", "a reference")),
                            step=epoch - 1)
        self.writer.flush()

    def log_image(self, path, name: str | None = None, **kwargs) -> None:
        """A PNG/JPEG file as an image summary at the last epoch; a caption in ``metadata``
        goes beside it as text."""
        pixels = tf.io.decode_image(tf.io.read_file(str(path)), channels=3,
                                    expand_animations=False)
        tag = name or Path(path).stem
        with self.writer.as_default():
            tf.summary.image(tag, pixels[None], step=self.step)
            meta = kwargs.get("metadata") or {}
            if "prediction" in meta:
                tf.summary.text(f"{tag}/caption", _table([(meta["prediction"],
                                              " / ".join(meta.get("references", [])))],
                                            ("caption", "references")), step=self.step)

    def log_text(self, text: str, metadata: dict | None = None, **kwargs) -> None:
        """Final captions, gathered into one table written at the end (``log_outputs``)."""
        image, _, caption = str(text).partition(": ")
        refs = " / ".join((metadata or {}).get("references", []))
        self.final_lines.append((image, caption, refs))

    def log_outputs(self, run_dir, results: dict, log_model: bool = False) -> None:
        with self.writer.as_default():
            for split in ("val", "test", "holdout"):
                for k, v in results.get(split, {}).items():
                    if isinstance(v, int | float) and np.isfinite(v):
                        tf.summary.scalar(f"final/{split}_{k}", float(v), step=self.step)
            if self.final_lines:
                tf.summary.text("captions/final_val", _table(
                    self.final_lines, ("image", "caption", "references")), step=self.step)
        self.writer.flush()

    def close_and_report(self) -> None:
        self.writer.close()
        console.print(f"[bold]TensorBoard:[/] tensorboard --logdir {self.dir}")
