"""``trainer.profile_batches``: a TensorFlow profiler trace of a few training batches."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf


class ProfileBatches(keras.callbacks.Callback):
    """TensorFlow's profiler (``tf.profiler.experimental``) from batch ``first`` to ``last``.
    Our own few lines, not Keras's TensorBoard callback (``profile_batch``): that one also
    writes summaries, which need the ``tensorboard`` package; the profiler is TensorFlow's."""

    def __init__(self, log_dir: Path, first: int, last: int):
        super().__init__()
        self.log_dir, self.first, self.last = Path(log_dir), first, last
        self.batch, self.running = 0, False

    def on_train_batch_begin(self, batch, logs=None):
        self.batch += 1
        if self.batch == self.first and not self.running:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            tf.profiler.experimental.start(str(self.log_dir))
            self.running = True

    def on_train_batch_end(self, batch, logs=None):
        if self.running and self.batch >= self.last:
            self._stop()

    def on_train_end(self, logs=None):
        if self.running:                 # the epoch had fewer batches than the window
            self._stop()

    def _stop(self):
        tf.profiler.experimental.stop()
        self.running = False
        print(f"Profiler trace of training batches {self.first}-{self.batch}: {self.log_dir} "
              f"(tensorboard --logdir {self.log_dir}, Profile tab)")
