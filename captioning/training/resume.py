"""Stopping safely and resuming: Ctrl-C / SIGTERM end the run after the current batch, and
``resume=`` continues from the last completed epoch.

The resume state (model weights, optimizer variables, epoch, best score, early-stopping
counters) lives in one file, ``checkpoints/last.state.npz``, written atomically at the end of
every epoch, so a kill at any moment leaves a consistent state from the last completed epoch.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import keras
import numpy as np

from captioning import CaptioningError, TrainingInterrupted
from captioning.config_check import CAPTION_SCORES
from captioning.io import atomic_path
from captioning.training.state import RunState, finite


class StopOnSignal(keras.callbacks.Callback):
    """First SIGINT/SIGTERM: stop after the current batch (nothing of the partial epoch is
    recorded). A second Ctrl-C stops at once."""

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
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:       # not the main thread (e.g. a launcher's worker): no handlers
                pass

    def on_train_end(self, logs=None):
        self.restore()

    def restore(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def on_train_batch_end(self, batch, logs=None):
        if self.signum is not None:
            self.restore()
            raise TrainingInterrupted(self.signum)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters survive a resume: they start from ``state`` (a RunState)
    when training begins. A score from the validation captions (``val_cider``, ``val_bleu_4``)
    exists only on the epochs they run (``callbacks.val_captions.every_n_epochs``): the epochs
    between are skipped without Keras's missing-metric warning, and ``patience`` counts the
    epochs that were scored."""

    def __init__(self, *args, state: RunState | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.state = state

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.state is not None:
            self.wait, self.best_epoch = self.state.es_wait, self.state.es_best_epoch
            if self.state.es_best is not None:
                self.best = self.state.es_best

    def get_monitor_value(self, logs):
        if self.monitor in CAPTION_SCORES and self.monitor not in (logs or {}):
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
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(s.to_meta())), **arrays)


def load_state(path: Path, model) -> RunState:
    """Restore weights and optimizer from ``last.state.npz``; returns the run's state."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        weights = [z[f"w{i}"] for i in range(len(model.weights))]
        model.set_weights(weights)
        opt = model.optimizer
        opt.build(model.trainable_variables)
        n = sum(1 for k in z.files if k.startswith("o"))
        if n != len(opt.variables):
            raise CaptioningError(f"{path} does not match this model's optimizer ({n} vs "
                                  f"{len(opt.variables)} variables): was the config changed "
                                  f"between the run and the resume?")
        for i, v in enumerate(opt.variables):
            v.assign(z[f"o{i}"])
    return RunState.from_meta(meta)


def find_resumable(outputs: Path, overrides: list[str]) -> Path | None:
    """The newest unfinished run under ``outputs`` started with the same overrides."""
    import yaml

    wanted = sorted(o for o in overrides if not o.startswith(("resume=", "hydra.")))
    candidates = sorted(outputs.glob("*/*/checkpoints/last.state.npz"),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    candidates += sorted(outputs.glob("multirun/*/*/*/checkpoints/last.state.npz"),
                         key=lambda p: p.stat().st_mtime, reverse=True)
    for state in candidates:
        run = state.parent.parent
        ov = run / ".hydra" / "overrides.yaml"
        if (run / "metrics.json").exists() or not ov.exists():
            continue
        theirs = sorted(o for o in (yaml.safe_load(ov.read_text()) or [])
                        if not o.startswith(("resume=", "hydra.")))
        if theirs == wanted:
            return run
    return None
