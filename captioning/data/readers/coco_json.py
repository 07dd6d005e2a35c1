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
from captioning.data.readers.common import assemble, dedupe, require_dir
from captioning.data.records import DataReport, Record

# Our own code rather than pycocotools: reading captions needs only two fields of each file,
# and pycocotools is a compiled dependency that would be installed for that alone.


def read_coco_json(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Raw COCO: ``annotations/captions_{train,val}{year}.json`` + ``{train,val}{year}/``."""
    root = require_dir(
        cfg.root, "annotations/ and the image folders (train2017/, val2017/, ...)", "coco_json")
    year = str(cfg.year)
    records: list[Record] = []
    for split, part in (("train", "train"), ("val", "val")):
        ann = root / "annotations" / f"captions_{part}{year}.json"
        if not ann.is_file():
            raise DatasetError(
                f"COCO annotations {ann} not found. Set dataset.root to the folder that holds "
                f"annotations/captions_{part}{year}.json, or dataset.year to 2014/2017.")
        data = json.loads(ann.read_text(encoding="utf-8"))
        file_of = {im["id"]: im["file_name"] for im in data["images"]}
        captions: dict[str, list[str]] = defaultdict(list)
        for name in file_of.values():
            captions[name]  # images with no caption are counted by assemble
        for a in data["annotations"]:
            if a["image_id"] not in file_of:
                report.removed["captions of unknown images"] += 1
                continue
            captions[file_of[a["image_id"]]].append(a["caption"].strip())
        records += assemble(dedupe(captions, report), root / f"{part}{year}",
                            dict.fromkeys(captions, split), cfg.on_missing, report)
    report.notes.append(
        "COCO has no public test captions: the test split is empty (use dataset=karpathy "
        "with dataset_coco.json for the Karpathy test split)")
    return records, None
