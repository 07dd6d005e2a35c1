"""Raw COCO captions, as downloaded from cocodataset.org (``dataset.root`` = that folder,
``dataset.year`` = 2014 or 2017)::

    annotations/captions_train{year}.json   {"images": [{"id", "file_name"}, ...],
    annotations/captions_val{year}.json      "annotations": [{"image_id", "caption"}, ...]}
    train{year}/NAME.jpg
    val{year}/NAME.jpg

The annotation files' train and val become our train and val; COCO publishes no test
captions, so the test split is empty.
"""

from __future__ import annotations

import json
from collections import defaultdict

from captioning import DatasetError
from captioning.data.readers.common import assemble, decoding, dedupe, require_dir, text_encoding
from captioning.data.records import DataReport, Record

# Our own code rather than pycocotools: reading captions needs only two fields of each file,
# and pycocotools is a compiled dependency that would be installed for that alone.


# What dataset.root holds (also named by the check before TensorFlow starts).
CONTENTS = "annotations/ and the image folders (train2017/, val2017/, ...)"


def read_coco_json(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Raw COCO: ``annotations/captions_{train,val}{year}.json`` + ``{train,val}{year}/``."""
    root = require_dir(cfg.root, CONTENTS, "coco_json")
    year = str(cfg.year)
    encoding = text_encoding(cfg)
    records: list[Record] = []
    for split, part in (("train", "train"), ("val", "val")):
        ann = root / "annotations" / f"captions_{part}{year}.json"
        if not ann.is_file():
            raise DatasetError(
                f"COCO annotations {ann} not found. Set dataset.root to the folder that holds "
                f"annotations/captions_{part}{year}.json, or dataset.year to 2014/2017.")
        file_of, pairs = _read_annotations(ann, encoding)
        captions: dict[str, list[str]] = defaultdict(list)
        for name in file_of.values():
            captions[name]  # images with no caption are counted by assemble
        for image_id, caption in pairs:
            if image_id not in file_of:
                report.removed["captions of unknown images"] += 1
                continue
            captions[file_of[image_id]].append(caption.strip())
        records += assemble(dedupe(captions, report), root / f"{part}{year}",
                            dict.fromkeys(captions, split), cfg.on_missing, report)
    report.notes.append(
        "COCO has no public test captions: the test split is empty (use dataset=karpathy "
        "with dataset_coco.json for the Karpathy test split)")
    return records, None


def _read_annotations(ann, encoding: str) -> tuple[dict, list[tuple[object, str]]]:
    """({image id: file name}, [(image id, caption)]) from one annotation file; a file that is
    not COCO captions JSON is one DatasetError naming the file and the entry at fault."""
    expected = ("expected a JSON object with 'images' [{id, file_name}] and 'annotations' "
                "[{image_id, caption}], as in cocodataset.org's captions_*.json")
    try:
        with decoding(ann, encoding):
            data = json.loads(ann.read_text(encoding=encoding))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{ann} is not valid JSON ({e}). Re-download the annotations "
                           f"({expected}).") from None
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations")):
        keys = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{ann} is not a COCO captions file: {expected}. Found: {keys}.")
    file_of, pairs = {}, []
    for field, entries, keys in (("images", data["images"], ("id", "file_name")),
                                 ("annotations", data["annotations"], ("image_id", "caption"))):
        for i, entry in enumerate(entries):
            bad = ("is not an object" if not isinstance(entry, dict) else
                   next((f"lacks '{k}'" for k in keys if k not in entry), None))
            if bad is None and not isinstance(entry[keys[1]], str):
                bad = f"has a {type(entry[keys[1]]).__name__} '{keys[1]}', not a string"
            if bad:
                raise DatasetError(f"{ann}: {field}[{i}] {bad} (each entry of '{field}' needs "
                                   f"{' and '.join(keys)}).")
            if field == "images":
                file_of[entry["id"]] = entry["file_name"]
            else:
                pairs.append((entry["image_id"], entry["caption"]))
    return file_of, pairs
