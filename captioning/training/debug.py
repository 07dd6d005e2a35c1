"""Lightning's debugging switches, for a Keras run (``conf/debug/{fdr,limit,overfit,profile}``).

- ``trainer.limit_train_batches``: each epoch trains on the first N batches of that epoch's
  shuffled order (``Dataset.take``, see ``limit_train``), so every epoch sees other images, as
  in Lightning.
- ``trainer.limit_val_batches`` / ``limit_test_batches``: validation (per epoch and final) and
  the test scores use the first N batches of ``evaluation.batch_size`` images of the split
  (the split is cut, so the feature cache, the validation captions and the final scores all
  use the same images).
- ``trainer.overfit_batches``: train on the first N batches, always the same images, and
  validate on those very images (the test split is skipped): a model that cannot drive its
  training loss near zero there has a bug.
- ``trainer.check_val_every_n_epoch`` (not a debugging switch, but Lightning's too): the
  validation loss on epochs N, 2N, ... (``validation_freq``).
- ``trainer.profile_batches``: a TensorFlow profiler trace of those training batches
  (``tf.profiler.experimental``, ``training/profiling.py``) in ``<run_dir>/profile/``.

A limit is null (all batches), an integer (that many batches) or a float in (0, 1] (that
fraction of the batches, at least one): 1 is one batch, 1.0 all of them, as in Lightning.
"""

from __future__ import annotations

import math
from pathlib import Path

from captioning.training.profiling import ProfileBatches


def batches(limit, total: int) -> int:
    """How many of ``total`` batches ``limit`` keeps."""
    if limit is None or total == 0:
        return total
    n = int(total * limit) if isinstance(limit, float) else int(limit)
    return max(1, min(total, n))


def limit_splits(cfg, data) -> None:
    """``overfit_batches``, ``limit_val_batches`` and ``limit_test_batches``: cut
    ``data.splits`` in place, with a note in the data report for each cut."""
    t, notes = cfg.trainer, data.report.notes
    size, eval_size = int(t.batch_size), int(cfg.evaluation.batch_size)
    overfit = t.get("overfit_batches") or 0
    if overfit:
        train = data.splits["train"]
        n = batches(overfit, math.ceil(len(train) / size))
        train = train[: n * size]
        data.splits.update(train=train, val=list(train), test=[], holdout=[], untouched=[])
        notes.append(f"trainer.overfit_batches={overfit}: training on {len(train)} images "
                     f"({n} batch(es), the same each epoch), validated on the same images; "
                     f"no test or holdout scores")
        return
    # The held-out splits are test sets too: limit_test_batches cuts them.
    for split, key in (("val", "val"), ("test", "test"), ("holdout", "test"),
                       ("untouched", "test")):
        limit, records = t.get(f"limit_{key}_batches"), data.splits.get(split, [])
        n = batches(limit, math.ceil(len(records) / eval_size))
        if records and n * eval_size < len(records):
            data.splits[split] = records[: n * eval_size]
            notes.append(f"trainer.limit_{key}_batches={limit}: {split} scores on "
                         f"{n * eval_size} of {len(records)} images")


def train_steps(cfg, data) -> int:
    """Training batches per epoch, after ``limit_train_batches``."""
    total = math.ceil(len(data.splits["train"]) / int(cfg.trainer.batch_size))
    return batches(cfg.trainer.get("limit_train_batches"), total)


def limit_train(cfg, data, dataset, passes_done: int = 0):
    """``(dataset, steps)`` for ``model.fit(dataset, steps_per_epoch=steps)``: an epoch is the
    first ``steps`` batches (``limit_train_batches``, else all) of each pass over ``dataset``,
    and the passes repeat, each in a new shuffled order.

    Keras is told the epoch's length rather than left to find the end of the data: a dataset
    read with ``ignore_errors`` (the image path) has no known length, and at its end Keras's
    train function runs once more, stops on the missing batch, and the optimizer's step counter
    (``iterations``, which drives the learning-rate schedule) has already counted that step:
    one step per epoch that trains nothing (Keras 3.15, TensorFlow 2.21). Should a broken image
    be dropped, an epoch takes one batch of the next pass instead.

    ``passes_done``: the epochs a resumed run has already trained on ``dataset``. Each pass's
    order (and ``trainer.sample_captions``' draws) is the next in a seeded stream that advances
    when a pass's iterator is created: creating (and dropping) that many iterators first, which
    reads no data, puts the resumed run's next epoch on the order and captions the
    uninterrupted run would have used, so that a run resumed under
    ``trainer.deterministic=true`` ends as the uninterrupted one."""
    steps = train_steps(cfg, data)
    for _ in range(passes_done):
        iter(dataset)                   # advances the shuffle's and the draws' seed streams
    return dataset.take(steps).repeat(), steps          # take(all) is the whole pass


def validation_freq(cfg) -> int:
    """``trainer.check_val_every_n_epoch`` (Lightning's name) as Keras's ``validation_freq``: the
    validation loss on epochs N, 2N, ... (counted from the run's first epoch, so a resumed run
    keeps the same ones). For a final fit, where val is trained on, its loss is only a curve,
    not worth an evaluation every epoch (its cost: docs/experiments/speed.md)."""
    return int(cfg.trainer.get("check_val_every_n_epoch", 1))


def profiler(cfg, run_dir: Path) -> list:
    """``trainer.profile_batches`` (a batch, or [first, last], 1-based, counted from the start
    of this process's training): a callback that runs TensorFlow's profiler over those batches
    and writes the trace (``plugins/profile/<time>/<host>.xplane.pb``, for TensorBoard's
    profile tab) under ``<run_dir>/profile/``."""
    window = cfg.trainer.get("profile_batches")
    if not window:
        return []

    first, last = (window, window) if isinstance(window, int) else (window[0], window[-1])
    return [ProfileBatches(Path(run_dir) / "profile", int(first), int(last))]
