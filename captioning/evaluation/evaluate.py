"""Caption a split, score it, write its predictions: what the end of training and ``eval.py``
both do.

``evaluate(model, data, split, cfg)`` gives the split's loss, accuracy and COCO scores, its
captions and the per-image scores; ``write_predictions`` writes ``predictions*.csv``;
``final_evaluation`` is the end of a training run (val and test, the final Kangas grid, a few
captioned images to Comet).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from captioning.io import atomic_write_text


@dataclass
class SplitResult:
    """One split, evaluated: ``summary`` is what metrics.json holds for it."""

    records: list
    predictions: list[str]
    summary: dict                                  # loss, accuracy and the corpus scores
    per_image: dict = field(default_factory=dict)  # image id -> {"bleu_4": .., "cider": ..}
    notes: list[str] = field(default_factory=list)


def evaluate_split(model, data, records, cfg, seed: int | None = None, generator=None):
    """Caption ``records`` with the configured decoding and score them; returns (scores,
    predictions). Pass one ``generator`` for several splits: its compiled graph is reused."""
    from captioning.evaluation.metrics import score
    from captioning.models.decoding import Generator, caption_records

    generator = generator or Generator.from_config(model, data.vocab, cfg.decode, seed=seed)
    preds = caption_records(generator, data, records, int(cfg.evaluation.batch_size))
    scores = score({r.id: list(r.captions) for r in records},
                   {r.id: p for r, p in zip(records, preds, strict=True)},
                   spice=bool(cfg.evaluation.spice))
    return scores, preds


def evaluate(model, data, split: str, cfg, seed: int | None = None, generator=None) -> SplitResult:
    """The split's masked loss and accuracy (teacher forcing) and its generated captions' scores."""
    records = data.splits[split]
    ds = data.train_dataset(int(cfg.evaluation.batch_size), int(cfg.seed), split=split,
                            shuffle=False)
    loss = model.evaluate(ds, verbose=0, return_dict=True)
    scores, preds = evaluate_split(model, data, records, cfg, seed=seed, generator=generator)
    summary = {"loss": float(loss["loss"]), "accuracy": float(loss["accuracy"]), **scores.corpus}
    return SplitResult(records, preds, summary, scores.per_image, list(scores.notes))


def write_predictions(path: Path, records, predictions: list[str], per_image: dict) -> None:
    """``predictions*.csv``: image, references (joined by " | "), prediction, BLEU-4, CIDEr."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "references", "prediction", "bleu_4", "cider"])
    for r, p in zip(records, predictions, strict=True):
        s = per_image.get(r.id, {})
        w.writerow([r.id, " | ".join(r.captions), p, f"{s.get('bleu_4', 0):.4f}",
                    f"{s.get('cider', 0):.4f}"])
    atomic_write_text(path, buf.getvalue())


def final_evaluation(model, data, cfg, run_dir: Path, tracker=None, best_epoch=None):
    """Val and test (when the dataset has them) with ``decode.*``: ``predictions.csv`` /
    ``predictions_test.csv``, the samples printed, the final Kangas grid and a few captioned
    images to Comet. Returns ({split: summary}, notes)."""
    from captioning.console import print_samples
    from captioning.models.decoding import Generator

    generator = Generator.from_config(model, data.vocab, cfg.decode, seed=int(cfg.seed))
    results: dict = {}
    notes: list[str] = []
    for split in ("val", "test"):
        if not data.splits[split]:
            continue
        r = evaluate(model, data, split, cfg, generator=generator)
        results[split] = r.summary
        notes += [n for n in r.notes if n not in notes]
        name = "predictions.csv" if split == "val" else f"predictions_{split}.csv"
        write_predictions(Path(run_dir) / name, r.records, r.predictions, r.per_image)
        if split == "val":
            print_samples(r.records, r.predictions, n=int(cfg.evaluation.show))
            _review_outputs(r, cfg, run_dir, tracker, best_epoch)
    return results, notes


def _review_outputs(r: SplitResult, cfg, run_dir, tracker, best_epoch) -> None:
    """The final Kangas grid and, with Comet, a few images with their captions."""
    from captioning.tracking.kangas_grids import pick_rows, write_grid

    if cfg.callbacks.kangas.enabled:
        max_rows = int(cfg.callbacks.kangas.max_rows)
        rows = {x.id for x in pick_rows(r.records, max_rows, int(cfg.seed))}
        keep = [i for i, x in enumerate(r.records) if x.id in rows]
        write_grid(run_dir, "final", [r.records[i] for i in keep], [r.predictions[i] for i in keep],
                   r.per_image, best_epoch, cfg, tracker)
    if tracker is not None:
        chosen = {x.id for x in pick_rows(r.records, int(cfg.logger.sample_images))}
        for x, p in zip(r.records, r.predictions, strict=True):
            if x.id in chosen:
                tracker.call("log_image", x.image, name=f"val/{Path(x.id).stem}",
                             metadata={"prediction": p, "references": list(x.captions)})
                tracker.call("log_text", f"{x.id}: {p}", metadata={"references": list(x.captions)})
