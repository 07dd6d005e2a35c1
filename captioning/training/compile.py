"""The Captioner and its optimizer, built under the distribution strategy."""

from __future__ import annotations

import keras

from captioning.console import console
from captioning.models.build import build_model
from captioning.training.debug import train_steps
from captioning.training.optim import make_optimizer


def compile_captioner(cfg, data, strategy):
    """The compiled Captioner, its optimizer built; -> (model, clock). ``clock`` is the
    variable a learning rate that follows ``trainer.max_minutes`` reads (None without it)."""
    steps = train_steps(cfg, data)
    with strategy.scope():           # variables are mirrored when the strategy has several devices
        model = build_model(cfg, data.vocab.size)
        clock = None
        if cfg.trainer.get("max_minutes") and cfg.trainer.get("lr_follows_clock", False):
            clock = keras.Variable(0.0, trainable=False, name="time_used")
        optimizer = make_optimizer(cfg, steps, clock, model.backbone.trainable_variables)
        model.compile(optimizer=optimizer, jit_compile=bool(cfg.trainer.jit_compile))
        # The optimizer's slots now, not inside the first train step: a tf.function that
        # creates variables is traced twice, and each trace of the step takes seconds.
        optimizer.build(model.trainable_variables)
    if strategy.num_replicas_in_sync > 1:
        console.print(f"  training on {strategy.num_replicas_in_sync} replicas "
                      f"({type(strategy).__name__}); trainer.batch_size={cfg.trainer.batch_size} "
                      f"is the global batch")
    return model, clock
