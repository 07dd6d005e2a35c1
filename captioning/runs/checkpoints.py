"""A run's weights back into a model: the best, the last, or an average of epochs; and the
run's config, with the overrides that may change after training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from captioning import CaptioningError
from captioning.data.text import Vocabulary
from captioning.models.build import build_model
from captioning.runs.files import (
    VOCAB,
    averaged_epochs,
    checkpoints,
    default_weights,
    epoch_name,
    weights_path,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def load_run(run_dir, which: str | None = None):
    """-> (cfg, vocab, model) of a run directory written by ``train``; ``which`` weights
    (best, last, mean:A-B; None: the ones the run's final scores used)."""
    run_dir = Path(run_dir)
    which = which or default_weights(run_dir)
    cfg_path, vocab_path = run_dir / "config.yaml", checkpoints(run_dir) / VOCAB
    epochs = averaged_epochs(which)
    weights = ([weights_path(run_dir, epoch_name(e)) for e in epochs] if epochs
               else [weights_path(run_dir, which)])
    for path in (cfg_path, vocab_path, *weights):
        if not path.is_file():
            raise CaptioningError(f"{run_dir} is not a finished run: "
                                  f"{path.relative_to(run_dir)} is missing. "
                                  f"Point run_dir at a folder under outputs/ that holds "
                                  f"config.yaml and checkpoints/."
                                  + (" Epoch checkpoints are kept with "
                                     "callbacks.checkpoints.every_epoch=true." if epochs else ""))
    cfg = OmegaConf.load(cfg_path)
    # A run saved before a decode/evaluation option existed gets that option's default, so
    # eval.py and caption.py can use and override it on older runs too.
    defaults = OmegaConf.load(CONF / "config.yaml")
    for group in ("decode", "evaluation"):
        cfg[group] = OmegaConf.merge(defaults[group], cfg.get(group) or {})
    vocab = Vocabulary.load(vocab_path)
    model = build_model(cfg, vocab.size)
    if epochs:
        average_weights(model, weights)
    else:
        model.load_weights(str(weights[0]))
    model.compile()          # evaluate() needs a compiled model; the loss lives in test_step
    return cfg, vocab, model


def load_selected(model, run_dir, cfg, epochs_run: int, best_epoch: int | None):
    """At the end of training, put the weights ``callbacks.checkpoints.select`` names into
    ``model``: best (early stopping's monitor), last, or mean:A-B (those epochs' checkpoints
    averaged; epochs an early stop never reached are left out). -> (the epoch they stand for,
    what selected them: metrics.json's ``best_epoch`` and ``selected_by``)."""
    select = str(cfg.callbacks.get("checkpoints", {}).get("select", "best"))
    epochs = [e for e in averaged_epochs(select) if e <= epochs_run]
    if epochs:
        average_weights(model, [weights_path(run_dir, epoch_name(e)) for e in epochs])
        return epochs[-1], f"mean of epochs {epochs[0]}-{epochs[-1]} ({select})"
    if select == "best":
        if weights_path(run_dir, "best").exists():
            model.load_weights(str(weights_path(run_dir, "best")))   # whatever stopped the run
        return best_epoch, str(cfg.callbacks.early_stopping.monitor)
    model.load_weights(str(weights_path(run_dir, "last")))
    return epochs_run, "last epoch"


def average_weights(model, paths) -> None:
    """Load the mean of several checkpoints of one architecture into ``model`` (uniform
    averaging, as in stochastic weight averaging; batch-norm moving statistics are averaged
    like every other weight rather than recomputed, a small approximation when the epochs are
    neighbours). Keras has no checkpoint-averaging utility, hence these few lines."""
    total = None
    for path in paths:
        model.load_weights(str(path))
        w = [np.asarray(x, dtype=np.float64) for x in model.get_weights()]
        total = w if total is None else [t + x for t, x in zip(total, w, strict=True)]
    model.set_weights([(t / len(paths)).astype(x.dtype)
                       for t, x in zip(total, model.get_weights(), strict=True)])


def merge_overrides(cfg, overrides: list[str], allowed=("decode", "evaluation", "dataset")):
    """Apply ``key=value`` overrides to a loaded run config, for the groups that may change
    after training (decoding, evaluation, data location); anything else is an error."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.split(".")[0] not in allowed:
            raise CaptioningError(f"{key} cannot change after training; "
                                  f"only {', '.join(a + '.*' for a in allowed)} can. "
                                  f"Received: {item}")
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise CaptioningError(f"Unknown key {key} (see the run's config.yaml). "
                                  f"Received: {item}")
    OmegaConf.set_struct(cfg, True)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


class WeightsWriter:
    """``model.save_weights(path)``, with Keras's search for the variables done once per model.

    Keras's ``save_weights`` finds what to write by walking every attribute of every object in
    the model (``dir()`` and ``getattr`` on ~2,400 objects for a model that holds
    EfficientNetB0, frozen or not): 0.38 s of a 0.56 s save on the 2-core VM, every epoch, while
    a model's structure never changes during a run (docs/experiments/speed.md, 2026-12-07
    second session). This keeps the walk's answer for each object of this model and reuses it;
    the values are read afresh at every save, so the file is the one ``save_weights`` writes
    (tests/models/test_library_internals.py compares them). The kept walk is dropped whenever
    the model's or its optimizer's variable count changes (a layer or slot added since). Keras
    keeps no public hook for this, so where its private ``saving_lib._walk_saveable`` is gone
    this is the plain ``save_weights``.
    """

    def __init__(self, model):
        self.model, self._walks, self._shape = model, {}, None

    def save(self, path) -> None:
        if _KERAS_WALK is None:                    # a Keras without the hook: the plain save
            self.model.save_weights(str(path))
            return
        optimizer = getattr(self.model, "optimizer", None)
        shape = (len(self.model.variables), len(getattr(optimizer, "variables", ()) or ()))
        if shape != self._shape:
            self._walks, self._shape = {}, shape

        def walk(saveable):
            key = id(saveable)
            if key not in self._walks:    # the object is kept with it: its id stays its own
                self._walks[key] = (saveable, list(_KERAS_WALK(saveable)))
            return iter(self._walks[key][1])

        _saving_lib._walk_saveable = walk
        try:
            self.model.save_weights(str(path))
        finally:
            _saving_lib._walk_saveable = _KERAS_WALK


try:                                     # Keras's own walk, taken once (see WeightsWriter)
    from keras.src.saving import saving_lib as _saving_lib
    _KERAS_WALK = _saving_lib._walk_saveable
except (ImportError, AttributeError):
    _saving_lib = _KERAS_WALK = None
