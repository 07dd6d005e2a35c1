"""One reader per on-disk layout. Each returns ``(records, report)``; nothing downstream
knows which layout the data came from.

Every problem with the data is found here, while indexing, and reported as one message that
names the file (and line) and the fix, never as a traceback from inside tf.data.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from captioning import DatasetError
from captioning.data.records import DataReport, Record

MAX_NAMED = 5   # how many offending names or lines a message lists


def _require_dir(root, what: str, dataset: str) -> Path:
    if root is None or str(root) in ("", "None", "???"):
        raise DatasetError(
            f"dataset.root is not set for dataset={dataset}. Point it at the folder with {what}: "
            f"python run.py dataset={dataset} dataset.root=/path/to/{dataset}")
    root = Path(os.path.expanduser(str(root)))
    if not root.is_dir():
        raise DatasetError(
            f"Dataset folder {root} does not exist. Download {dataset} and set dataset.root to the "
            f"folder that contains {what}.")
    return root


def _first_existing(root: Path, candidates: Iterable[str]) -> Path | None:
    for name in candidates:
        if (root / name).exists():
            return root / name
    return None


class _Malformed:
    """Collects malformed lines; raises or warns once at the end, per ``on_malformed``."""

    def __init__(self, path: Path, policy: str):
        if policy not in ("error", "skip"):
            raise DatasetError(f"dataset.on_malformed must be error or skip. Received: {policy!r}")
        self.path, self.policy, self.lines = path, policy, []

    def add(self, line_no: int, text: str) -> None:
        if self.policy == "error":
            raise DatasetError(
                f"Malformed captions line {self.path}:{line_no}: {text.strip()[:120]!r}. Fix the line, "
                f"or set dataset.on_malformed=skip to drop such lines.")
        self.lines.append(line_no)

    def report(self, report: DataReport) -> None:
        if self.lines:
            report.removed["malformed caption lines"] += len(self.lines)
            shown = ", ".join(str(n) for n in self.lines[:MAX_NAMED])
            report.notes.append(f"skipped {len(self.lines)} malformed line(s) in {self.path} (lines {shown}"
                                f"{', ...' if len(self.lines) > MAX_NAMED else ''})")


def _assemble(
    captions: dict[str, list[str]], image_dir: Path, split_of: dict[str, str] | None,
    on_missing: str, report: DataReport, subdir_of: dict[str, str] | None = None,
) -> list[Record]:
    """Turn {file name: captions} into records, checking every image exists (one listdir per
    folder, not one stat per image: indexing 30k images takes milliseconds)."""
    if on_missing not in ("error", "skip"):
        raise DatasetError(f"dataset.on_missing must be error or skip. Received: {on_missing!r}")
    listing: dict[Path, set[str]] = {}

    def exists(folder: Path, name: str) -> bool:
        if folder not in listing:
            listing[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return name in listing[folder]

    records, missing = [], []
    for name, caps in captions.items():
        folder = image_dir / subdir_of[name] if subdir_of and subdir_of.get(name) else image_dir
        if not exists(folder, name):
            missing.append(name)
            continue
        if not caps:
            report.removed["images with no caption"] += 1
            continue
        split = split_of.get(name) if split_of is not None else "train"
        if split is None:
            report.removed["images in no split list"] += 1
            continue
        records.append(Record(id=name, image=str(folder / name), captions=tuple(caps), split=split))
    if missing:
        shown = ", ".join(missing[:MAX_NAMED])
        if on_missing == "error":
            raise DatasetError(
                f"{len(missing)} of {len(captions)} images listed in the captions are missing from "
                f"{image_dir} (first: {shown}). Check dataset.root, or set dataset.on_missing=skip "
                f"to train on the images that are present.")
        report.removed["missing images"] += len(missing)
        report.notes.append(f"skipped {len(missing)} missing image(s), first: {shown}")
    return records


def _dedupe(captions: dict[str, list[str]], report: DataReport) -> dict[str, list[str]]:
    out = {}
    for name, caps in captions.items():
        unique = list(dict.fromkeys(caps))
        report.removed["duplicate caption rows"] += len(caps) - len(unique)
        out[name] = unique
    return out


# --------------------------------------------------------------------------- Flickr8k / Kaggle
def read_captions_csv(path: Path, on_malformed: str, report: DataReport) -> dict[str, list[str]]:
    """Kaggle ``captions.txt``: CSV with header ``image,caption``; captions with commas are quoted."""
    bad = _Malformed(path, on_malformed)
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
            raise DatasetError(
                f"{path}:1 should be the header 'image,caption' (Kaggle Flickr8k layout). "
                f"Received: {','.join(header or [])!r}")
        for row in reader:
            if len(row) != 2 or not row[0].strip():
                bad.add(reader.line_num, ",".join(row))
                continue
            captions[row[0].strip()].append(row[1].strip())
    bad.report(report)
    return captions


def read_token_file(path: Path, on_malformed: str, report: DataReport) -> dict[str, list[str]]:
    """Original Flickr8k ``Flickr8k.token.txt``: ``NAME.jpg#K<TAB>caption`` per line."""
    bad = _Malformed(path, on_malformed)
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, sep, caption = line.rstrip("\n").partition("\t")
            name, hash_, _k = key.partition("#")
            if not sep or not hash_ or not name:
                bad.add(line_no, line)
                continue
            captions[name].append(caption.strip())
    bad.report(report)
    return captions


def _read_split_lists(text_dir: Path) -> dict[str, str] | None:
    files = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
             "test": "Flickr_8k.testImages.txt"}
    if not all((text_dir / f).exists() for f in files.values()):
        return None
    split_of = {}
    for split, f in files.items():
        for name in (text_dir / f).read_text(encoding="utf-8").split():
            split_of[name] = split
    return split_of


def read_flickr8k(cfg, report: DataReport) -> tuple[list[Record], dict[str, str] | None]:
    """Flickr8k in the Kaggle layout or the original release; returns records and, when the
    official split lists exist, the Karpathy split (same as the official one for Flickr8k)."""
    root = _require_dir(cfg.root, "captions.txt and Images/ (Kaggle) or Flickr8k.token.txt (original)",
                        "flickr8k")
    token = _first_existing(root, ["Flickr8k.token.txt", "Flickr8k_text/Flickr8k.token.txt"])
    kaggle = root / "captions.txt"
    text_dir = token.parent if token else _first_existing(root, ["Flickr8k_text", "."])
    split_of = _read_split_lists(text_dir) if text_dir else None
    layout = cfg.get("layout", "auto")
    if layout == "original" or (layout == "auto" and not kaggle.exists() and token):
        if token is None:
            raise DatasetError(f"No Flickr8k.token.txt under {root} (looked in . and Flickr8k_text/).")
        captions = read_token_file(token, cfg.on_malformed, report)
    elif kaggle.exists():
        captions = read_captions_csv(kaggle, cfg.on_malformed, report)
    else:
        raise DatasetError(
            f"No Flickr8k captions under {root}: looked for captions.txt (Kaggle layout) and "
            f"Flickr8k.token.txt or Flickr8k_text/Flickr8k.token.txt (original release). "
            f"Set dataset.root to the folder that holds one of them.")
    image_dir = _first_existing(root, ["Images", "Flicker8k_Dataset", "Flickr8k_Dataset"])
    if image_dir is None:
        raise DatasetError(f"No Flickr8k image folder under {root}: looked for Images/ (Kaggle) and "
                           f"Flicker8k_Dataset/ (original download).")
    captions = _dedupe(captions, report)
    return _assemble(captions, image_dir, None, cfg.on_missing, report), split_of


# --------------------------------------------------------------------------- Flickr30k / Kaggle
def read_flickr30k(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Kaggle Flickr30k: ``results.csv`` with lines ``image_name| comment_number| comment``."""
    root = _require_dir(cfg.root, "results.csv and flickr30k_images/", "flickr30k")
    path = _first_existing(root, ["results.csv", "flickr30k_images/results.csv"])
    if path is None:
        raise DatasetError(f"No results.csv under {root} (Kaggle Flickr30k layout). "
                           f"Set dataset.root to the folder that contains results.csv and flickr30k_images/.")
    bad = _Malformed(path, cfg.on_malformed)
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        if not header.replace(" ", "").lower().startswith("image_name|comment_number|comment"):
            raise DatasetError(f"{path}:1 should be the header 'image_name| comment_number| comment'. "
                               f"Received: {header.strip()!r}")
        for line_no, line in enumerate(f, 2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("|", 2)
            if len(parts) != 3 or not parts[0].strip():
                bad.add(line_no, line)
                continue
            captions[parts[0].strip()].append(parts[2].strip())
    bad.report(report)
    image_dir = _first_existing(root, ["flickr30k_images/flickr30k_images", "flickr30k_images", "Images"])
    if image_dir is None:
        raise DatasetError(f"No image folder flickr30k_images/ under {root}.")
    return _assemble(_dedupe(captions, report), image_dir, None, cfg.on_missing, report), None


# --------------------------------------------------------------------------- Karpathy JSON
def read_karpathy(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Any Karpathy split file: ``images[].filename``, optional ``filepath``, ``split``,
    ``sentences[].raw``. ``restval`` joins train unless ``dataset.restval=false``."""
    if cfg.json in (None, "", "???"):
        raise DatasetError("dataset.json is not set. Point it at a Karpathy split file, e.g. "
                           "dataset.json=/data/dataset_flickr8k.json dataset.images=/data/Images")
    path = Path(os.path.expanduser(str(cfg.json)))
    if not path.is_file():
        raise DatasetError(f"Karpathy split file {path} does not exist. Set dataset.json to the "
                           f"dataset_*.json file (images[], sentences[].raw, split).")
    image_dir = _require_dir(cfg.images, f"the images listed in {path.name}", "karpathy") \
        if cfg.images not in (None, "", "???") else path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path} is not a Karpathy split file (expected a JSON object with "
                           f"'images'): {e}") from None
    captions, split_of, subdir_of = {}, {}, {}
    folder_exists: dict[str, bool] = {}          # one stat per distinct filepath, not per image
    for i, img in enumerate(images):
        try:
            name = img["filename"]
            split = img["split"]
            sents = [s["raw"].strip() for s in img["sentences"]]
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{path}: images[{i}] lacks {e} (each image needs filename, split and "
                               f"sentences[].raw).") from None
        if split == "restval":
            split = "train" if cfg.get("restval", True) else None
        captions[name], split_of[name] = sents, split
        # Files live at images/filepath/filename (COCO: train2014/...), or flat in images/.
        filepath = img.get("filepath") or ""
        if filepath not in folder_exists:
            folder_exists[filepath] = bool(filepath) and (image_dir / filepath).is_dir()
        subdir_of[name] = filepath if folder_exists[filepath] else ""
    records = _assemble(_dedupe(captions, report), image_dir, split_of, cfg.on_missing, report,
                        subdir_of=subdir_of)
    return records, None


# --------------------------------------------------------------------------- COCO raw JSON
def read_coco_json(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Raw COCO: ``annotations/captions_{train,val}{year}.json`` + ``{train,val}{year}/``."""
    root = _require_dir(cfg.root, "annotations/ and the image folders (train2017/, val2017/, ...)", "coco_json")
    year = str(cfg.year)
    records: list[Record] = []
    for split, part in (("train", "train"), ("val", "val")):
        ann = root / "annotations" / f"captions_{part}{year}.json"
        if not ann.is_file():
            raise DatasetError(f"COCO annotations {ann} not found. Set dataset.root to the folder that "
                               f"holds annotations/captions_{part}{year}.json, or dataset.year to 2014/2017.")
        data = json.loads(ann.read_text(encoding="utf-8"))
        file_of = {im["id"]: im["file_name"] for im in data["images"]}
        captions: dict[str, list[str]] = defaultdict(list)
        for name in file_of.values():
            captions[name]  # images with no caption are counted by _assemble
        for a in data["annotations"]:
            if a["image_id"] not in file_of:
                report.removed["captions of unknown images"] += 1
                continue
            captions[file_of[a["image_id"]]].append(a["caption"].strip())
        records += _assemble(_dedupe(captions, report), root / f"{part}{year}",
                             dict.fromkeys(captions, split), cfg.on_missing, report)
    report.notes.append("COCO has no public test captions: the test split is empty (use dataset=karpathy "
                        "with dataset_coco.json for the Karpathy test split)")
    return records, None


def read_coco(cfg, report: DataReport):
    from captioning.data.tfds_coco import read_coco_tfds

    return read_coco_tfds(cfg, report)


READERS = {
    "coco": read_coco,
    "flickr8k": read_flickr8k,
    "synthetic": read_flickr8k,     # written to disk in the Kaggle Flickr8k layout
    "flickr30k": read_flickr30k,
    "karpathy": read_karpathy,
    "coco_json": read_coco_json,
}
