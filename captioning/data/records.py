"""The one record type every reader produces and everything downstream consumes."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One image and all of its reference captions."""

    id: str                    # stable identifier (the file name for Flickr, the image id for COCO)
    image: str                 # absolute path of the image file
    captions: tuple[str, ...]  # raw reference captions, as written in the dataset
    split: str = "train"       # train | val | test (restval is folded into train by readers)
    # how to decode the image, set by the image check (captioning.data.images): "" not checked,
    # "tf" tf.io.decode_image as is, "pil" through Pillow (EXIF orientation, TIFF, ...)
    decoder: str = ""


@dataclass
class DataReport:
    """What loading did to the data, so a run can say it (and a user can check it)."""

    counts: dict[str, int] = field(default_factory=dict)  # images per split after cleaning
    removed: Counter = field(default_factory=Counter)     # reason -> number removed
    notes: list[str] = field(default_factory=list)        # one-line remarks (e.g. "no test split")

    def as_dict(self) -> dict:
        return {"counts": dict(self.counts), "removed": dict(self.removed),
                "notes": list(self.notes)}


def assign_random_split(
    records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int
) -> list[Record]:
    """Recipe A's split: shuffle images with ``seed`` and cut train / val / test by fraction."""
    ids = sorted(r.id for r in records)
    random.Random(seed).shuffle(ids)
    n = len(ids)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    split_of = {i: "val" for i in ids[:n_val]}
    split_of.update({i: "test" for i in ids[n_val : n_val + n_test]})
    return [replace(r, split=split_of.get(r.id, "train")) for r in records]


def split_counts(records: Iterable[Record]) -> dict[str, int]:
    counts = Counter(r.split for r in records)
    return {s: counts.get(s, 0) for s in SPLITS}
