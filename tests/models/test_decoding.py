"""Caption generation (``Generator``): beam search against greedy, the length penalty, seeded
sampling, and test-time augmentation over an image's views."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning import ConfigError
from captioning.models.build import build_model
from captioning.models.decoding import Generator, resolve_jit
from tests.conftest import compose_config
from tests.models.test_decoders import V


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
    with pytest.raises(ConfigError, match="decode.tta must be none, flip .* or dihedral"):
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


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_the_xla_loop_gives_the_same_greedy_captions(tiny_model, tta):
    """decode.jit_compile=loop (what auto picks where XLA is faster): greedy's token loop under
    XLA, the encoder not; the captions are the plain ones."""
    model, _ = tiny_model
    images = np.random.default_rng(5).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    plain = Generator(model, 2, 3, 9, method="greedy", jit_compile=False, tta=tta)
    loop = Generator(model, 2, 3, 9, method="greedy", jit_compile="loop", tta=tta)
    assert loop.loop_jit and not plain.loop_jit
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loop(images)),
                                  keras.ops.convert_to_numpy(plain(images)))
    memory = model.encode(images[:2])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loop.from_memory(memory)),
                                  keras.ops.convert_to_numpy(plain.from_memory(memory)))
    with pytest.raises(ConfigError, match="decode.jit_compile must be true, false, auto or loop"):
        Generator(model, 2, 3, 9, jit_compile="always")


def test_auto_jit_is_the_xla_loop_for_greedy_where_it_measured_faster():
    avx2, avx512 = {"fma", "avx2"}, {"fma", "avx2", "avx512f", "avx512_bf16"}
    assert resolve_jit("auto", "greedy", avx2) == "loop"
    assert resolve_jit("auto", "greedy", avx512) is False
    for method in ("beam", "top_k", "top_p"):           # their own paths stay plain under auto
        assert resolve_jit("auto", method, avx2) is False
    assert resolve_jit(True, "beam") is True and resolve_jit(False, "greedy") is False
