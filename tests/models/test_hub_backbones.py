"""The keras-hub encoders (vit, clip): patch tokens of the declared shape with their own
preprocessing, a local preset folder loaded, an unfetchable preset's message, their config
rules, and tiny training runs (frozen and cached; fine-tuned and uncached) that caption.py
(with attention maps) and the export use."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from captioning import ConfigError
from captioning.config_check import check_config
from captioning.models.backbones import build_backbone
from captioning.training import train
from tests.conftest import ROOT, compose_config

# 32-px images, 8-px patches: a 4x4 grid of 16 patch tokens of width 16
TINY_HUB = ("debug=tiny", "backbone.image_size=32", "backbone.patch_size=8",
            "backbone.num_layers=1", "backbone.num_heads=2", "backbone.hidden_dim=16",
            "backbone.mlp_dim=32")


@pytest.mark.parametrize("name", ["vit", "clip"])
def test_patch_tokens_and_own_preprocessing(name):
    cfg = compose_config(*TINY_HUB, f"backbone={name}")
    net = build_backbone(cfg)
    assert net.output_shape == (None, 16, 16)                # 16 patches, the class token dropped
    grey = np.full((1, 32, 32, 3), 255.0, np.float32)
    scaled = np.asarray(net.get_layer("preprocess")(grey))[0, 0, 0]
    expected = {"vit": [1.0] * 3,                          # [-1, 1]
                "clip": [(1 - m) / s for m, s in zip((0.48145466, 0.4578275, 0.40821073),
                                                     (0.26862954, 0.26130258, 0.27577711),
                                                     strict=True)]}[name]
    np.testing.assert_allclose(scaled, expected, rtol=1e-5)


def test_local_preset_folder_is_loaded_with_its_weights(tmp_path):
    """A preset saved by keras-hub (as a downloaded one is) loads from its folder."""
    import keras_hub

    vit = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8, num_layers=1,
                                       num_heads=2, hidden_dim=16, mlp_dim=32)
    vit.save_to_preset(str(tmp_path / "tiny_vit"))
    keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 255.0,
                                       offset=0.0).save_to_preset(str(tmp_path / "tiny_vit"))
    cfg = compose_config(*TINY_HUB, "backbone=vit", "backbone.weights=preset",
                         f"backbone.preset={tmp_path / 'tiny_vit'}")
    net = build_backbone(cfg)
    loaded = net.get_layer("vit").layers[1]                    # pixels -> ViTBackbone -> crop
    assert all(np.array_equal(a, b) for a, b in zip(
        [w.numpy() for w in loaded.weights], [w.numpy() for w in vit.weights], strict=True))
    white = np.full((1, 32, 32, 3), 255.0, np.float32)          # the preset's own 1/255 scale
    np.testing.assert_allclose(np.asarray(net.get_layer("preprocess")(white))[0, 0, 0], 1.0)
    from captioning.data.features import cache_key

    key = cache_key(cfg, [])                    # the feature cache follows the folder's files
    vit.save_to_preset(str(tmp_path / "tiny_vit"))
    assert cache_key(cfg, []) != key


def test_unfetchable_preset_says_where_to_put_a_downloaded_copy(monkeypatch):
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")      # fails with or without a network
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    cfg = compose_config("debug=tiny", "backbone=vit", "backbone.weights=preset",
                         "backbone.image_size=224")
    with pytest.raises(ConfigError) as e:
        build_backbone(cfg)
    text = str(e.value)
    assert "Could not load the keras-hub preset backbone.preset=vit_base_patch16_224_imagenet" \
        in text
    assert "backbone.preset=/path/to/vit_base_patch16_224_imagenet" in text
    assert "local folder holding config.json and model.weights.h5" in text
    assert "backbone.weights=null" in text
    with pytest.raises(ConfigError, match="backbone.preset=/no/such/folder: no such folder"):
        build_backbone(compose_config("debug=tiny", "backbone=vit", "backbone.weights=preset",
                                      "backbone.preset=/no/such/folder"))


@pytest.mark.parametrize("overrides,message", [
    (("backbone=vit", "backbone.image_size=75"),
     "backbone.image_size must be a multiple of backbone.patch_size=16 for backbone=vit, e.g. 64"),
    (("backbone=clip", "backbone.image_size=32", "backbone.patch_size=8",
      "backbone.trainable=2"), "backbone.trainable must be true or false for backbone=clip"),
    (("backbone=clip", "backbone.weights=imagenet"), "backbone=clip has no imagenet file"),
    (("backbone.weights=preset",), "backbone.weights=preset is for the keras-hub encoders"),
    (("backbone=vit", "backbone.image_size=32", "backbone.patch_size=8",
      "backbone.hidden_dim=10", "backbone.num_heads=4"),
     "backbone.hidden_dim must be a multiple of backbone.num_heads=4"),
])
def test_hub_config_rules(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config("debug=tiny", *overrides))


@pytest.fixture(scope="module", params=[("vit", "false"), ("clip", "false"), ("vit", "true"),
                                        ("clip", "true")], ids=lambda p: f"{p[0]}-trainable_{p[1]}")
def hub_run(request, tmp_path_factory):
    name, trainable = request.param
    out = tmp_path_factory.mktemp(f"{name}_{trainable}")
    cfg = compose_config(*TINY_HUB, f"backbone={name}", f"backbone.trainable={trainable}",
                         "trainer.max_epochs=1", "logger=none", "callbacks.kangas.enabled=false",
                         f"paths.output_dir={out}")
    return name, trainable == "false", out, cfg, train(cfg)


def test_hub_backbone_trains_a_tiny_run_cached_when_frozen(hub_run, capfd):
    import os
    from pathlib import Path

    name, frozen, out, cfg, results = hub_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["val"]["loss"]) and "cider" in metrics["val"]
    assert results["val"]["loss"] == metrics["val"]["loss"]
    caches = list((Path(os.environ["CAPTIONING_CACHE"]) / "features").glob("*/index.json"))
    shapes = [json.loads(p.read_text())["shape"][1:] for p in caches]
    if frozen:
        assert [16, 16] in shapes                            # 16 patch tokens of width 16
    from captioning.data.features import bypass_reason

    assert (bypass_reason(cfg) is None) is frozen


def test_caption_py_attention_maps_and_export_of_a_hub_run(hub_run, tmp_path):
    name, frozen, out, cfg, _ = hub_run
    if not frozen:
        pytest.skip("one run per encoder is enough for caption.py and the export")
    from captioning.data.datamodule import synthetic_root
    from captioning.export import export

    jpeg = sorted((synthetic_root(cfg.dataset) / "Images").glob("*.jpg"))[0]
    res = subprocess.run([sys.executable, "caption.py", f"run_dir={out}", f"images=[{jpeg}]",
                          "attention=true", f"out={tmp_path / 'maps'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    caption = res.stdout.strip().split("\t")[1]
    assert (tmp_path / "maps" / f"{jpeg.stem}.png").stat().st_size > 1000
    path = export(out, tmp_path / "export")
    code = ("import tensorflow as tf, sys; m = tf.saved_model.load(sys.argv[1]); "
            "print('CAPTION', m.caption(tf.constant([open(sys.argv[2], 'rb').read()]))"
            ".numpy()[0].decode())")
    res = subprocess.run([sys.executable, "-c", code, str(path), str(jpeg)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"CAPTION {caption}" in res.stdout
