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
