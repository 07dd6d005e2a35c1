"""Flickr30k in the Kaggle layout (``dataset.root`` = the unpacked Kaggle download)::

    results.csv             header ``image_name| comment_number| comment``, then one
                            ``NAME.jpg| K| caption`` per line, K = 0..4 (here or in
                            flickr30k_images/)
    flickr30k_images/NAME.jpg   (or flickr30k_images/flickr30k_images/, or Images/)

The layout has no split lists: use ``dataset.split=random``, or ``dataset=karpathy`` with
``dataset_flickr30k.json`` for the Karpathy split.
"""

from __future__ import annotations

from collections import defaultdict

from captioning import DatasetError
from captioning.data.readers.common import (
    Malformed,
    assemble,
    decoding,
    dedupe,
    first_existing,
    require_dir,
    text_encoding,
)
from captioning.data.records import DataReport, Record

# Our own code rather than csv or pandas: despite its name the file is "|"-separated, with a
# space after each "|", and the Kaggle copy has a known broken line that must be reported by
# its number (dataset.on_malformed=skip) rather than stop a parser.


# What dataset.root holds (also named by the check before TensorFlow starts).
CONTENTS = "results.csv and flickr30k_images/"


def read_flickr30k(cfg, report: DataReport) -> tuple[list[Record], None]:
    """Kaggle Flickr30k: ``results.csv`` with lines ``image_name| comment_number| comment``."""
    root = require_dir(cfg.root, CONTENTS, "flickr30k")
    path = first_existing(root, ["results.csv", "flickr30k_images/results.csv"])
    if path is None:
        raise DatasetError(
            f"No results.csv under {root} (Kaggle Flickr30k layout). Set dataset.root to the "
            f"folder that contains results.csv and flickr30k_images/.")
    bad = Malformed(path, cfg.on_malformed)
    captions: dict[str, list[str]] = defaultdict(list)
    encoding = text_encoding(cfg)
    with decoding(path, encoding), open(path, encoding=encoding) as f:
        header = f.readline()
        if not header.replace(" ", "").lower().startswith("image_name|comment_number|comment"):
            raise DatasetError(
                f"{path}:1 should be the header 'image_name| comment_number| comment'. "
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
    image_dir = first_existing(
        root, ["flickr30k_images/flickr30k_images", "flickr30k_images", "Images"])
    if image_dir is None:
        raise DatasetError(f"No image folder flickr30k_images/ under {root}.")
    return assemble(dedupe(captions, report), image_dir, None, cfg.on_missing, report), None
