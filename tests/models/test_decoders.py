"""Models: masked loss, cached decoding equals the full pass, beam-1 equals greedy, configs
round-trip, every registered backbone builds and yields its declared token shape."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning import ConfigError
from captioning.models.backbones import build_backbone, get_backbone
from captioning.models.build import build_model
from captioning.models.captioner import masked_loss_and_accuracy
from captioning.models.decoder import Decoder
from captioning.models.decoding import Generator
from captioning.models.gru import GRUDecoder
from captioning.models.transformer import TransformerDecoder
from tests.conftest import compose_config

V, T, S, D = 23, 7, 5, 16


def test_masked_loss_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, V)).astype("float32")
    targets = np.array([[3, 5, 2, 0], [7, 0, 0, 0]], "int32")
    loss, acc, n = (float(x) for x in masked_loss_and_accuracy(targets, logits))
    # By hand: mean of -log softmax(logits)[target] over the 4 real tokens.
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [(0, 0), (0, 1), (0, 2), (1, 0)]
    expected = -np.mean([logp[i, j, targets[i, j]] for i, j in real])
    assert n == 4 and loss == pytest.approx(expected, rel=1e-5)
    assert acc == pytest.approx(np.mean([logits[i, j].argmax() == targets[i, j] for i, j in real]))
    # Changing logits at padded positions changes nothing.
    logits2 = logits.copy()
    logits2[0, 3] += 100
    logits2[1, 1:] -= 50
    assert float(masked_loss_and_accuracy(targets, logits2)[0]) == pytest.approx(loss, rel=1e-6)


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
def test_get_config_round_trips(decoder):
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


def test_recipe_a_heads_and_feed_forward_dropout():
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


def test_transformer_checks_its_heads():
    with pytest.raises(ValueError, match="num_heads must be >= 1 and divide dim"):
        TransformerDecoder(V, T, dim=D, num_heads=3)
    with pytest.raises(ValueError, match="num_heads must be >= 1 and divide dim"):
        TransformerDecoder(V, T, dim=D, num_heads=0)


@pytest.fixture(scope="module")
def tiny_model():
    # The same weights every run. With seed 2, greedy ends the 4 test rows at different
    # positions (lengths 3, 4, 3, 3): the case the beam-1 comparison must handle.
    keras.utils.set_random_seed(2)
    cfg = compose_config("debug=tiny", "backbone.image_size=32")
    return build_model(cfg, V), cfg


def test_beam_of_one_equals_greedy(tiny_model):
    model, _ = tiny_model
    images = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    greedy = Generator(model, start_id=2, end_id=3, max_len=9, method="greedy")(images)
    beam1 = Generator(model, start_id=2, end_id=3, max_len=9, method="beam", beam_size=1)(images)
    # Plain list equality: rows that end at different positions are ragged, which numpy's
    # array comparison cannot take (it raised on equal outputs, depending on the random init).
    greedy, beam1 = _until_end(greedy, 3), _until_end(beam1, 3)
    assert greedy == beam1
    assert all(len(row) > 1 for row in greedy)


def test_captioner_config_records_its_parts_and_settings():
    """get_config: plain settings as they are, sublayers as Keras configs, all JSON; the
    encoder, decoder and augmentation revive from theirs (the backbone is rebuilt from cfg)."""
    import json

    cfg = compose_config("debug=tiny", "backbone.image_size=32", "augment.flip=horizontal",
                         "trainer.label_smoothing=0.1", "augment.mixup=0.2")
    model = build_model(cfg, V)
    config = json.loads(json.dumps(model.get_config()))
    assert {k: config[k] for k in ("blind", "label_smoothing", "word_loss", "mixup", "seed")} == {
        "blind": False, "label_smoothing": 0.1, "word_loss": 0.0, "mixup": 0.2, "seed": cfg.seed}
    assert config["name"] == "captioner"
    assert config["backbone"]["config"]["name"] == model.backbone.name
    for part in ("encoder", "decoder"):
        revived = keras.saving.deserialize_keras_object(config[part])
        assert type(revived) is type(getattr(model, part))
        assert revived.get_config() == getattr(model, part).get_config()
    augmentation = [keras.saving.deserialize_keras_object(c) for c in config["augmentation"]]
    assert [a.get_config() for a in augmentation] == [a.get_config() for a in model.augmentation]
    assert config["decoder"]["config"]["dim"] == cfg.decoder.dim
    with pytest.raises(NotImplementedError, match="build_model"):
        type(model).from_config(config)


def _until_end(ids, end):
    """Token rows cut after the first end token (what the vocabulary decodes)."""
    out = []
    for row in keras.ops.convert_to_numpy(ids):
        row = [int(t) for t in row]
        out.append(row[: row.index(end) + 1] if end in row else row)
    return out


def _log_probs(logits):
    """Numpy log-softmax over the vocabulary with padding (id 0) ruled out, as the decoders do."""
    logits = logits.copy()
    logits[:, 0] = -1e9
    top = logits.max(-1, keepdims=True)
    return logits - np.log(np.exp(logits - top).sum(-1, keepdims=True)) - top


def test_beam_search_finds_at_least_greedy_likelihood(tiny_model):
    """Beam 4 never returns a sequence less likely than greedy's (both scored by the model)."""
    model, _ = tiny_model
    images = np.random.default_rng(3).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    greedy = Generator(model, 2, 3, 8, method="greedy")(images)
    beam = Generator(model, 2, 3, 8, method="beam", beam_size=4)(images)

    def loglik(ids):
        ids = [r for r in _until_end(ids, 3)]
        total = []
        for b, row in enumerate(ids):
            tokens = np.array([row[:-1]], "int32")
            logits = keras.ops.convert_to_numpy(model((images[b:b + 1], tokens)))[0]
            logp = _log_probs(logits)
            total.append(sum(logp[i, row[i + 1]] for i in range(len(row) - 1)))
        return np.array(total)

    assert (loglik(beam) >= loglik(greedy) - 1e-3).all()


def test_length_penalty_never_picks_a_shorter_beam():
    """decode.length_penalty only re-ranks the final beams by score / ((5 + len) / 6) ** alpha: a
    caption can only get longer than with alpha 0, and with these weights some do."""
    keras.utils.set_random_seed(1)          # an init whose beams end at different lengths
    model = build_model(compose_config("debug=tiny", "backbone.image_size=32"), V)
    images = np.random.default_rng(3).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    plain = Generator(model, 2, 3, 9, method="beam", beam_size=4)(images)
    longer = Generator(model, 2, 3, 9, method="beam", beam_size=4, length_penalty=2.0)(images)
    plain, longer = ([len(r) for r in _until_end(ids, 3)] for ids in (plain, longer))
    assert all(b >= a for a, b in zip(plain, longer, strict=True))
    assert sum(longer) > sum(plain)


@pytest.mark.parametrize("method", ["top_k", "top_p"])
def test_sampling_is_seeded_and_batched(tiny_model, method):
    model, _ = tiny_model
    images = np.zeros((5, 32, 32, 3), "float32")
    def sample(seed):
        gen = Generator(model, 2, 3, 8, method=method, k=5, p=0.8, temperature=2.0, seed=seed)
        return keras.ops.convert_to_numpy(gen(images))

    ids = sample(1)
    assert ids.shape == (5, 8) and (ids[:, 0] == 2).all() and (ids[:, 1:] != 0).any()
    np.testing.assert_array_equal(sample(1), ids)               # one seed, one set of samples
    assert not np.array_equal(sample(2), ids)                   # another seed, other samples


def test_test_time_views_are_the_eight_symmetries_of_each_image():
    from captioning.models.decoding import test_time_views

    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    views = keras.ops.convert_to_numpy(test_time_views(images, "dihedral"))
    assert views.shape == (16, 5, 5, 3)
    for b in range(2):                                   # an image's views together, itself first
        mine = views[b * 8:(b + 1) * 8]
        expected = [np.rot90(x, k, axes=(0, 1))
                    for x in (images[b], images[b][:, ::-1]) for k in range(4)]
        np.testing.assert_array_equal(mine[0], images[b])
        assert sorted(v.tobytes() for v in mine) == sorted(e.tobytes() for e in expected)
    flip = keras.ops.convert_to_numpy(test_time_views(images, "flip"))
    mirrored = np.stack([images, images[:, :, ::-1]], 1).reshape(4, 5, 5, 3)
    np.testing.assert_array_equal(flip, mirrored)
    with pytest.raises(ConfigError, match="needs square images"):
        test_time_views(np.zeros((1, 4, 6, 3), "float32"), "dihedral")
    with pytest.raises(ConfigError, match="decode.tta must be one of"):
        Generator(None, 2, 3, 8, tta="rotate")


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_ensemble_of_identical_views_decodes_like_one_view(tiny_model, method):
    """V copies of the same memory average to the one model's log-probabilities: the same ids,
    through the ensemble's folded cache (beam search reorders it by beam)."""
    model, _ = tiny_model
    images = np.random.default_rng(4).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    memory = model.encode(images)
    gen = Generator(model, 2, 3, 9, method=method, beam_size=3)
    one = keras.ops.convert_to_numpy(gen.generate(memory))
    four = keras.ops.convert_to_numpy(gen.generate(keras.ops.repeat(memory, 4, axis=0), views=4))
    assert _until_end(one, 3) == _until_end(four, 3)


def test_tta_decodes_the_views_mean_log_probabilities(tiny_model):
    """decode.tta=flip: each step's token is the argmax of the image's and its mirror's mean
    log-probabilities (checked against the decoder run on each view separately)."""
    model, _ = tiny_model
    images = np.random.default_rng(6).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    ids = keras.ops.convert_to_numpy(Generator(model, 2, 3, 6, method="greedy", tta="flip")(images))
    assert ids.shape == (4, 6)
    views = [model.encode(images), model.encode(images[:, :, ::-1])]
    caches = [model.decoder.init_cache(m, 5) for m in views]
    token = np.full((4,), 2, "int32")
    for i in range(3):                                   # the first 3 generated tokens
        logps = []
        for v in range(2):
            logits, caches[v] = model.decoder.step(token, caches[v], i)
            logps.append(_log_probs(keras.ops.convert_to_numpy(logits).astype("float64")))
        token = np.mean(logps, axis=0).argmax(-1).astype("int32")
        # Rows still going (greedy pads after the end).
        alive = (ids[:, 1:i + 1] != 3).all(axis=1)
        np.testing.assert_array_equal(ids[alive, i + 1], token[alive])
        token = np.where(alive, token, ids[:, i + 1]).astype("int32")
    # With these images the ensemble's captions differ from either view's alone: the check above
    # would catch a generator that decoded one view only.
    for view in (images, images[:, :, ::-1]):
        single = keras.ops.convert_to_numpy(Generator(model, 2, 3, 6, method="greedy")(view))
        assert _until_end(single, 3) != _until_end(ids, 3)


def test_unknown_backbone_is_a_clear_error():
    known = r"Unknown backbone 'resnet9000'. Known: \['small_cnn'.*'efficientnetb0'"
    with pytest.raises(ConfigError, match=known):
        get_backbone("resnet9000")


@pytest.mark.parametrize("name,size,tokens,width", [
    ("small_cnn", 64, 16, 192),
    ("efficientnetb0", 64, 4, 1280),
    ("inceptionresnetv2", 75, 1, 1536),
    ("mobilenetv2", 64, 4, 1280),                 # any keras.applications model by name
])
def test_backbones_build_with_declared_token_shape(name, size, tokens, width):
    cfg = compose_config(f"backbone.name={name}", f"backbone.image_size={size}",
                         "backbone.weights=null")
    net = build_backbone(cfg)
    out = net(np.zeros((2, size, size, 3), "float32"))
    assert tuple(out.shape) == (2, tokens, width)
    spec = get_backbone(name)
    assert spec.feature_dim in (None, width)


@pytest.mark.parametrize("options,convs", [
    ([], 4),
    # A stride-2 stem and residual convs.
    (["backbone.stem=8", "backbone.convs_per_stage=[1,2,2,1]"], 6),
])
def test_small_cnn_variants_keep_a_sixteenth_of_the_side(options, convs):
    cfg = compose_config("backbone.image_size=64", "backbone.filters=[8,16,16,24]", *options)
    net = build_backbone(cfg)
    assert tuple(net(np.zeros((2, 64, 64, 3), "float32")).shape) == (2, 16, 24)
    cnn = net.get_layer("small_cnn")
    stem = "backbone.stem=8" in options
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in cnn.layers) == convs + stem
    assert sum(isinstance(layer, keras.layers.Add) for layer in cnn.layers) == convs - 4
    with pytest.raises(ConfigError,
                       match="backbone.convs_per_stage must be >= 1, one number or one per stage"):
        build_backbone(compose_config("backbone.convs_per_stage=[1,2]"))


def test_patchify_stem_sees_twice_the_side_for_the_same_tokens():
    base = ["backbone.filters=[8,16,16,24]", "backbone.stem=8"]
    small = build_backbone(compose_config("backbone.image_size=64", *base))
    patch = build_backbone(compose_config("backbone.image_size=128", "backbone.stem_stride=4",
                                          *base))
    assert tuple(patch(np.zeros((2, 128, 128, 3), "float32")).shape) == (2, 16, 24)
    assert tuple(small(np.zeros((2, 64, 64, 3), "float32")).shape) == (2, 16, 24)
    stem = patch.get_layer("small_cnn").get_layer("stem_conv")
    assert stem.kernel_size == (4, 4) and stem.strides == (4, 4)          # non-overlapping patches
    with pytest.raises(ConfigError, match="backbone.stem_stride must be 1, 2, 3 or 4"):
        build_backbone(compose_config("backbone.stem_stride=8", *base))
    with pytest.raises(ConfigError, match="backbone.stem_stride must be 1, 2, 3 or 4"):
        build_backbone(compose_config("backbone.stem_stride=four", *base))
    with pytest.raises(ConfigError, match="backbone.stem_stride=4 needs a stem: set backbone.stem"):
        build_backbone(compose_config("backbone.stem_stride=4"))              # stem is 0 by default


def test_frozen_backbone_has_no_trainable_weights():
    effnet = ["backbone=efficientnetb0", "backbone.image_size=32", "backbone.weights=null"]
    assert build_backbone(compose_config(*effnet)).trainable_weights == []
    cfg = compose_config(*effnet, "backbone.trainable=3")
    assert 0 < len(build_backbone(cfg).trainable_weights) < 10


def test_frozen_backbone_gives_the_same_features_in_a_training_step():
    """EfficientNet has stochastic-depth dropout. Frozen, it must run in inference mode even when
    the captioner trains (Keras 3 lets training=True reach inside the backbone's graph), so its
    features equal the cached ones; a fine-tuned backbone keeps its dropout."""
    effnet = ["debug=tiny", "backbone=efficientnetb0", "backbone.image_size=32",
              "backbone.weights=null"]
    model = build_model(compose_config(*effnet), vocab_size=V)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    cached = np.asarray(model.backbone(images, training=False))
    tokens = np.asarray(model.encoder(cached, training=False))
    np.testing.assert_allclose(np.asarray(model.encode(images, training=True)), tokens,
                               rtol=1e-5, atol=1e-6)

    # Stochastic depth drops a residual block per image at rates 0.025-0.175 (9 blocks): an
    # image keeps them all with p = 0.36, so with 2 images both passes were identical about once
    # in 60 (a flake seen once); with 8 images about once in 10^7.
    tuned = build_model(compose_config(*effnet, "backbone.trainable=true"), vocab_size=V)
    batch = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    a, b = (np.asarray(tuned.encode(batch, training=True)) for _ in range(2))
    assert np.abs(a - b).max() > 1e-4                 # dropout is live when the backbone trains


def test_missing_weights_file_is_a_clear_error(tmp_path):
    cfg = compose_config("backbone=efficientnetb0", "backbone.image_size=32",
                         f"backbone.weights={tmp_path}/x.h5")
    with pytest.raises(ConfigError, match="no such file"):
        build_backbone(cfg)


def test_word_loss_matches_hand_computation_and_trains_the_image_side():
    cfg = compose_config("debug=tiny", "trainer.word_loss=2.0", "augment.flip=none")
    model = build_model(cfg, vocab_size=V)
    rng = np.random.default_rng(3)
    memory = rng.normal(size=(2, S, int(cfg.decoder.dim))).astype("float32")
    captions = np.zeros((2, 2, T), "int32")
    captions[0, 0, :4] = [2, 5, 6, 3]
    captions[0, 1, :3] = [2, 5, 3]           # repeated words count once
    captions[1, 0, :3] = [2, 9, 3]           # second caption of image 1 is padding
    # By hand: sigmoid cross-entropy against the set of words present, summed over the
    # vocabulary, divided by the number of words present, averaged over images.
    logits = keras.ops.convert_to_numpy(model.word_head(memory.mean(1)))
    expected = []
    for i, words in enumerate([{2, 3, 5, 6}, {2, 3, 9}]):
        y = np.isin(np.arange(V), list(words)).astype("float64")
        z = logits[i].astype("float64")
        bce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        expected.append(bce.sum() / len(words))
    got = float(model.word_loss(memory, captions))
    assert got == pytest.approx(np.mean(expected), rel=1e-5)

    # It reaches the backbone on its own (the image-level signal it exists for) and is logged
    # beside the caption loss in training.
    import tensorflow as tf

    size = int(cfg.backbone.image_size)
    images = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    with tf.GradientTape() as tape:
        words = model.word_loss(model.encode(images, training=True), captions)
    grads = tape.gradient(words, model.backbone.trainable_weights)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = model.train_step((images, captions))
    assert float(logs["word_loss"]) > 0 and float(logs["loss"]) > 0



def test_augmentation_layers_transform_training_batches_only():
    from captioning.models.augment import build_augmentation

    cfg = compose_config("augment.flip=both", "augment.rot90=true", "augment.zoom=0.25",
                         "augment.translate=0.1")
    layers = {layer.name: layer for layer in build_augmentation(cfg, seed=0)}
    assert set(layers) == {"aug_flip", "aug_rot90", "aug_zoom", "aug_translate"}
    x = np.random.default_rng(0).uniform(0, 255, (16, 12, 12, 3)).astype("float32")
    for layer in layers.values():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
        y = keras.ops.convert_to_numpy(layer(x, training=True))
        assert y.shape == x.shape and not np.allclose(y, x)
    # 90-degree rotations permute pixels exactly: every image is one of its four rotations.
    y = keras.ops.convert_to_numpy(layers["aug_rot90"](x, training=True))
    assert all(any(np.array_equal(y[i], np.rot90(x[i], k)) for k in range(4))
               for i in range(len(x)))
    with pytest.raises(ConfigError, match="augment.zoom and augment.translate"):
        build_augmentation(compose_config("augment.zoom=1.5"), seed=0)


def test_rot90_turns_by_one_gather_as_the_four_selects_did():
    """Images of a known side take the gather path; of an unknown side, the select path. With
    the same seed they draw the same turns, so both give the same images, pixel for pixel."""
    import tensorflow as tf

    from captioning.models.augment import RandomRot90, _turn_maps

    x = np.random.default_rng(1).uniform(0, 255, (64, 9, 9, 3)).astype("float32")
    fast, slow = RandomRot90(seed=5), RandomRot90(seed=5)
    unknown_side = tf.function(lambda t: slow(t, training=True),
                               input_signature=[tf.TensorSpec((None, None, None, 3))])
    for _ in range(2):                                   # two draws: the seed streams agree
        y = keras.ops.convert_to_numpy(fast(x, training=True))
        np.testing.assert_array_equal(y, unknown_side(x).numpy())
    turns = [next(k for k in range(4) if np.array_equal(y[i], np.rot90(x[i], k)))
             for i in range(len(x))]
    assert set(turns) == {0, 1, 2, 3}                    # every turn is drawn
    maps = _turn_maps(9)
    for k in range(4):
        np.testing.assert_array_equal(x[0].reshape(81, 3)[maps[k]].reshape(9, 9, 3),
                                      np.rot90(x[0], -k))     # k turns clockwise


def test_self_critical_step_moves_samples_towards_the_reward(tiny_model):
    """Policy gradient, for real: rewarding samples by how often they use token 7 must make the
    sampled captions use it more after a few steps."""
    import tensorflow as tf

    cfg = compose_config("debug=tiny", "backbone.image_size=32")
    keras.utils.set_random_seed(4)
    model = build_model(cfg, V)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    reward = lambda samples, captions: (samples[:, 1:] == 7).sum(1).astype("float32")  # noqa: E731
    model.enable_self_critical(reward, 4, start_id=2, end_id=3, max_len=T, seed=0)
    images = np.random.default_rng(5).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    captions = np.random.default_rng(6).integers(4, V, (8, 2, T)).astype("int32")
    captions[:, :, 0] = 2
    sampler = Generator(model, 2, 3, T, method="top_k", k=V, seed=1)

    def share_of_7():
        ids = keras.ops.convert_to_numpy(sampler(np.repeat(images, 8, axis=0)))[:, 1:]
        return (ids == 7).mean()

    before = share_of_7()
    history = model.fit(tf.data.Dataset.from_tensor_slices((images, captions)).batch(8).repeat(30),
                        epochs=1, verbose=0)
    after = share_of_7()
    assert after > before + 0.2
    assert set(history.history) >= {"loss", "accuracy", "reward"}


def test_self_critical_packs_samples_by_length_without_changing_the_objective(monkeypatch):
    """The self-critical step runs the Transformer on each sample's tokens through its end token
    only (call_packed), other decoders on two groups of images, each cut after its longest
    sample's end token; the decoder is causal, so the advantage-weighted log-likelihood and the
    token count equal those of one pass over the full padded rows, either way."""
    import tensorflow as tf

    from captioning.models.captioner import length_groups

    cfg = compose_config("debug=tiny", "backbone.image_size=32", "decoder.dropout=0",
                         "decoder.output_dropout=0")
    keras.utils.set_random_seed(3)
    model = build_model(cfg, V)
    k, end = 2, 3
    ids = np.array([[2, 5, 6, 3, 0, 0, 0, 0], [2, 7, 3, 9, 9, 9, 9, 9],    # image 0: through 4
                    [2, 8, 8, 8, 8, 8, 3, 0], [2, 3, 0, 0, 0, 0, 0, 0],    # image 1: through 7
                    [2, 4, 3, 0, 0, 0, 0, 0], [2, 5, 5, 3, 0, 0, 0, 0],    # image 2: through 4
                    [2, 6, 6, 6, 6, 6, 6, 6], [2, 9, 3, 0, 0, 0, 0, 0]],   # image 3: no end, 8
                   "int32")
    groups = [(list(np.asarray(i)), int(n)) for i, n in length_groups(ids, end, k)]
    assert groups == [([0, 2], 4), ([1, 3], 8)]
    assert [int(n) for _, n in length_groups(ids[:2], end, k)] == [2, 4]   # one image: empty + all

    images = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    advantage = np.array([0.5, -1.0, 2.0, 0.25, -0.5, 1.5, -2.0, 1.0], "float32")
    memory = model.encode(images)
    total, count = (float(x) for x in model._sample_log_likelihood(memory, tf.constant(ids),
                                                                    advantage, k, end))
    with monkeypatch.context() as m:                  # the length groups (decoders without it)
        m.delattr(TransformerDecoder, "call_packed")
        grouped = [float(x) for x in model._sample_log_likelihood(memory, tf.constant(ids),
                                                                   advantage, k, end)]
    assert grouped == pytest.approx([total, count], rel=1e-5)
    # The same sums from one unpacked pass: every row at full length, then masked.
    logits = keras.ops.convert_to_numpy(model((np.repeat(images, k, axis=0), ids[:, :-1])))
    logits[..., 0] = -1e9
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    targets = ids[:, 1:]
    ended = np.cumsum(targets == end, axis=1) - (targets == end) > 0
    real = ~ended & (targets > 0)
    picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    assert count == real.sum() == 3 + 2 + 6 + 1 + 2 + 3 + 7 + 2
    assert total == pytest.approx(float((advantage[:, None] * picked * real).sum()), rel=1e-5)
    # A batch of one image: the first group is empty and adds nothing.
    one, n = model._sample_log_likelihood(memory[:1], tf.constant(ids[:2]), advantage[:2], k, end)
    assert int(n) == 3 + 2
    assert float(one) == pytest.approx(float((advantage[:2, None] * picked[:2] * real[:2]).sum()),
                                       rel=1e-5)


def test_leave_one_out_advantage():
    """Each sample against the mean of its image's other samples (what the step multiplies)."""
    from captioning.models.captioner import leave_one_out_advantage

    rewards = np.array([1.0, 3.0, 2.0, 2.0, 2.0, 5.0], "float32")
    adv = keras.ops.convert_to_numpy(leave_one_out_advantage(rewards, 3))
    np.testing.assert_allclose(adv, [1 - 2.5, 3 - 1.5, 2 - 2.0, 2 - 3.5, 2 - 3.5, 5 - 2.0])


def test_mixup_blends_image_pairs_and_takes_the_partners_captions():
    import tensorflow as tf

    cfg = compose_config("debug=tiny", "backbone.image_size=32", "augment.mixup=0.4")
    model = build_model(cfg, V)
    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    # Each image's captions are unique.
    captions = np.arange(6 * 2 * T, dtype="int32").reshape(6, 2, T)
    mixed, partner_captions, lam = (keras.ops.convert_to_numpy(x)
                                    for x in model._mix(images, captions))
    assert 0 <= lam <= 1
    # Which image each caption row came from.
    partners = [int(c[0, 0]) // (2 * T) for c in partner_captions]
    assert sorted(partners) == list(range(6))                           # a permutation of the batch
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[partners],
                               rtol=1e-5, atol=1e-3)
    # A training step with mixup on runs and gives a finite loss.
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    ok = np.random.default_rng(8).integers(4, V, (6, 2, T)).astype("int32")
    batches = tf.data.Dataset.from_tensor_slices((images, ok)).batch(3)
    history = model.fit(batches, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_self_critical_objective_is_weighted_by_each_replicas_tokens():
    """Both train steps weight a replica's per-token mean by its share of the tokens, so two
    replicas sum to the global mean (the self-critical step used to sum the two means)."""
    import subprocess
    import sys

    code = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from captioning.models.captioner import replica_weighted
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

def step():
    first = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group) == 0
    count, mean = (3.0, 2.0) if first else (1.0, 6.0)   # token sums 6 and 6: global mean 3
    return replica_weighted(tf.constant(mean), tf.constant(count))

total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step), axis=None)
assert abs(float(total) - 3.0) < 1e-6, float(total)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env={**__import__("os").environ,
                                              "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    source = __import__("inspect").getsource(
        __import__("captioning.models.captioner", fromlist=["Captioner"]).Captioner
        ._self_critical_step)
    assert "replica_weighted(" in source
