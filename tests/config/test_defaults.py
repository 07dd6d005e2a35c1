"""Real datasets bring real defaults (a pretrained, frozen, cached backbone at its native size;
decoder width and caption settings per dataset), data paths set once (paths.data_dir,
conf/local/default.yaml), required values, offline ImageNet weights, disk checks."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from captioning import CaptioningError, ConfigError
from captioning.config_check import check_config
from captioning.data.features import bypass_reason
from tests.conftest import ROOT, compose_config

# dataset -> (decoder.dim, text.seq_len, text.vocab_size), as conf/dataset/<name>.yaml says why
REAL = {"flickr8k": (512, 30, 3000), "flickr30k": (512, 32, 8000), "coco": (512, 32, 10000),
        "coco_json": (512, 32, 10000), "karpathy": (512, 32, 10000)}


@pytest.mark.parametrize("dataset", [*REAL, "synthetic"])
@pytest.mark.parametrize("decoder", ["gru", "transformer"])
def test_each_dataset_brings_its_defaults(dataset, decoder):
    cfg = compose_config(f"decoder={decoder}", f"dataset={dataset}")
    b = cfg.backbone
    if dataset == "synthetic":                           # the demo keeps the groups' defaults
        assert (b.name, b.image_size, b.weights, b.trainable) == ("small_cnn", 64, None, True)
        assert (cfg.decoder.dim, cfg.text.seq_len, cfg.text.vocab_size) == (256, 25, 10000)
        return
    assert (b.name, b.image_size, b.weights, b.trainable) == (
        "efficientnetb0", 224, "imagenet", False)       # pretrained, frozen, native size
    assert (cfg.decoder.dim, cfg.text.seq_len, cfg.text.vocab_size) == REAL[dataset]
    assert bypass_reason(cfg) is None                    # so its features are cached
    if dataset != "karpathy":                            # karpathy's json/images stay required
        check_config(cfg)


def test_the_command_line_and_experiments_still_win():
    cfg = compose_config("dataset=coco", "backbone=small_cnn", "decoder.dim=128",
                         "text.seq_len=20")
    assert (cfg.backbone.name, cfg.backbone.image_size, cfg.decoder.dim, cfg.text.seq_len) == (
        "small_cnn", 64, 128, 20)
    b = compose_config("experiment=coco_gru").backbone   # recipe B: its own backbone and size
    assert (b.name, b.image_size) == ("inceptionresnetv2", 299)
    cfg = compose_config("experiment=flickr8k_transformer")
    assert (cfg.backbone.image_size, cfg.text.seq_len, cfg.text.vocab_size) == (299, 25, 10000)
    assert compose_config("experiment=ucm_scratch").backbone.name == "small_cnn"
    tiny = compose_config("dataset=coco", "debug=tiny")  # debug=tiny comes after the dataset
    assert (tiny.decoder.dim, tiny.backbone.weights) == (32, None)


def test_cfg_job_shows_the_resolved_choice():
    out = subprocess.run([sys.executable, "run.py", "decoder=gru", "dataset=coco", "--cfg", "job"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = OmegaConf.create(out.stdout)
    assert (job.backbone.name, job.backbone.image_size, job.decoder.name, job.decoder.dim,
            job.text.seq_len) == ("efficientnetb0", 224, "gru", 512, 32)


def test_data_dir_from_the_environment_gives_every_default_location(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONING_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    for dataset, sub in (("flickr8k", "flickr8k"), ("flickr30k", "flickr30k"),
                         ("coco_json", "coco")):
        assert compose_config(f"dataset={dataset}").dataset.root == f"{tmp_path}/{sub}"
    coco = compose_config("experiment=coco_gru")         # its `data_dir: ???` did nothing
    assert coco.dataset.data_dir == f"{tmp_path}/tensorflow_datasets"
    monkeypatch.setenv("TFDS_DATA_DIR", "/srv/tfds")     # TFDS's own variable is honoured
    assert compose_config("dataset=coco").dataset.data_dir == "/srv/tfds"
    moved = compose_config("dataset=flickr8k", "paths.data_dir=/mnt/d")
    assert moved.dataset.root == "/mnt/d/flickr8k"


def test_local_default_yaml_is_loaded_when_present_and_git_ignored(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf, symlinks=False)   # conf/experiment -> experiments/
    local = conf / "local" / "default.yaml"
    local.write_text("paths:\n  data_dir: /mnt/local-data\n", encoding="utf-8")

    def cfg(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    assert cfg("dataset=flickr8k").dataset.root == "/mnt/local-data/flickr8k"
    assert cfg("dataset=flickr8k", "paths.data_dir=/x").dataset.root == "/x/flickr8k"
    local.unlink()                                          # absent: fine, not an error
    assert cfg().paths.data_dir != "/mnt/local-data"
    ignored = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml"], cwd=ROOT)
    kept = subprocess.run(["git", "check-ignore", "-q", "conf/local/example.yaml"], cwd=ROOT)
    assert (ignored.returncode, kept.returncode) == (0, 1)


@pytest.mark.parametrize("overrides,message", [
    (["trainer.max_minutes=???"], r"trainer.max_minutes is required for this run but not set "
                                  r".*python run.py trainer.max_minutes=VALUE.*conf/local"),
    (["dataset=karpathy", "dataset.images=/data/ucm/images"],
     r"dataset.json is required for dataset=karpathy .*dataset=karpathy dataset.json=VALUE"),
])
def test_a_missing_required_value_is_one_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(*overrides))


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


def test_not_enough_disk_is_one_message_before_anything_is_written(tmp_path):
    """The COCO copy's estimate (images x mean JPEG size) is checked against the real free
    space before a byte is written: here TFDS (its own mock_data) reports more images than
    the disk can hold."""
    import io

    import tensorflow as tf
    import tensorflow_datasets as tfds
    from PIL import Image

    from captioning.data.readers.tfds_coco import read_coco_tfds
    from captioning.data.records import DataReport

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(buf, format="JPEG")
    repeat = shutil.disk_usage(tmp_path).free // len(buf.getvalue()) + 1

    def as_dataset(self, split, decoders=None, **kwargs):
        one = tf.data.Dataset.from_tensors({"image": buf.getvalue(),
                                            "image/filename": f"{split}.jpg", "image/id": 1,
                                            "captions": {"text": ["a caption"], "id": [0]}})
        return one.repeat(repeat)                       # cardinality known, nothing stored

    cfg = compose_config("dataset=coco", f"dataset.cache_dir={tmp_path}/cache").dataset
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        with pytest.raises(CaptioningError, match=r"Not enough disk space: the copy of TFDS "
                                                  r"coco_captions .*GB in .*only .* free there"
                                                  r".*dataset.cache_dir"):
            read_coco_tfds(cfg, DataReport())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.jpg"))


def test_free_space_check_names_size_free_folder_and_key(tmp_path):
    from captioning.io import ensure_free_space

    free = shutil.disk_usage(tmp_path).free
    ensure_free_space(tmp_path / "new" / "folder", 1000, "a small thing", "set x")
    with pytest.raises(CaptioningError, match=rf"the feature cache needs about .* in "
                                              rf"{tmp_path}/f, but only .* is free there\. "
                                              rf"Free some space, or point paths.cache_dir"):
        ensure_free_space(tmp_path / "f", free + 10**12, "the feature cache",
                          "point paths.cache_dir elsewhere")
