"""The state file: ``checkpoints/last.state.npz``, everything a resume needs (model weights,
optimizer variables, the ``RunState``), written atomically at the end of every epoch, so a kill
at any moment leaves a consistent state from the last completed epoch; the epoch before stays
in ``previous.state.npz`` should that write die."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from captioning import CaptioningError
from captioning.io import atomic_path
from captioning.runs.files import previous_state
from captioning.training.phases import Phases, RunState


class SaveState(keras.callbacks.Callback):
    """After every epoch (after SaveWeights and EarlyStopping, whose results it records) has
    ``phases`` bring the ``RunState`` up to date, then writes ``last.state.npz``: the state,
    every weight and every optimizer variable, atomically."""

    def __init__(self, path: Path, phases: Phases, saver, early_stopping, ema=None, t0=None):
        super().__init__()
        self.path, self.phases = Path(path), phases
        self.saver, self.es, self.ema = saver, early_stopping, ema
        self._t0, self._spent = t0, phases.state.seconds    # t0: this process's start

    def on_epoch_end(self, epoch, logs=None):
        seconds = (self.phases.state.seconds if self._t0 is None
                   else self._spent + time.perf_counter() - self._t0)
        self.phases.record_epoch(epoch + 1, self.saver, self.es,
                                 self.ema is not None and self.ema.in_model, seconds)
        arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(self.model.weights)}
        optimizer = self.model.optimizer.variables
        arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer)})
        arrays.update({f"s{i}": np.asarray(v) for i, v in enumerate(seed_states(self.model))})
        if self.path.exists():          # keep the previous epoch's state, should this write die
            os.replace(self.path, previous_state(self.path))
        meta = json.dumps(self.phases.state.to_meta())
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(meta), **arrays)


def load_state(path: Path, model) -> RunState:
    """Restore weights and optimizer from ``last.state.npz`` (or, when that file is missing,
    truncated or corrupt, from ``previous.state.npz``, the epoch before); returns the state."""
    problems = []
    for candidate in (Path(path), previous_state(path)):
        if not candidate.is_file():
            problems.append(f"{candidate.name} is missing")
            continue
        try:
            meta, weights, slots, seeds = _read_state(candidate, len(model.weights))
        except Exception as e:  # noqa: BLE001 - any unreadable file: say what, try the other
            problems.append(f"{candidate.name} is unreadable ({type(e).__name__}: {e})")
            continue
        if candidate != Path(path):
            print(f"warning: {'; '.join(problems)}: resuming from {candidate.name} (epoch "
                  f"{meta['epoch']}) instead")
        _apply(model, weights, slots, candidate)
        _apply_seeds(model, seeds)
        return RunState.from_meta(meta)
    raise CaptioningError(f"Cannot resume from {Path(path).parent}: {'; '.join(problems)}. "
                          f"Start the run afresh (drop resume=).")


def _read_state(path: Path, n_weights: int):
    """The whole file, read and checked before anything is applied to the model."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        weights = [np.array(z[f"w{i}"]) for i in range(n_weights)]
        slots, seeds = ([np.array(z[k]) for k in sorted((k for k in z.files if k.startswith(p)),
                                                         key=lambda k: int(k[1:]))]
                        for p in ("o", "s"))
    int(meta["epoch"])
    return meta, weights, slots, seeds


def _apply(model, weights, slots, path: Path) -> None:
    model.set_weights(weights)
    opt = model.optimizer
    opt.build(model.trainable_variables)
    if len(slots) != len(opt.variables):
        raise CaptioningError(f"{path} does not match this model's optimizer ({len(slots)} vs "
                              f"{len(opt.variables)} variables): was the config changed "
                              f"between the run and the resume?")
    for v, value in zip(opt.variables, slots, strict=True):
        v.assign(value)


def seed_states(model) -> list:
    """The model's random-number states (dropout, augmentation, mixup: Keras ``SeedGenerator``
    variables), which ``model.weights`` leaves out: saved with the weights so that a resumed
    run draws the masks and augmentations the uninterrupted run would have drawn."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables
            if id(v) not in weights and v.path.endswith("seed_generator_state")]


def _apply_seeds(model, seeds) -> None:
    """Restore the random-number states (a state file from before they were saved has none:
    the resumed run then draws afresh, as it always did)."""
    states = seed_states(model)
    if len(seeds) == len(states):
        for v, value in zip(states, seeds, strict=True):
            v.assign(value)
