"""The captioner's training objectives: the masked caption loss, the word loss, the
self-critical step (policy gradient, packing by length, leave-one-out advantage, replica
weighting), mixup, and its Keras config."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning.models.build import build_model
from captioning.models.captioner import SelfCriticalSettings, masked_loss_and_accuracy
from captioning.models.decoding import Generator
from captioning.models.transformer import TransformerDecoder
from tests.conftest import compose_config
from tests.models.test_decoders import S, T, V


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


def test_self_critical_step_moves_samples_towards_the_reward():
    """Policy gradient, for real: rewarding samples by how often they use token 7 must make the
    sampled captions use it more after a few steps."""
    import tensorflow as tf

    cfg = compose_config("debug=tiny", "backbone.image_size=32")
    keras.utils.set_random_seed(4)
    model = build_model(cfg, V)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    reward = lambda samples, captions: (samples[:, 1:] == 7).sum(1).astype("float32")  # noqa: E731
    model.enable_self_critical(SelfCriticalSettings(reward, 4, start_id=2, end_id=3, max_len=T,
                                                    seed=0))
    images = np.random.default_rng(5).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    captions = np.random.default_rng(6).integers(4, V, (8, 2, T)).astype("int32")
    captions[:, :, 0] = 2
    sampler = Generator(model, 2, 3, T, method="top_k", k=V, seed=1)

    def share_of_7():
        ids = keras.ops.convert_to_numpy(sampler(np.repeat(images, 8, axis=0)))[:, 1:]
        return (ids == 7).mean()

    before = share_of_7()
    history = model.fit(tf.data.Dataset.from_tensor_slices((images, captions)).batch(8).repeat(30),
                        epochs=1, verbose=0, shuffle=False)
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
        m.setattr(TransformerDecoder, "supports_packed", False)
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


def test_leave_one_out_advantage_subtracts_the_other_samples_mean():
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
    mixed, (partner_captions,), lam = model._mix(images, captions)
    mixed, partner_captions, lam = (keras.ops.convert_to_numpy(x)
                                    for x in (mixed, partner_captions, lam))
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
    history = model.fit(batches, epochs=1, verbose=0, shuffle=False)
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
