"""Stopping safely and resuming: Ctrl-C / SIGTERM end the run after the current batch, and
``resume=`` continues from the last completed epoch.

The resume state (model weights, optimizer variables, epoch, best score, early-stopping
counters) lives in one file, ``checkpoints/last.state.npz``, written atomically at the end of
every epoch, so a kill at any moment leaves a consistent state from the last completed epoch.
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from captioning import CaptioningError, TrainingInterrupted
from captioning.config_check import CAPTION_SCORES
from captioning.io import atomic_path
from captioning.training.run_dir import previous_state
from captioning.training.state import RunState, finite


@contextmanager
def stop_signals():
    """For a whole run: the first SIGINT/SIGTERM raises TrainingInterrupted wherever the run is
    (indexing, feature cache, between phases, final evaluation); inside ``fit`` StopOnSignal
    defers it to the end of the batch. Every write is atomic, so what is complete stays. The
    handlers in place before are back afterwards, however the run ends."""
    def handle(signum, frame):
        raise TrainingInterrupted(signum)

    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[s] = signal.signal(s, handle)
        except ValueError:           # not the main thread (e.g. a launcher's worker): no handlers
            pass
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def fault_point(phase: str) -> None:
    """Fault injection for the tests: ``CAPTIONING_SIGNAL_AT=<phase>[:SIGINT]`` sends this
    process a real SIGTERM (or SIGINT) as the run enters ``phase`` (index, datasets, features,
    epoch_end, between_phases, evaluation). Without the variable it does nothing."""
    where, _, name = os.environ.get("CAPTIONING_SIGNAL_AT", "").partition(":")
    if where == phase:
        os.kill(os.getpid(), getattr(signal, name or "SIGTERM"))


class StopOnSignal(keras.callbacks.Callback):
    """Inside ``fit``, the first SIGINT/SIGTERM stops after the current batch (nothing of the
    partial epoch is recorded), or, when it comes during the end-of-epoch callbacks, once they
    have saved the epoch. A second Ctrl-C stops at once."""

    def __init__(self):
        super().__init__()
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this batch "
              f"(Ctrl-C again to stop at once)", flush=True)

    def on_train_begin(self, logs=None):
        self.signum = None
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:       # not the main thread (e.g. a launcher's worker): no handlers
                pass

    def on_train_end(self, logs=None):
        self.restore()
        self._stop_if_signalled()

    def restore(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def on_train_batch_end(self, batch, logs=None):
        self._stop_if_signalled()

    def on_epoch_begin(self, epoch, logs=None):
        self._stop_if_signalled()

    def _stop_if_signalled(self):
        if self.signum is not None:
            self.restore()
            raise TrainingInterrupted(self.signum)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters survive a resume: they start from ``state`` (a RunState)
    when training begins. A score from the validation captions (``val_cider``, ``val_bleu_4``)
    exists only on the epochs they run (``callbacks.val_captions.every_n_epochs``), and the
    validation loss only on those of ``trainer.check_val_every_n_epoch``: the epochs between
    are skipped without Keras's missing-metric warning, and ``patience`` counts the epochs
    that were scored."""

    def __init__(self, *args, state: RunState | None = None, validation_freq: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.state, self.validation_freq = state, int(validation_freq)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.state is not None:
            self.wait, self.best_epoch = self.state.es_wait, self.state.es_best_epoch
            if self.state.es_best is not None:
                self.best = self.state.es_best

    def get_monitor_value(self, logs):
        if self.monitor not in (logs or {}) and (
                self.monitor in CAPTION_SCORES
                or (self.monitor.startswith("val_") and self.validation_freq > 1)):
            return None
        return super().get_monitor_value(logs)


class SaveState(keras.callbacks.Callback):
    """Owns the run's ``RunState``: after every epoch (after SaveWeights and EarlyStopping,
    whose results it records) brings it up to date and writes ``last.state.npz``: the state,
    every weight and every optimizer variable, atomically."""

    def __init__(self, path: Path, state: RunState, saver, early_stopping, ema=None, t0=None):
        super().__init__()
        self.path, self.state = Path(path), state
        self.saver, self.es, self.ema = saver, early_stopping, ema
        self._t0, self._spent = t0, state.seconds          # t0: this process's start (perf_counter)

    def on_epoch_end(self, epoch, logs=None):
        s = self.state
        s.epoch, s.best, s.best_epoch = epoch + 1, self.saver.best, self.saver.best_epoch
        s.es_wait, s.es_best = int(self.es.wait), finite(self.es.best)
        s.es_best_epoch = int(self.es.best_epoch)
        s.es_stopped_epoch = int(self.es.stopped_epoch)
        s.ema_in_model = self.ema is not None and self.ema.in_model
        if self._t0 is not None:
            s.seconds = round(self._spent + time.perf_counter() - self._t0, 1)
        arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(self.model.weights)}
        optimizer = self.model.optimizer.variables
        arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer)})
        if self.path.exists():          # keep the previous epoch's state, should this write die
            os.replace(self.path, previous_state(self.path))
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(s.to_meta())), **arrays)


def load_state(path: Path, model) -> RunState:
    """Restore weights and optimizer from ``last.state.npz`` (or, when that file is missing,
    truncated or corrupt, from ``previous.state.npz``, the epoch before); returns the state."""
    problems = []
    for candidate in (Path(path), previous_state(path)):
        if not candidate.is_file():
            problems.append(f"{candidate.name} is missing")
            continue
        try:
            meta, weights, slots = _read_state(candidate, len(model.weights))
        except Exception as e:  # noqa: BLE001 - any unreadable file: say what, try the other
            problems.append(f"{candidate.name} is unreadable ({type(e).__name__}: {e})")
            continue
        if candidate != Path(path):
            print(f"warning: {'; '.join(problems)}: resuming from {candidate.name} (epoch "
                  f"{meta['epoch']}) instead")
        _apply(model, weights, slots, candidate)
        return RunState.from_meta(meta)
    raise CaptioningError(f"Cannot resume from {Path(path).parent}: {'; '.join(problems)}. "
                          f"Start the run afresh (drop resume=).")


def _read_state(path: Path, n_weights: int):
    """The whole file, read and checked before anything is applied to the model."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        weights = [np.array(z[f"w{i}"]) for i in range(n_weights)]
        slots = [np.array(z[k]) for k in sorted((k for k in z.files if k.startswith("o")),
                                                 key=lambda k: int(k[1:]))]
    int(meta["epoch"])
    return meta, weights, slots


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
