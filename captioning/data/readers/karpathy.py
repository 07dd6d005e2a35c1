"""Any Karpathy split file (``dataset_flickr8k.json``, ``dataset_flickr30k.json``,
``dataset_coco.json``, ...), given as ``dataset.json``, with the images under
``dataset.images`` (default: the JSON file's folder)::

    dataset_*.json          {"images": [{"filename": "NAME.jpg",
                                         "filepath": "train2014",       (optional, COCO)
                                         "split": "train" | "restval" | "val" | "test",
                                         "sentences": [{"raw": "A caption."}, ...]}, ...]}
    <images>/[filepath/]NAME.jpg

``restval`` joins train unless ``dataset.restval=false``. A ``filepath`` must stay inside
``dataset.images`` (no absolute path, no ``..`` above it) unless
``dataset.allow_outside_images=true``: the file comes from elsewhere, and the images it names
end up in grids and in Comet.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from captioning import DatasetError
from captioning.data.readers.common import (
    assemble,
    decoding,
    dedupe,
    require_dir,
    text_encoding,
)
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
    encoding = text_encoding(cfg)
    try:
        with decoding(path, encoding):
            data = json.loads(path.read_text(encoding=encoding))
        images = data["images"]
        if not isinstance(images, list):
            raise TypeError(f"'images' is a {type(images).__name__}, not a list")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"{path} is not a Karpathy split file (expected a JSON object with "
                           f"'images'): {e}") from None
    allow_outside = bool(cfg.get("allow_outside_images", False))
    captions, split_of, subdir_of, outside = {}, {}, {}, []
    folder_exists: dict[str, bool] = {}          # one stat per distinct filepath, not per image
    for i, img in enumerate(images):
        try:
            name = img["filename"]
            split = img["split"]
            sents = [s["raw"].strip() for s in img["sentences"]]
        except (KeyError, TypeError, AttributeError) as e:
            what = f"lacks {e}" if isinstance(e, KeyError) else f"is malformed ({e})"
            raise DatasetError(
                f"{path}: images[{i}] {what} (each image needs filename, split and "
                f"sentences[].raw, a string).") from None
        if split == "restval":
            split = "train" if cfg.get("restval", True) else None
        captions[name], split_of[name] = sents, split
        # Files live at images/filepath/filename (COCO: train2014/...), or flat in images/.
        filepath = img.get("filepath") or ""
        if not allow_outside and (_escapes(filepath) or _escapes(name)):
            outside.append(f"images[{i}] ({os.path.join(filepath, name)})")
            continue
        if filepath not in folder_exists:
            folder_exists[filepath] = bool(filepath) and (image_dir / filepath).is_dir()
        subdir_of[name] = filepath if folder_exists[filepath] else ""
    if outside:
        more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
        raise DatasetError(
            f"{path}: {outside[0]}{more} point(s) outside dataset.images ({image_dir}) through "
            f"an absolute filepath or '..'. Fix the entries, or set "
            f"dataset.allow_outside_images=true if the split file is trusted.")
    records = assemble(dedupe(captions, report), image_dir, split_of, cfg.on_missing, report,
                       subdir_of=subdir_of)
    return records, None


_DRIVE = re.compile(r"^[A-Za-z]:")


def _escapes(relative: str) -> bool:
    """True when ``relative``, joined to the image folder, leads out of it (an absolute path,
    a drive, or ``..`` above the folder). Symbolic links inside the folder are the user's own
    layout and are followed."""
    if not relative:
        return False
    if os.path.isabs(relative) or relative.startswith(("\\", "/")) or _DRIVE.match(relative):
        return True
    norm = os.path.normpath(relative.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")
