"""COCO Captions through TensorFlow Datasets (``coco_captions``: COCO 2014 with the Karpathy
splits train 82,783 / restval 30,504 / val 5,000 / test 5,000), with every caption of an
image (recipe B kept only the first).

Reads the prepared TFDS copy in ``dataset.data_dir`` (default ``~/tensorflow_datasets``),
then, per TFDS split, writes and afterwards reads::

    <cache_dir>/tfds_coco_captions/<split>/NAME.jpg        the JPEG bytes, unchanged
    <cache_dir>/tfds_coco_captions/<split>/captions.json   {"NAME.jpg": ["caption", ...]}

(``<split>-first<N>/`` when ``dataset.max_images=N``.) An image listed there but gone from
the folder is an error, or skipped and counted with ``dataset.on_missing=skip``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from captioning import DatasetError
from captioning.data.readers.common import assemble, dedupe
from captioning.data.records import DataReport, Record
from captioning.io import build_lock

# Why the on-disk copy is our own code: TFDS stores images inside its record files. To keep
# one record type (a path per image) for every dataset, each split's JPEG bytes are written
# once, unchanged, next to a captions.json index; later runs and sweep jobs read that index
# and never touch TFDS again.

SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}   # TFDS -> ours


def _load_split(name: str, split: str, data_dir, download: bool, limit: int | None):
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=download,
                       shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:  # noqa: BLE001 - TFDS raises assorted types for "not prepared"
        where = data_dir or "~/tensorflow_datasets"
        raise DatasetError(
            f"TFDS {name} split {split!r} is not available in {where} "
            f"({type(e).__name__}: {str(e)[:200]}). "
            f"Prepare it once with `tfds build {name} --data_dir={where}` (about 38 GB of "
            f"downloads), point dataset.data_dir at an existing copy, or set "
            f"dataset.download=true.") from None
    return tfds.as_numpy(ds.take(limit) if limit else ds)


def _materialise(folder: Path, examples) -> dict:
    """Write each example's encoded image bytes and return {file name: [captions]}."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    index: dict[str, list[str]] = {}
    try:
        for ex in examples:
            name = os.path.basename(ex["image/filename"].decode())
            image = ex["image"]
            (tmp / name).write_bytes(image if isinstance(image, bytes) else _encode(image))
            index[name] = [t.decode("utf-8").strip() for t in ex["captions"]["text"]]
        (tmp / "captions.json").write_text(json.dumps(index), encoding="utf-8")
        try:
            tmp.rename(folder)
        except OSError:          # a concurrent job finished first: use its copy
            if not (folder / "captions.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((folder / "captions.json").read_text(encoding="utf-8"))


def _encode(pixels) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def read_coco_tfds(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Records for every TFDS split (restval joins train unless ``dataset.restval=false``)."""
    cache = Path(os.path.expanduser(str(cfg.cache_dir))) / f"tfds_{cfg.tfds_name}"
    limit = int(cfg.max_images) if cfg.get("max_images") else None
    records: list[Record] = []
    for tfds_split, ours in SPLITS.items():
        if tfds_split == "restval" and not cfg.get("restval", True):
            continue
        folder = cache / (tfds_split if limit is None else f"{tfds_split}-first{limit}")
        with build_lock(folder):                  # one copy, however many jobs start together
            if (folder / "captions.json").is_file():
                index = json.loads((folder / "captions.json").read_text(encoding="utf-8"))
            else:
                examples = _load_split(cfg.tfds_name, tfds_split, cfg.get("data_dir"),
                                       bool(cfg.get("download", False)), limit)
                index = _materialise(folder, examples)
        records += assemble(dedupe(index, report), folder, dict.fromkeys(index, ours),
                            cfg.get("on_missing", "error"), report)
    return records, None
