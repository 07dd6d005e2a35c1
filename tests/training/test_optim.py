"""The optimizer and learning-rate schedule: steps or the clock, the backbone's own rate, and the
fused Adam step against Keras's."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config


def test_the_schedule_follows_the_steps_unless_lr_follows_clock():
    import keras

    from captioning.training.optim import make_schedule

    base = ("trainer.lr_schedule=cosine", "trainer.learning_rate=0.01", "trainer.warmup_steps=0",
            "trainer.max_epochs=10", "trainer.max_minutes=5")
    lr = lambda s, step: float(s(step))                        # noqa: E731
    clock = keras.Variable(0.0, trainable=False)
    steps = make_schedule(compose_config(*base), steps_per_epoch=10, clock=clock)
    follows = make_schedule(compose_config(*base, "trainer.lr_follows_clock=true"),
                            steps_per_epoch=10, clock=clock)
    plain = make_schedule(compose_config(*base), steps_per_epoch=10)
    clock.assign(0.5)                                          # half the minutes gone at step 10
    assert lr(steps, 10) == pytest.approx(lr(plain, 10))       # by default: the steps alone
    assert lr(follows, 10) == pytest.approx(lr(plain, 50))     # lr_follows_clock: the clock
    clock.assign(1.0)
    assert lr(steps, 10) == pytest.approx(lr(plain, 10)) and lr(plain, 10) > 0.009
    assert lr(follows, 10) == pytest.approx(0.01 * 0.01)


def test_cosine_schedule_follows_the_clock_under_a_time_budget():
    import keras

    from captioning.training.optim import make_schedule

    cfg = compose_config("trainer.lr_schedule=cosine", "trainer.learning_rate=0.01",
                         "trainer.warmup_steps=0", "trainer.max_epochs=10", "trainer.max_minutes=5",
                         "trainer.lr_follows_clock=true")
    clock = keras.Variable(0.0, trainable=False)
    schedule = make_schedule(cfg, steps_per_epoch=10, clock=clock)
    plain = make_schedule(cfg, steps_per_epoch=10)
    lr = lambda s, step: float(s(step))                       # noqa: E731
    assert lr(schedule, 30) == pytest.approx(lr(plain, 30))   # steps ahead of the clock: unchanged
    clock.assign(0.5)                                         # half the time gone at step 10
    assert lr(schedule, 10) == pytest.approx(lr(plain, 50))
    assert lr(plain, 50) < lr(plain, 10)
    clock.assign(1.0)
    assert lr(schedule, 10) == pytest.approx(0.01 * 0.01)     # the floor (alpha = 1%)


def test_backbone_lr_multiplier_scales_only_the_backbone_step():
    import keras
    import numpy as np

    from captioning.training.optim import make_optimizer

    cfg = compose_config("trainer.backbone_lr_multiplier=3", "trainer.learning_rate=0.01",
                         "trainer.weight_decay=0.1", "trainer.ema=0.5")
    backbone, head = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(3, "float32"))
    opt = make_optimizer(cfg, steps_per_epoch=10, backbone_variables=[backbone])
    opt.apply([np.full(3, 0.5, "float32"), np.full(3, -2.0, "float32")], [backbone, head])
    # Adam's first step: about lr each way
    step_b, step_h = 1 - np.array(backbone), np.array(head) - 1
    # 3 x lr, plus decoupled decay lr x wd
    assert step_b == pytest.approx(np.full(3, 0.03 + 0.001), rel=1e-3)
    assert step_h == pytest.approx(np.full(3, 0.01 - 0.001), rel=1e-3)
    assert opt.use_ema and isinstance(opt, keras.optimizers.AdamW)


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_the_fused_adam_step_trains_as_keras_adam_does(decay):
    """FusedAdam(W): one ResourceApplyAdam kernel per dense variable, Keras's own step for an
    embedding's sparse gradient; five steps of a small model land where Keras's Adam(W) does."""
    import keras
    import numpy as np

    from captioning.training.optim import FusedAdam, FusedAdamW

    def trained(optimizer):
        keras.utils.set_random_seed(0)
        ids = keras.Input((8,), dtype="int32")
        x = keras.layers.Flatten()(keras.layers.Embedding(50, 16)(ids))    # a sparse gradient
        model = keras.Model(ids, keras.layers.Dense(3)(keras.layers.Dense(32, "relu")(x)))
        model.compile(optimizer=optimizer, loss="mse")
        rng = np.random.default_rng(0)
        model.fit(rng.integers(0, 50, (16, 8)), rng.normal(size=(16, 3)), epochs=5,
                  batch_size=8, shuffle=False, verbose=0)
        return model.get_weights(), model.optimizer

    keras_way, _ = trained(keras.optimizers.AdamW(0.01, weight_decay=decay) if decay
                           else keras.optimizers.Adam(0.01))
    fused, opt = trained(FusedAdamW(0.01, weight_decay=decay) if decay else FusedAdam(0.01))
    start, _ = trained(keras.optimizers.SGD(0.0))
    for a, b, w0 in zip(keras_way, fused, start, strict=True):
        assert np.abs(a - w0).max() > 1e-3                     # every variable moved ...
        np.testing.assert_allclose(b, a, atol=1e-5)            # ... to the same place
    assert int(opt.iterations) == 10
