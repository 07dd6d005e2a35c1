"""Decoders (Transformer and GRU): cached decoding equals the full pass, shared memory equals
repeated memory, the packed pass equals the padded one, configs round-trip, attention maps
match the teacher-forced pass, and our Transformer block is keras-hub's."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning.models.decoder import Decoder
from captioning.models.gru import GRUDecoder
from captioning.models.transformer import TransformerDecoder
from tests.conftest import compose_config

V, T, S, D = 23, 7, 5, 16


def _decoders():
    return [TransformerDecoder(V, T, dim=D, num_layers=2, num_heads=2, ff_dim=32, dropout=0.0,
                               output_dropout=0.0),
            GRUDecoder(V, T, dim=D)]


@pytest.mark.parametrize("decoder", _decoders(), ids=["transformer", "gru"])
def test_cached_step_reproduces_full_pass(decoder):
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, V, (3, T)).astype("int32")
    memory = rng.normal(size=(3, S, D)).astype("float32")
    full = keras.ops.convert_to_numpy(decoder.project(decoder(tokens, memory)))       # (B, T, V)
    cache = decoder.init_cache(memory, T)
    steps = []
    for i in range(T):
        logits, cache = decoder.step(tokens[:, i], cache, i)
        steps.append(keras.ops.convert_to_numpy(logits))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-4)


def test_cached_step_shares_cross_attention_between_an_images_rows():
    # Beams and self-critical samples step R rows per image against one copy of the image's
    # cross-attention keys/values (shared_state): the same logits and attention as repeating
    # the memory R times.
    decoder = _decoders()[0]
    rng = np.random.default_rng(3)
    r = 3
    tokens = rng.integers(1, V, (2 * r, T)).astype("int32")
    memory = rng.normal(size=(2, S, D)).astype("float32")
    shared = decoder.init_cache(memory, T, repeats=r)
    repeated = decoder.init_cache(np.repeat(memory, r, axis=0), T)
    assert keras.ops.shape(shared["cross"][0][0])[0] == 2                 # once per image
    for i in range(T):
        a, shared, att_a = decoder.step(tokens[:, i], shared, i, return_attention=True)
        b, repeated, att_b = decoder.step(tokens[:, i], repeated, i, return_attention=True)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(att_a),
                                   keras.ops.convert_to_numpy(att_b), atol=1e-6)


@pytest.mark.parametrize("decoder", _decoders(), ids=["transformer", "gru"])
def test_shared_memory_equals_repeated_memory(decoder):
    # Training decodes an image's C captions against one memory row (repeats=C); it must be
    # the same function as repeating the memory C times.
    rng = np.random.default_rng(2)
    tokens = rng.integers(1, V, (3 * 4, T)).astype("int32")
    memory = rng.normal(size=(3, S, D)).astype("float32")
    shared = keras.ops.convert_to_numpy(decoder(tokens, memory, repeats=4))
    repeated = keras.ops.convert_to_numpy(decoder(tokens, np.repeat(memory, 4, axis=0)))
    np.testing.assert_allclose(shared, repeated, atol=1e-5)


def test_packed_training_pass_equals_the_padded_one():
    # Training runs the Transformer on an image's captions laid end to end without padding
    # (call_packed); the real positions' hidden states and every gradient must be those of the
    # padded pass. Captions of every length, an all-padding row, one row as long as T.
    import tensorflow as tf

    decoder = _decoders()[0]
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, T + 1, 3 * 4)
    lengths[[0, 5]] = T, 0
    tokens = np.zeros((3 * 4, T), "int32")
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, V, n)
    real = tokens > 0
    memory = tf.constant(rng.normal(size=(3, S, D)).astype("float32"))
    weights = tf.constant(rng.normal(size=(int(real.sum()), D)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        padded = tf.boolean_mask(decoder(tokens, memory, repeats=4), real)
        packed = decoder.call_packed(tokens, memory, real, repeats=4)
        loss_padded, loss_packed = (tf.reduce_sum(h * weights) for h in (padded, packed))
    np.testing.assert_allclose(packed.numpy(), padded.numpy(), atol=1e-5)
    variables = decoder.trainable_variables
    for v, a, b in zip(variables, tape.gradient(loss_padded, variables),
                       tape.gradient(loss_packed, variables), strict=True):
        if a is None:                                  # the vocabulary head: not in this pass
            assert b is None, v.path
            continue
        a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()
        np.testing.assert_allclose(b, a, atol=1e-5 * max(1.0, np.abs(a).max()), err_msg=v.path)


@pytest.mark.parametrize("decoder", _decoders(), ids=["transformer", "gru"])
def test_decoder_config_round_trips(decoder):
    config = decoder.get_config()
    clone = type(decoder).from_config(config)
    assert clone.get_config() == config


@pytest.mark.parametrize("decoder", _decoders(), ids=["transformer", "gru"])
def test_decoder_declares_the_cache_entries_each_beam_owns(decoder):
    """Beam search reorders only ``beam_state``: the other cache entries must be per image
    (a step leaves them as they were), and every ``beam_state`` entry must follow the tokens."""
    assert isinstance(decoder, Decoder)
    rng = np.random.default_rng(3)
    memory = rng.normal(size=(2, S, D)).astype("float32")
    decoder(rng.integers(1, V, (2, T)).astype("int32"), memory)      # builds the layer
    before = decoder.init_cache(memory, T)
    assert decoder.beam_state and set(decoder.beam_state) < set(before)
    _, after = decoder.step(np.array([4, 5], "int32"), before, 0)
    assert set(after) == set(before)
    for key in before:
        old, new = (keras.tree.flatten(c[key]) for c in (before, after))
        same = all(np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
                   for a, b in zip(old, new, strict=True))
        assert same == (key not in decoder.beam_state), key


@pytest.mark.parametrize("decoder", _decoders(), ids=["transformer", "gru"])
def test_attention_while_generating_equals_the_full_pass(decoder):
    """Both decoders expose their attention over the image tokens: each cached step's weights
    are the teacher-forced pass's at that position, rows are distributions over the S tokens,
    and asking for them changes nothing else."""
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, V, (3, T)).astype("int32")
    memory = rng.normal(size=(3, S, D)).astype("float32")
    hidden, full = (keras.ops.convert_to_numpy(x)
                    for x in decoder(tokens, memory, return_attention=True))
    assert full.shape == (3, T, S)
    np.testing.assert_allclose(full.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(hidden, keras.ops.convert_to_numpy(decoder(tokens, memory)),
                               atol=1e-5)
    cache, steps = decoder.init_cache(memory, T), []
    for i in range(T):
        plain, _ = decoder.step(tokens[:, i], cache, i)
        logits, cache, weights = decoder.step(tokens[:, i], cache, i, return_attention=True)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(logits),
                                   keras.ops.convert_to_numpy(plain), atol=1e-5)
        steps.append(keras.ops.convert_to_numpy(weights))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)
    # The weights depend on the image: another memory gives other weights.
    other = keras.ops.convert_to_numpy(decoder(tokens, memory[::-1], return_attention=True)[1])
    assert np.abs(other - full).max() > 1e-3


def test_transformer_attention_can_come_from_any_block():
    decoder = _decoders()[0]                                  # two blocks
    rng = np.random.default_rng(5)
    tokens = rng.integers(1, V, (2, T)).astype("int32")
    memory = rng.normal(size=(2, S, D)).astype("float32")
    last, first, minus_two = (keras.ops.convert_to_numpy(
        decoder(tokens, memory, return_attention=True, attention_block=b)[1]) for b in (-1, 0, -2))
    np.testing.assert_array_equal(first, minus_two)
    assert np.abs(first - last).max() > 1e-3
    with pytest.raises(ValueError, match="attention_block must name one of the 2 blocks"):
        decoder(tokens, memory, return_attention=True, attention_block=2)


def test_default_block_is_keras_hubs_block_weights_and_outputs():
    """With key_dim=None and ff_dropout=0 our block is keras-hub's: the same initial weights
    for a seed, the same paths in a weights file (checkpoints of either load into the other)
    and the same outputs."""
    import keras_hub

    from captioning.models.blocks import DecoderBlock

    def holder(block):
        model = keras.Model()
        model.blocks = [block]               # a list: Keras keys it by the block's class name
        return model

    blocks = []
    for make in (keras_hub.layers.TransformerDecoder, DecoderBlock):
        keras.utils.set_random_seed(7)
        block = make(intermediate_dim=32, num_heads=2, dropout=0.1, name="block0")
        block.build((None, None, D), (None, None, D))
        blocks.append(block)
    hub, ours = blocks
    assert [w.path for w in hub.weights] == [w.path for w in ours.weights]
    for a, b in zip(hub.weights, ours.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    rng = np.random.default_rng(6)
    x, memory = rng.normal(size=(2, T, D)).astype("float32"), rng.normal(size=(2, S, D))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(hub(x, memory.astype("float32"))),
                               keras.ops.convert_to_numpy(ours(x, memory.astype("float32"))),
                               atol=1e-6)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "hub.weights.h5")
        saved = holder(hub)
        saved.built = True
        saved.save_weights(path)
        keras.utils.set_random_seed(8)
        fresh = DecoderBlock(intermediate_dim=32, num_heads=2, dropout=0.1, name="block0")
        fresh.build((None, None, D), (None, None, D))
        loaded = holder(fresh)
        loaded.built = True
        loaded.load_weights(path)
    for a, b in zip(hub.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_key_dim_widens_each_head_and_ff_dropout_acts_in_training_only():
    """decoder.key_dim gives every head its own width (recipe A: 2 heads of 512, not 2 of 256)
    and decoder.ff_dropout drops feed-forward activations in training only."""
    cfg = compose_config("experiment=flickr8k_transformer", "dataset.root=/nonexistent")
    assert (cfg.decoder.key_dim, cfg.decoder.ff_dropout, cfg.decoder.num_heads) == (512, 0.3, 2)
    decoder = TransformerDecoder(V, T, dim=D, num_heads=2, ff_dim=32, dropout=0.0,
                                 output_dropout=0.0, key_dim=12, ff_dropout=0.5)
    rng = np.random.default_rng(7)
    tokens = rng.integers(1, V, (2, T)).astype("int32")
    memory = rng.normal(size=(2, S, D)).astype("float32")
    decoder(tokens, memory)
    block = decoder.blocks[0]
    assert tuple(block._cross_attention_layer._query_dense.kernel.shape) == (D, 2, 12)
    assert tuple(block._self_attention_layer._value_dense.kernel.shape) == (D, 2, 12)
    assert decoder.init_cache(memory, T)["cross"][0][0].shape[-1] == 12     # (keys, values)
    clone = TransformerDecoder.from_config(decoder.get_config())
    assert (clone.key_dim, clone.ff_dropout) == (12, 0.5)
    infer = [keras.ops.convert_to_numpy(decoder(tokens, memory)) for _ in range(2)]
    train = [keras.ops.convert_to_numpy(decoder(tokens, memory, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(*infer)
    assert np.abs(train[0] - train[1]).max() > 1e-3            # the feed-forward dropout


def test_transformer_refuses_heads_that_do_not_divide_dim():
    with pytest.raises(ValueError, match="num_heads must be >= 1 and divide dim"):
        TransformerDecoder(V, T, dim=D, num_heads=3)
    with pytest.raises(ValueError, match="num_heads must be >= 1 and divide dim"):
        TransformerDecoder(V, T, dim=D, num_heads=0)
