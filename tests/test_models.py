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
    return [TransformerDecoder(V, T, dim=D, num_layers=2, num_heads=2, ff_dim=32, dropout=0.0, output_dropout=0.0),
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


@pytest.mark.parametrize("decoder", _decoders(), ids=["transformer", "gru"])
def test_get_config_round_trips(decoder):
    config = decoder.get_config()
    clone = type(decoder).from_config(config)
    assert clone.get_config() == config


@pytest.fixture(scope="module")
def tiny_model():
    cfg = compose_config("debug=tiny", "backbone.image_size=32")
    return build_model(cfg, V), cfg


def test_beam_of_one_equals_greedy(tiny_model):
    model, _ = tiny_model
    images = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    greedy = Generator(model, start_id=2, end_id=3, max_len=9, method="greedy")(images)
    beam1 = Generator(model, start_id=2, end_id=3, max_len=9, method="beam", beam_size=1)(images)
    np.testing.assert_array_equal(_until_end(greedy, 3), _until_end(beam1, 3))


def _until_end(ids, end):
    """Token rows cut after the first end token (what the vocabulary decodes)."""
    out = []
    for row in keras.ops.convert_to_numpy(ids):
        row = list(row)
        out.append(row[: row.index(end) + 1] if end in row else row)
    return out


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
            logits[:, 0] = -1e9
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            total.append(sum(logp[i, row[i + 1]] for i in range(len(row) - 1)))
        return np.array(total)

    assert (loglik(beam) >= loglik(greedy) - 1e-3).all()


@pytest.mark.parametrize("method", ["top_k", "top_p"])
def test_sampling_is_seeded_and_batched(tiny_model, method):
    model, _ = tiny_model
    images = np.zeros((5, 32, 32, 3), "float32")
    ids = keras.ops.convert_to_numpy(Generator(model, 2, 3, 8, method=method, k=5, p=0.8, seed=1)(images))
    assert ids.shape == (5, 8) and (ids[:, 0] == 2).all() and (ids[:, 1:] != 0).any()


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"Unknown backbone 'resnet9000'. Known: \['small_cnn'.*'efficientnetb0'"):
        get_backbone("resnet9000")


@pytest.mark.parametrize("name,size,tokens,width", [
    ("small_cnn", 64, 16, 192),
    ("efficientnetb0", 64, 4, 1280),
    ("inceptionresnetv2", 75, 1, 1536),
    ("mobilenetv2", 64, 4, 1280),                 # any keras.applications model by name
])
def test_backbones_build_with_declared_token_shape(name, size, tokens, width):
    cfg = compose_config(f"backbone.name={name}", f"backbone.image_size={size}", "backbone.weights=null")
    net = build_backbone(cfg)
    out = net(np.zeros((2, size, size, 3), "float32"))
    assert tuple(out.shape) == (2, tokens, width)
    spec = get_backbone(name)
    assert spec.feature_dim in (None, width)


def test_frozen_backbone_has_no_trainable_weights():
    cfg = compose_config("backbone=efficientnetb0", "backbone.image_size=32", "backbone.weights=null")
    assert build_backbone(cfg).trainable_weights == []
    cfg = compose_config("backbone=efficientnetb0", "backbone.image_size=32", "backbone.weights=null",
                         "backbone.trainable=3")
    assert 0 < len(build_backbone(cfg).trainable_weights) < 10


def test_missing_weights_file_is_a_clear_error(tmp_path):
    cfg = compose_config("backbone=efficientnetb0", "backbone.image_size=32", f"backbone.weights={tmp_path}/x.h5")
    with pytest.raises(ConfigError, match="no such file"):
        build_backbone(cfg)
