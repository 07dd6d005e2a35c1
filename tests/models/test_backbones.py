"""Backbones: every registered one builds with its declared token shape, small_cnn's variants,
frozen backbones stay frozen (and in inference mode), and weights files: missing, offline
ImageNet, and a saved file loaded back."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning import ConfigError
from captioning.models.backbones import build_backbone, get_backbone
from captioning.models.build import build_model
from tests.conftest import compose_config
from tests.models.test_decoders import V


def test_offline_imagenet_weights_name_the_file_and_where_it_goes(monkeypatch, tmp_path):
    """From the new default (dataset=flickr8k: EfficientNetB0, imagenet). The download goes
    through a proxy that refuses connections, so it fails here with or without a network."""
    from captioning.models.backbones import _keras_models_dir, build_backbone

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))   # read when Keras is imported
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    cfg = compose_config("dataset=flickr8k", "backbone.image_size=32")
    assert cfg.backbone.weights == "imagenet"
    with pytest.raises(ConfigError) as e:
        build_backbone(cfg)
    text = str(e.value)
    assert "Keras wants the file efficientnetb0_notop.h5" in text
    # KERAS_HOME counts only if this process had not imported Keras yet (Keras reads it once)
    assert f"put it at {_keras_models_dir() / 'efficientnetb0_notop.h5'}" in text
    assert "backbone.weights=/path/to/efficientnetb0_notop.h5" in text
    assert "backbone.weights=null" in text


def test_weights_file_saved_from_a_random_backbone_is_loaded(tmp_path):
    """In the legacy .h5 format of Keras' own ImageNet file (efficientnetb0_notop.h5)."""
    import h5py
    import keras
    import numpy as np
    from keras.src.legacy.saving import legacy_h5_format

    from captioning.models.backbones import build_backbone

    keras.utils.set_random_seed(1)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None)
    with h5py.File(tmp_path / "efficientnetb0_notop.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    expected = [w.numpy() for w in source.weights]
    file = tmp_path / "efficientnetb0_notop.h5"
    cfg = compose_config("dataset=flickr8k", "backbone.image_size=32", f"backbone.weights={file}")
    net = build_backbone(cfg).get_layer("efficientnetb0")
    got = [w.numpy() for w in net.weights]
    assert len(got) == len(expected) > 300
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    wrong = compose_config("dataset=flickr8k", "backbone=small_cnn",
                           f"backbone.weights={file}")
    with pytest.raises(ConfigError, match="cannot be loaded into small_cnn"):
        build_backbone(wrong)


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
    # Known without building for every registered one (small_cnn: its last filter count,
    # keras.applications: FEATURE_DIMS), and it is the width the built network gives.
    assert spec.feature_dim == width


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
