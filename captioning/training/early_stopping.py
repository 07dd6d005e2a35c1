"""Early stopping that survives a resume and skips the epochs that were not scored."""

from __future__ import annotations

import keras

from captioning.config_rules import CAPTION_SCORES
from captioning.training.phases import RunState


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
