"""The private library attributes the package relies on are where it expects them: each test
fails, naming the attribute, the day a Keras or keras-hub release moves it (both are pinned to
the tested minor in pyproject.toml for this reason)."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest

from captioning.models.blocks import TransformerDecoder as DecoderBlock
from captioning.training.optim import ema_pairs, reset_ema

DIM, HEADS, FF = 8, 2, 16


def _sublayers(layer) -> set[str]:
    return {k for k, v in vars(layer).items()
            if k.startswith("_") and isinstance(v, keras.layers.Layer)}


def test_keras_ema_internals_are_where_trainer_ema_reads_them():
    """trainer.ema reads two private attributes of Keras optimizers (no public accessor)."""
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer = keras.optimizers.Adam(0.1, use_ema=True)
    optimizer.build([variable])
    pairs = ema_pairs(optimizer)
    assert len(pairs) == 1 and pairs[0][0] is variable
    variable.assign(np.full(3, 5.0, "float32"))
    reset_ema(optimizer)
    np.testing.assert_array_equal(np.array(pairs[0][1]), np.full(3, 5.0, "float32"))
    assert ema_pairs(keras.optimizers.Adam(0.1)) == []          # no averaging, nothing to touch

    class Renamed:
        use_ema = True

    with pytest.raises(RuntimeError, match="_model_variables_moving_average"):
        ema_pairs(Renamed())


def test_decoder_block_builds_every_sublayer_keras_hubs_decoder_calls():
    """DecoderBlock.build replaces keras-hub's TransformerDecoder.build and keeps its private
    sublayer names, which keras-hub's ``call`` reads: every sublayer keras-hub's own build
    creates must be created by ours too, and ours must run keras-hub's call."""
    hub = keras_hub.layers.TransformerDecoder(intermediate_dim=FF, num_heads=HEADS)
    hub.build((None, 4, DIM), (None, 3, DIM))
    ours = DecoderBlock(intermediate_dim=FF, num_heads=HEADS)
    ours.build((None, 4, DIM), (None, 3, DIM))
    missing = _sublayers(hub) - _sublayers(ours)
    assert not missing, f"keras-hub {keras_hub.__version__} builds sublayers DecoderBlock lacks"
    out = ours(np.zeros((2, 4, DIM), "float32"), np.zeros((2, 3, DIM), "float32"))
    assert tuple(out.shape) == (2, 4, DIM)


def test_cached_attention_has_the_projections_the_packed_pass_calls():
    """The packed training pass (DecoderBlock.call_packed) calls the attention layer's
    projections and kernel directly (Keras's MultiHeadAttention keeps them private)."""
    att = keras_hub.layers.CachedMultiHeadAttention(num_heads=HEADS, key_dim=DIM // HEADS)
    att.build((None, 4, DIM), (None, 4, DIM))
    for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense",
                 "_compute_attention"):
        assert hasattr(att, name), f"keras {keras.__version__}: MultiHeadAttention.{name} is gone"


def test_weights_writer_writes_what_save_weights_writes(tmp_path):
    """runs.checkpoints.WeightsWriter reuses Keras's private ``saving_lib._walk_saveable``
    answers: its files, saved again after the weights change, hold what ``save_weights``
    writes, dataset by dataset."""
    import h5py
    from keras.src.saving import saving_lib

    from captioning.runs.checkpoints import WeightsWriter

    assert callable(saving_lib._walk_saveable)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization()], name="inner")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dropout(0.1)(inner(inputs))))
    writer = WeightsWriter(model)

    def datasets(path):
        with h5py.File(path) as f:
            out = {}
            f.visititems(lambda name, obj: out.__setitem__(name, np.array(obj))
                         if isinstance(obj, h5py.Dataset) else None)
            return out

    for step in range(2):                  # the second save uses the kept walk
        for v in model.weights:
            v.assign(np.random.default_rng(step).normal(size=v.shape).astype("float32"))
        writer.save(tmp_path / f"fast{step}.weights.h5")
        model.save_weights(str(tmp_path / f"plain{step}.weights.h5"))
        fast, plain = (datasets(tmp_path / f"{k}{step}.weights.h5") for k in ("fast", "plain"))
        assert fast.keys() == plain.keys() and len(fast) >= 8
        for name in plain:
            np.testing.assert_array_equal(fast[name], plain[name], err_msg=name)
    assert saving_lib._walk_saveable.__name__ == "_walk_saveable"     # put back after a save
