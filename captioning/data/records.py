"""The one record type every reader produces and everything downstream consumes."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from captioning import DatasetError

SPLITS = ("train", "val", "test")
# dataset.holdout's split: train images set aside before training, never trained on, never
# in the vocabulary, never used to pick a checkpoint; scored at the end like val and test.
HOLDOUT = "holdout"
# dataset.untouched_list's split: held out like the holdout, and scored only on request
# (eval.py split=untouched), so that no choice is ever made on it: the figures to quote.
UNTOUCHED = "untouched"
HELD_OUT = (HOLDOUT, UNTOUCHED)


@dataclass(frozen=True)
class Record:
    """One image and all of its reference captions."""

    id: str                    # stable identifier (the file name for Flickr, the image id for COCO)
    image: str                 # absolute path of the image file
    captions: tuple[str, ...]  # raw reference captions, as written in the dataset
    # train | val | test | holdout | untouched (readers fold restval into train)
    split: str = "train"
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
    records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int,
    of: int | None = None,
) -> list[Record]:
    """Recipe A's split: shuffle images with ``seed`` and cut train / val / test by fraction
    (of ``of`` images when given: the dataset's count before a holdout was taken out of it, so
    that val and test keep their sizes)."""
    ids = sorted(r.id for r in records)
    random.Random(seed).shuffle(ids)
    n = len(ids) if of is None else of
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    split_of = {i: "val" for i in ids[:n_val]}
    split_of.update({i: "test" for i in ids[n_val : n_val + n_test]})
    return [replace(r, split=split_of.get(r.id, "train")) for r in records]


def holdout_size(holdout, n_train: int) -> int:
    """``dataset.holdout`` -> a number of images: null 0, an integer as is, a float in (0, 1)
    that fraction of the ``n_train`` train images (rounded, at least 1). A DatasetError when no
    train image would be left."""
    if holdout is None:
        return 0
    n = int(holdout) if isinstance(holdout, int) else max(1, round(float(holdout) * n_train))
    if n >= n_train:
        most = max(n_train - 1, 0)
        raise DatasetError(
            f"dataset.holdout={holdout} asks for {n} of the {n_train} train images, and training "
            f"needs at least one: use at most {most} images (or a fraction, e.g. "
            f"dataset.holdout=0.1), or dataset.holdout=null to hold none out.")
    return n


def choose_holdout(ids: Iterable[str], n: int, seed: int) -> set[str]:
    """``n`` of ``ids``, chosen by ``numpy.random.default_rng(seed)`` from the sorted ids: the
    same images for the same ids and seed (``dataset.holdout_seed``, not the run's seed)."""
    import numpy as np

    ids = sorted(set(ids))
    if n <= 0:
        return set()
    picked = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return {ids[i] for i in picked}


def split_counts(records: Iterable[Record]) -> dict[str, int]:
    """Images per split: train, val, test, and holdout / untouched when there are some."""
    counts = Counter(r.split for r in records)
    out = {s: counts.get(s, 0) for s in SPLITS}
    out.update({s: counts[s] for s in HELD_OUT if counts.get(s)})
    return out
