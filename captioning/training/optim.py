"""The optimizer and its learning-rate schedules.

``make_optimizer(cfg, ...)``: Adam (AdamW when ``trainer.weight_decay`` > 0; each variable's step
one fused TensorFlow kernel) with the schedule
``trainer.lr_schedule`` / ``warmup_steps`` ask for, optional Polyak averaging (``trainer.ema``)
and a learning-rate multiplier for the backbone (``trainer.backbone_lr_multiplier``).

Keras has no public API for three things done here, so they use private optimizer members:
``_var_key`` (``_LRMultiplied``: recognise a backbone variable in ``update_step``);
``_get_variable_index``, ``_momentums`` and ``_velocities`` (``_FusedAdamStep``: Adam's slots);
``_model_variables_moving_average`` and ``_trainable_variables`` (``ema_pairs``: the averaged
weights). ``tests/models/test_library_internals.py`` fails naming the EMA two if a Keras
release renames them; the others fail the backbone-multiplier and fused-Adam tests in
``tests/training/test_optim.py``.
Tested: the keras range pinned in pyproject.toml.
"""

from __future__ import annotations

import keras

SERIALIZABLE = "captioning"


def make_optimizer(cfg, steps_per_epoch: int, clock=None, backbone_variables=()):
    """Adam(W) with the configured learning-rate schedule; ``trainer.ema`` > 0 makes it keep a
    moving average of the weights (the EMAWeights callback puts it in the model between
    epochs); ``trainer.backbone_lr_multiplier`` scales the step of ``backbone_variables``."""
    t = cfg.trainer
    schedule = make_schedule(cfg, steps_per_epoch, clock)
    ema = float(t.get("ema", 0.0))
    common = {"clipnorm": t.get("clipnorm"), "use_ema": ema > 0, "ema_momentum": ema or 0.99}
    decay = float(t.weight_decay)
    extra = {"weight_decay": decay} if decay else {}
    factor = float(t.get("backbone_lr_multiplier", 1.0))
    if factor != 1.0 and backbone_variables:
        base = AdamWLRMultiplied if decay else AdamLRMultiplied
        return base(schedule, multiplied=backbone_variables, factor=factor, **extra, **common)
    base = FusedAdamW if decay else FusedAdam
    return base(schedule, **extra, **common)


def uses_schedule(cfg) -> bool:
    """Whether ``make_schedule`` returns a schedule (True) or a plain float (False)."""
    return cfg.trainer.lr_schedule == "cosine" or bool(cfg.trainer.warmup_steps)


def make_schedule(cfg, steps_per_epoch: int, clock=None):
    """``trainer.lr_schedule`` / ``warmup_steps`` -> a float or a Keras schedule, fixed by the
    steps (``max_epochs`` x ``steps_per_epoch``). ``clock``: a scalar variable holding the
    fraction of ``trainer.max_minutes`` used (the TimeBudget callback keeps it up to date);
    only with ``trainer.lr_follows_clock=true`` does a cosine schedule follow it, decaying by
    whichever runs out first, the steps or the time (the run then depends on machine speed)."""
    t = cfg.trainer
    if not t.get("lr_follows_clock", False):
        clock = None
    lr = float(t.learning_rate)
    total = max(1, steps_per_epoch * int(t.max_epochs))
    if t.lr_schedule == "cosine":
        warm = min(int(t.warmup_steps), total - 1)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warm else lr, decay_steps=max(1, total - warm), alpha=0.01,
            warmup_target=lr if warm else None, warmup_steps=warm)
        return ClockAware(schedule, total, clock) if clock is not None else schedule
    if t.warmup_steps:
        return Warmup(lr, int(t.warmup_steps))
    return lr


def set_constant_learning_rate(optimizer, lr: float, scheduled: bool) -> None:
    """Switch to a constant ``lr`` (the self-critical phase). An optimizer built with a
    schedule (``scheduled``, see ``uses_schedule``) only accepts another schedule."""
    optimizer.learning_rate = Constant(lr) if scheduled else float(lr)


def ema_pairs(optimizer) -> list[tuple]:
    """(variable, its moving average) for every trainable variable of an optimizer built with
    ``use_ema``; [] without it. The only place that reads Keras's private EMA attributes: Keras
    has no public accessor for the average, and keeps it aligned with the optimizer's
    trainable variables."""
    if not getattr(optimizer, "use_ema", False):
        return []
    names = ("_model_variables_moving_average", "_trainable_variables")
    missing = [n for n in names if not hasattr(optimizer, n)]
    if missing:
        raise RuntimeError(f"keras {keras.__version__} optimizers have no {missing}: trainer.ema "
                           f"relies on these private attributes (tested with the keras range in "
                           f"pyproject.toml). Pin keras to that range or set trainer.ema=0.")
    averages = getattr(optimizer, names[0]) or []
    return list(zip(getattr(optimizer, names[1]), averages, strict=True)) if averages else []


def reset_ema(optimizer) -> None:
    """With ``trainer.ema``, the optimizer's average still holds the last epoch's weights, and
    EMAWeights swaps it into the model when the next epoch begins: set it to the weights just
    loaded, so the self-critical epochs start from (and average from) the selected checkpoint."""
    for variable, average in ema_pairs(optimizer):
        average.assign(variable)


class _FusedAdamStep:
    """Mixin: Adam's per-variable update as TensorFlow's fused ``ResourceApplyAdam`` kernel,
    the same formula as Keras's ``Adam.update_step`` (m and v moving averages, the bias-corrected
    step ``lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``, ``epsilon`` outside the square root), in
    one op per variable instead of ~15. Keras has no fused path, and building those ops was a
    large share of the training step's trace (figures: docs/experiments/speed.md). Under a
    strategy with several replicas (mirrored variables) and for sparse gradients Keras's own step
    runs."""

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        var = variable.value if isinstance(variable, keras.Variable) else variable
        index = self._get_variable_index(variable)
        m, v = (x.value for x in (self._momentums[index], self._velocities[index]))
        distributed = tf.distribute.DistributedValues
        plain = all(isinstance(x, tf.Variable) and not isinstance(x, distributed)
                    and hasattr(x, "handle") for x in (var, m, v))
        # Keras's own step for sparse gradients (embeddings): its ops square each of an
        # IndexedSlices' rows before duplicates are summed, which the dense kernel would not.
        if (not plain or isinstance(gradient, tf.IndexedSlices) or var.dtype != tf.float32
                or getattr(self, "amsgrad", False)):
            return super().update_step(gradient, variable, learning_rate)
        dtype = var.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=var.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype), beta1=beta_1,
            beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype))


class _LRMultiplied:
    """Mixin: the step is ``factor`` x the learning rate for some variables. Keras 3 optimizers
    have no parameter groups; this is the smallest override that gives one (the per-variable
    ``update_step``), and it keeps use_ema, weight decay and clipping as they are. (Scaling
    gradients would not do it: Adam's step ignores the gradient's scale.)"""

    def __init__(self, *args, multiplied=(), factor=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor = float(factor)
        self._multiplied = {self._var_key(v) for v in multiplied}

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._multiplied:        # decided while tracing, once
            learning_rate = keras.ops.multiply(learning_rate, self.factor)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(SERIALIZABLE)
class FusedAdam(_FusedAdamStep, keras.optimizers.Adam):
    """Keras's Adam, each variable's step one fused kernel (see ``_FusedAdamStep``)."""


@keras.saving.register_keras_serializable(SERIALIZABLE)
class FusedAdamW(_FusedAdamStep, keras.optimizers.AdamW):
    """Keras's AdamW (its decoupled weight decay unchanged), the Adam step fused."""


@keras.saving.register_keras_serializable(SERIALIZABLE)
class AdamLRMultiplied(_LRMultiplied, FusedAdam):
    """Adam with ``backbone_lr_multiplier`` (see ``_LRMultiplied``)."""


@keras.saving.register_keras_serializable(SERIALIZABLE)
class AdamWLRMultiplied(_LRMultiplied, FusedAdamW):
    """AdamW with ``backbone_lr_multiplier`` (see ``_LRMultiplied``)."""


@keras.saving.register_keras_serializable(SERIALIZABLE)
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``lr`` over ``steps`` optimizer steps, then constant (recipe A on
    keras.io; counted in optimizer steps, which here are batches, not captions)."""

    def __init__(self, lr, steps):
        self.lr, self.steps = lr, steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        return self.lr * keras.ops.minimum(1.0, (step + 1.0) / self.steps)

    def get_config(self):
        return {"lr": self.lr, "steps": self.steps}


@keras.saving.register_keras_serializable(SERIALIZABLE)
class ClockAware(keras.optimizers.schedules.LearningRateSchedule):
    """``trainer.lr_follows_clock=true``: a schedule evaluated at max(step, time used / time
    budget x total steps): on a machine slower than planned the decay still ends when the budget
    does, instead of training being cut at a high learning rate ("budgeted training", Li et
    al., ICLR 2020), at the price of a run that depends on the machine's speed. Keras has none.
    ``clock`` is a live variable, so a schedule rebuilt from its config follows the steps only."""

    def __init__(self, inner, total_steps, clock=None):
        if isinstance(inner, dict):
            inner = keras.optimizers.schedules.deserialize(inner)
        self.inner, self.total_steps, self.clock = inner, int(total_steps), clock

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.clock is not None:
            used = keras.ops.cast(self.clock, "float32") * float(self.total_steps)
            step = keras.ops.maximum(step, used)
        return self.inner(step)

    def get_config(self):
        return {"inner": keras.optimizers.schedules.serialize(self.inner),
                "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(SERIALIZABLE)
class Constant(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule that returns ``lr``: an optimizer built with a schedule only accepts another
    schedule as its new learning rate."""

    def __init__(self, lr):
        self.lr = float(lr)

    def __call__(self, step):
        return keras.ops.convert_to_tensor(self.lr, "float32")

    def get_config(self):
        return {"lr": self.lr}
