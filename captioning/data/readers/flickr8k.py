"""Flickr8k, in either of its two on-disk layouts (``dataset.layout``: auto | kaggle | original).

Kaggle layout (``dataset.root`` = the unpacked Kaggle download)::

    captions.txt            CSV, header ``image,caption``, one caption per row;
                            captions that contain commas are quoted
    Images/NAME.jpg

Original release layout::

    Flickr8k.token.txt      ``NAME.jpg#K<TAB>caption``, K = 0..4 (here or in Flickr8k_text/)
    Flickr_8k.{train,dev,test}Images.txt   optional official split lists, one name per line
    Flicker8k_Dataset/NAME.jpg              (sic; Flickr8k_Dataset/ is accepted too)

Both layouts live in one module because ``layout=auto`` has to look for both.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

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

# Our own code rather than pandas or a dataset library: the files are a few thousand lines,
# and a bad line must be reported as file:line with the fix, not as a parser traceback.


# What dataset.root holds (also named by the check before TensorFlow starts).
CONTENTS = "captions.txt and Images/ (Kaggle) or Flickr8k.token.txt (original)"


def read_captions_csv(path: Path, on_malformed: str, report: DataReport,
                      encoding: str = "utf-8-sig") -> dict[str, list[str]]:
    """Kaggle ``captions.txt``: CSV with header ``image,caption``; captions with commas are
    quoted."""
    bad = Malformed(path, on_malformed)
    captions: dict[str, list[str]] = defaultdict(list)
    with decoding(path, encoding), open(path, newline="", encoding=encoding) as f:
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


def read_token_file(path: Path, on_malformed: str, report: DataReport,
                    encoding: str = "utf-8-sig") -> dict[str, list[str]]:
    """Original Flickr8k ``Flickr8k.token.txt``: ``NAME.jpg#K<TAB>caption`` per line."""
    bad = Malformed(path, on_malformed)
    captions: dict[str, list[str]] = defaultdict(list)
    with decoding(path, encoding), open(path, encoding=encoding) as f:
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


def _read_split_lists(text_dir: Path, encoding: str) -> dict[str, str] | None:
    """{image name: split} from the official split lists, or None when any list is absent."""
    files = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
             "test": "Flickr_8k.testImages.txt"}
    if not all((text_dir / f).exists() for f in files.values()):
        return None
    split_of = {}
    for split, f in files.items():
        with decoding(text_dir / f, encoding):
            names = (text_dir / f).read_text(encoding=encoding).split()
        for name in names:
            split_of[name] = split
    return split_of


def read_flickr8k(cfg, report: DataReport) -> tuple[list[Record], dict[str, str] | None]:
    """Flickr8k in the Kaggle layout or the original release; returns records and, when the
    official split lists exist, the Karpathy split (same as the official one for Flickr8k)."""
    root = require_dir(cfg.root, CONTENTS, "flickr8k")
    token = first_existing(root, ["Flickr8k.token.txt", "Flickr8k_text/Flickr8k.token.txt"])
    kaggle = root / "captions.txt"
    text_dir = token.parent if token else first_existing(root, ["Flickr8k_text", "."])
    encoding = text_encoding(cfg)
    split_of = _read_split_lists(text_dir, encoding) if text_dir else None
    layout = cfg.get("layout", "auto")
    if layout == "original" or (layout == "auto" and not kaggle.exists() and token):
        if token is None:
            raise DatasetError(
                f"No Flickr8k.token.txt under {root} (looked in . and Flickr8k_text/).")
        captions = read_token_file(token, cfg.on_malformed, report, encoding)
    elif kaggle.exists():
        captions = read_captions_csv(kaggle, cfg.on_malformed, report, encoding)
    else:
        raise DatasetError(
            f"No Flickr8k captions under {root}: looked for captions.txt (Kaggle layout) and "
            f"Flickr8k.token.txt or Flickr8k_text/Flickr8k.token.txt (original release). "
            f"Set dataset.root to the folder that holds one of them.")
    image_dir = first_existing(root, ["Images", "Flicker8k_Dataset", "Flickr8k_Dataset"])
    if image_dir is None:
        raise DatasetError(
            f"No Flickr8k image folder under {root}: looked for Images/ (Kaggle) and "
            f"Flicker8k_Dataset/ (original download).")
    captions = dedupe(captions, report)
    return assemble(captions, image_dir, None, cfg.on_missing, report), split_of
