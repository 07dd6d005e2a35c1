"""Real datasets bring real defaults (a pretrained, frozen, cached backbone at its native size;
decoder width and caption settings per dataset), data paths set once (paths.data_dir,
conf/local/default.yaml), and required values named when unset."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from captioning import ConfigError
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
    kept = subprocess.run(["git", "check-ignore", "-q", "conf/local/default.yaml.example"],
                          cwd=ROOT)
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
