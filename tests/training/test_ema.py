"""Weight averaging (trainer.ema): the average is checkpointed and a resume trains on the raw
weights, the self-critical phase restarts it at the loaded checkpoint, and the Keras
internals it reads are where it expects them."""

from __future__ import annotations

import numpy as np

from tests.conftest import compose_config


def _ema_fit(tmp_path, model, epochs, initial_epoch=0, restored_in_model=False, stop_after=None,
             probe=None):
    import keras
    import numpy as np
    from omegaconf import OmegaConf

    from captioning.training.callbacks import EMAWeights, SaveWeights
    from captioning.training.early_stopping import ResumableEarlyStopping
    from captioning.training.phases import Phases, RunState
    from captioning.training.state_file import SaveState

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch + 1 == stop_after

    ema = EMAWeights(restored_in_model=restored_in_model)
    saver = SaveWeights(tmp_path, "loss", "min")
    state = RunState()
    phases = Phases(OmegaConf.create({"max_epochs": epochs}), state)
    es = ResumableEarlyStopping(monitor="loss", patience=10, state=state)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    model.fit(x, x @ np.ones((4, 1), "float32"), batch_size=8, epochs=epochs,
              initial_epoch=initial_epoch, verbose=0, shuffle=False,
              callbacks=[ema, *([probe] if probe else []), saver, es,
                         SaveState(tmp_path / "last.state.npz", phases, saver, es, ema),
                         Stop()])
    return ema


def _ema_model(compile=True):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    if compile:
        model.compile(keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5), "mse")
    return model


def test_ema_weights_are_checkpointed_and_a_resumed_run_trains_on_the_raw_weights(tmp_path):
    """trainer.ema: between epochs the model holds the average (checkpoints, resume state); a
    resumed run must swap back to the raw weights before training on."""
    import keras
    import numpy as np

    from captioning.training.state_file import load_state

    _ema_fit(tmp_path, _ema_model(), epochs=5, stop_after=2)    # stopped after epoch 2 of 5
    state = _ema_model()
    load_state(tmp_path / "last.state.npz", state)
    averaged = [np.array(w) for w in state.get_weights()]
    raw = [np.array(v) for v in state.optimizer._model_variables_moving_average]   # swapped out
    assert not np.allclose(averaged[0], raw[0])                 # the two really differ
    best = _ema_model(compile=False)
    best.load_weights(str(tmp_path / "last.weights.h5"))
    assert np.allclose(best.get_weights()[0], averaged[0])      # the checkpoint holds the average

    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.setdefault(epoch, [np.array(w) for w in self.model.get_weights()])

    for restored, expect in ((True, raw), (False, averaged)):   # False: what a resume must not do
        seen.clear()
        resumed = _ema_model()
        meta = load_state(tmp_path / "last.state.npz", resumed)
        assert meta.ema_in_model is True and meta.epoch == 2
        _ema_fit(tmp_path / "again", resumed, epochs=3, initial_epoch=2,
                 restored_in_model=restored, probe=Probe())
        assert np.allclose(seen[2][0], expect[0]), restored


def test_self_critical_starts_the_weight_average_at_the_loaded_checkpoint():
    """trainer.ema + scst_epochs: the optimizer's average is reset to the weights loaded from
    the best checkpoint, so the swap at the next epoch's start cannot bring back older ones."""
    import keras

    from captioning.training.callbacks import EMAWeights
    from captioning.training.optim import make_optimizer, reset_ema

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    model.compile(optimizer=make_optimizer(compose_config("trainer.ema=0.9"), steps_per_epoch=10),
                  loss="mse")
    x, y = np.ones((8, 2), "float32"), np.zeros((8, 3), "float32")
    ema = EMAWeights()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[ema])   # ends with the average in the model
    assert ema.in_model
    best = [np.full(w.shape, 0.25, "float32") for w in model.get_weights()]
    model.set_weights(best)                                 # what load_weights(best) does
    reset_ema(model.optimizer)
    ema.on_epoch_begin(2)                                   # the next epoch's swap
    for got, want in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(got, want)


