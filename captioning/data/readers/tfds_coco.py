"""COCO Captions through TensorFlow Datasets (``coco_captions``: COCO 2014 with the Karpathy
splits train 82,783 / restval 30,504 / val 5,000 / test 5,000), with every caption of an
image (recipe B kept only the first).

Reads the prepared TFDS copy in ``dataset.data_dir`` (default ``$TFDS_DATA_DIR``, else
``<paths.data_dir>/tensorflow_datasets``), then, per TFDS split, writes and afterwards reads::

    <cache_dir>/tfds_coco_captions/<split>/NAME.jpg        the JPEG bytes, unchanged
    <cache_dir>/tfds_coco_captions/<split>/captions.json   {"NAME.jpg": ["caption", ...]}

(``<split>-first<N>/`` when ``dataset.max_images=N``.) An image listed there but gone from
the folder is an error, or skipped and counted with ``dataset.on_missing=skip``.

The first run copies about 19 GB for all of COCO: the size is estimated first (the images
per split times the mean size of its first JPEGs) and checked against the free space before
anything is written, and the copy shows a progress bar with its rate and the time left.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from captioning import DatasetError
from captioning.console import track
from captioning.data.readers.common import assemble, dedupe
from captioning.data.records import DataReport, Record
from captioning.io import build_lock, ensure_free_space

# Why the on-disk copy is our own code: TFDS stores images inside its record files. To keep
# one record type (a path per image) for every dataset, each split's JPEG bytes are written
# once, unchanged, next to a captions.json index; later runs and sweep jobs read that index
# and never touch TFDS again. (Streaming the TFDS records instead would need a second record
# type through the image checks, the feature cache, the grids and caption.py.)

SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}   # TFDS -> ours


def _load_split(name: str, split: str, data_dir, download: bool, limit: int | None):
    """-> the split as a lazy tf.data.Dataset (image bytes undecoded)."""
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(str(data_dir)) if data_dir else None
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=download,
                       shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:  # noqa: BLE001 - TFDS raises assorted types for "not prepared"
        where = data_dir or "~/tensorflow_datasets"
        home = Path("~/tensorflow_datasets").expanduser()
        found = (f" A copy exists in {home}: use it with dataset.data_dir={home}."
                 if (home / name).is_dir() and Path(where) != home else "")
        raise DatasetError(
            f"TFDS {name} split {split!r} is not available in {where} "
            f"({type(e).__name__}: {str(e)[:200]}).{found} "
            f"Prepare it once with `tfds build {name} --data_dir={where}` (about 38 GB of "
            f"downloads), point dataset.data_dir (or paths.data_dir, CAPTIONING_DATA_DIR) at "
            f"an existing copy, or set dataset.download=true.") from None
    return ds.take(limit) if limit else ds


def _estimate_bytes(ds, sample: int = 64) -> tuple[int, int]:
    """-> (images, bytes the copy will take): the count TFDS knows, times the mean size of the
    first ``sample`` JPEGs (read, not written)."""
    import tensorflow_datasets as tfds

    n = int(ds.cardinality())
    sizes = [len(ex["image"]) for ex in tfds.as_numpy(ds.take(sample))]
    if n < 0:                                  # unknown: count them (no image is decoded)
        n = sum(1 for _ in ds)
    mean = sum(sizes) / max(1, len(sizes))
    return n, int(n * (mean + 300))            # + the captions.json line and file-system slack


def _materialise(folder: Path, ds, count: int, progress: bool) -> dict:
    """Write each example's encoded image bytes and return {file name: [captions]}."""
    import tensorflow_datasets as tfds

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    index: dict[str, list[str]] = {}
    examples = tfds.as_numpy(ds)
    if progress:
        examples = track(examples, count, f"Copying COCO {folder.name} images to {folder}")
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


def read_coco_tfds(cfg, report: DataReport, progress: bool = True) -> tuple[list[Record], None]:
    """Records for every TFDS split (restval joins train unless ``dataset.restval=false``)."""
    cache = Path(os.path.expanduser(str(cfg.cache_dir))) / f"tfds_{cfg.tfds_name}"
    limit = int(cfg.max_images) if cfg.get("max_images") else None
    folders = {split: cache / (split if limit is None else f"{split}-first{limit}")
               for split in SPLITS if split != "restval" or cfg.get("restval", True)}
    pending = {split: _load_split(cfg.tfds_name, split, cfg.get("data_dir"),
                                  bool(cfg.get("download", False)), limit)
               for split, folder in folders.items() if not (folder / "captions.json").is_file()}
    counts = {split: _estimate_bytes(ds) for split, ds in pending.items()}
    if counts:                                 # one check for every split, before any copy
        ensure_free_space(cache, sum(b for _, b in counts.values()),
                          f"the copy of TFDS {cfg.tfds_name} ({sum(n for n, _ in counts.values())}"
                          f" images, splits {', '.join(counts)})",
                          "point dataset.cache_dir (or paths.cache_dir, CAPTIONING_CACHE) at a "
                          "larger disk, or try it first with dataset.max_images=N")
    records: list[Record] = []
    for split, folder in folders.items():
        with build_lock(folder):                  # one copy, however many jobs start together
            if (folder / "captions.json").is_file():
                index = json.loads((folder / "captions.json").read_text(encoding="utf-8"))
            else:
                index = _materialise(folder, pending[split], counts[split][0], progress)
        records += assemble(dedupe(index, report), folder, dict.fromkeys(index, SPLITS[split]),
                            cfg.get("on_missing", "error"), report)
    return records, None
