"""Kangas DataGrids: validation predictions per epoch, and dataset browsing.

A grid is written to a temporary file and renamed into place, so a run killed mid-write
leaves the previous grid (or none), never a half-written one.
"""

from __future__ import annotations

import random
from pathlib import Path

from captioning.io import atomic_path
from captioning.models.attention import upsample

PREDICTION_COLUMNS = ["image", "id", "references", "prediction", "bleu_4", "cider", "length",
                      "epoch", "run"]
# Each column's Kangas type, given rather than guessed from the first rows.
PREDICTION_TYPES = {"image": "IMAGE-ASSET", "id": "TEXT", "references": "TEXT",
                    "prediction": "TEXT", "bleu_4": "FLOAT", "cider": "FLOAT",
                    "length": "INTEGER", "epoch": "INTEGER", "run": "TEXT", "samples": "TEXT"}
# Columns of sentences: shown as plain text, never as coloured labels (save_grid).
PLAIN_TEXT_COLUMNS = ("references", "prediction", "samples", "captions", "run")
# The final grid's one annotation layer: a heat map per generated word, labelled "03 circle".
ATTENTION_LAYER = "attention"


def pick_rows(records, max_rows: int | None, seed: int = 0):
    """A deterministic subset of at most ``max_rows`` records (the same every epoch)."""
    if not max_rows or len(records) <= max_rows:
        return list(records)
    idx = sorted(random.Random(seed).sample(range(len(records)), max_rows))
    return [records[i] for i in idx]


def image_cell(path: str, thumb: int = 256):
    """A kangas.Image of the file, upright (EXIF orientation applied) and downsized so grids
    stay small. A file that cannot be decoded, or one over Pillow's decompression-bomb limit,
    becomes a grey square instead of ending the grid."""
    import warnings

    import kangas
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and im.width * im.height > limit:
                    raise Image.DecompressionBombError(f"{im.width}x{im.height}")
                im.draft("RGB", (thumb, thumb))          # JPEG: decode at a reduced scale
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((thumb, thumb))
                return kangas.Image(im, source=None)
    except Exception:  # noqa: BLE001 - a bad file must not end the grid
        return kangas.Image(Image.new("RGB", (thumb // 4, thumb // 4), (128, 128, 128)),
                            source=None)


# The long side of each attention mask, in pixels. The Kangas UI stretches a mask over its image
# (with the browser's smoothing), and a mask is stored as JSON numbers, one per pixel, so the
# grid's size grows with the side squared (measured: docs/experiments/speed.md). The maps come
# from grids of 3x3 to 10x10 image tokens: 16 loses nothing.
MASK_SIDE = 16


def add_attention(image, words, maps) -> None:
    """One metric mask per generated word on a ``kangas.Image``, in the ``ATTENTION_LAYER``
    layer, labelled with its position and the word ("03 circle"; the page shows the label as
    "attention: 03 circle"): the word's attention map, upsampled from the token grid to the
    image's shape (``MASK_SIDE`` pixels on the long side). In the Kangas UI's expanded view a
    reviewer shows or hides each word's map; ``make kangas`` draws grid thumbnails without them
    (captioning/review.py)."""
    width, height = image.to_pil().size
    scale = MASK_SIDE / max(width, height)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    for i, (word, grid) in enumerate(zip(words, maps, strict=True)):
        # A list of rows: Kangas reads a 2-D array's shape as (width, height).
        image.add_mask_metric(f"{i + 1:02d} {word}", upsample(grid, size).tolist(),
                              layer_name=ATTENTION_LAYER, colormap="plasma")


def write_predictions_grid(path: Path, records, predictions, per_image: dict, epoch,
                           run_name: str, attention=None, samples=None) -> Path:
    """One row per image: image, id, all references, prediction, BLEU-4, CIDEr, length,
    epoch, run. ``attention``: per row, the prediction's ``WordMaps`` (heat-map layers on the
    image, ``add_attention``), or None."""
    import kangas

    rows = []
    for i, (r, p) in enumerate(zip(records, predictions, strict=True)):
        s = per_image.get(r.id, {})
        image = image_cell(r.image)
        if attention is not None:
            add_attention(image, attention[i].words, attention[i].maps)
        rows.append([image, r.id, " | ".join(r.captions), p,
                     round(s.get("bleu_4", 0.0), 4), round(s.get("cider", 0.0), 4),
                     len(p.split()), epoch, run_name]
                    + ([" | ".join(samples[i])] if samples else []))
    # decode.num_captions > 1: a "samples" column shows all of the image's N captions
    columns = PREDICTION_COLUMNS + (["samples"] if samples else [])
    dg = kangas.DataGrid(rows, columns={c: PREDICTION_TYPES[c] for c in columns},
                         name=Path(path).stem)
    return save_grid(dg, Path(path), plain_text=PLAIN_TEXT_COLUMNS)


def write_dataset_grid(path: Path, splits: dict, max_rows: int | None = None,
                       seed: int = 0) -> Path:
    """Recipe A's first step: browse (image, captions, split) before training."""
    import kangas

    rows = []
    for split, records in splits.items():
        for r in pick_rows(records, max_rows, seed):
            rows.append([image_cell(r.image), r.id, split, " | ".join(r.captions), len(r.captions)])
    dg = kangas.DataGrid(rows, columns={"image": "IMAGE-ASSET", "id": "TEXT", "split": "TEXT",
                                        "captions": "TEXT", "num_captions": "INTEGER"},
                         name=Path(path).stem)
    return save_grid(dg, Path(path), plain_text=PLAIN_TEXT_COLUMNS)


def save_grid(dg, path: Path, plain_text=()) -> Path:
    """Save ``dg`` at ``path`` (atomically, quietly); the ``plain_text`` columns are shown as
    text (``show_as_text``)."""
    import contextlib
    import io

    with atomic_path(path) as tmp:
        tmp.unlink()                      # kangas refuses to overwrite an existing file
        # Kangas prints progress bars and status lines; a training log does not need them.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            dg.save(str(tmp))
        show_as_text(tmp, plain_text)
    return path


def show_as_text(grid: Path, columns) -> None:
    """Show the TEXT ``columns`` of a saved grid as plain text. The Kangas page draws a TEXT
    value as a coloured label ("category" pill) when it is under 25 characters and its column
    has under 2,000 distinct values (the column's ``count_unique`` statistic, stored at save);
    a column type cannot say otherwise. Captions are sentences, so short ones became pills and
    long ones text in the same column: their columns' stored statistic drops count_unique."""
    import contextlib
    import json
    import sqlite3

    with contextlib.closing(sqlite3.connect(str(grid))) as db, db:
        for name, other in db.execute("SELECT name, other FROM metadata WHERE type = 'TEXT'")\
                .fetchall():
            if name in columns and other:
                stats = {k: v for k, v in json.loads(other).items() if k != "count_unique"}
                db.execute("UPDATE metadata SET other = ? WHERE name = ?",
                           (json.dumps(stats), name))


def write_grid(run_dir: Path, name: str, records, preds, per_image, epoch, cfg,
               tracker=None, attention=None, samples=None) -> Path | None:
    """predictions/<name>.datagrid (and a Comet asset); a failure is a warning, not a crash.
    ``attention``: per row, ``WordMaps`` of the prediction (see ``write_predictions_grid``)."""
    run_name = run_label(cfg, run_dir)
    try:
        path = write_predictions_grid(Path(run_dir) / "predictions" / f"{name}.datagrid", records,
                                      preds, per_image, epoch, run_name, attention, samples)
    except Exception as e:  # noqa: BLE001 - a broken grid must not end the training
        print(f"warning: could not write the Kangas grid {name}: {type(e).__name__}: {e}")
        return None
    if tracker is not None:
        tracker.call("log_asset", str(path), file_name=f"predictions/{path.name}")
    return path


def run_label(cfg, run_dir) -> str:
    """The grids' ``run`` column: the run's name (``logger.experiment_name``: run.py sets it to
    the command line's overrides, or ``defaults`` when there are none, shown as ``(defaults)``)
    and its folder's last two parts: ``decoder=gru dataset=coco @ 2026-11-21/12-00-00``."""
    name = cfg.logger.get("experiment_name")
    name = "(defaults)" if not name or name == "defaults" else str(name)
    return f"{name} @ {'/'.join(Path(run_dir).resolve().parts[-2:])}"
