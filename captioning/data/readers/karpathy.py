"""Any Karpathy split file (``dataset_flickr8k.json``, ``dataset_flickr30k.json``,
``dataset_coco.json``, ...), given as ``dataset.json``, with the images under
``dataset.images`` (default: the JSON file's folder)::

    dataset_*.json          {"images": [{"filename": "NAME.jpg",
                                         "filepath": "train2014",       (optional, COCO)
                                         "split": "train" | "restval" | "val" | "test",
                                         "sentences": [{"raw": "A caption."}, ...]}, ...]}
    <images>/[filepath/]NAME.jpg

``restval`` joins train unless ``dataset.restval=false``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from captioning import DatasetError
from captioning.data.readers.common import assemble, dedupe, require_dir
from captioning.data.records import DataReport, Record

# Our own code: no library reads these files (they come from Karpathy's NeuralTalk release),
# and a bad entry must be reported as images[i] with what it lacks.


def read_karpathy(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Any Karpathy split file: ``images[].filename``, optional ``filepath``, ``split``,
    ``sentences[].raw``. ``restval`` joins train unless ``dataset.restval=false``."""
    if cfg.json in (None, "", "???"):
        raise DatasetError(
            "dataset.json is not set. Point it at a Karpathy split file, e.g. "
            "dataset.json=/data/dataset_flickr8k.json dataset.images=/data/Images")
    path = Path(os.path.expanduser(str(cfg.json)))
    if not path.is_file():
        raise DatasetError(
            f"Karpathy split file {path} does not exist. Set dataset.json to the "
            f"dataset_*.json file (images[], sentences[].raw, split).")
    image_dir = require_dir(cfg.images, f"the images listed in {path.name}", "karpathy") \
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
            raise DatasetError(
                f"{path}: images[{i}] lacks {e} (each image needs filename, split and "
                f"sentences[].raw).") from None
        if split == "restval":
            split = "train" if cfg.get("restval", True) else None
        captions[name], split_of[name] = sents, split
        # Files live at images/filepath/filename (COCO: train2014/...), or flat in images/.
        filepath = img.get("filepath") or ""
        if filepath not in folder_exists:
            folder_exists[filepath] = bool(filepath) and (image_dir / filepath).is_dir()
        subdir_of[name] = filepath if folder_exists[filepath] else ""
    records = assemble(dedupe(captions, report), image_dir, split_of, cfg.on_missing, report,
                       subdir_of=subdir_of)
    return records, None
