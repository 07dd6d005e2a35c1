"""Config composition: every group option and experiment preset composes to what its file
sets, recipes' presets carry their settings, unknown options and keys are refused, nonsense
values fail early, and --cfg/--help never import TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from captioning import ConfigError
from captioning.config_check import check_config
from tests.conftest import ROOT, compose_config

GROUPS = {g: sorted(p.stem for p in (ROOT / "conf" / g).glob("*.yaml"))
          for g in ("dataset", "backbone", "decoder", "trainer", "callbacks", "logger", "paths",
                    "debug")}
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))


def _is_global(path) -> bool:
    return path.read_text().startswith("# @package _global_")


def _differences(cfg, path, prefix: str) -> list[str]:
    """Where the composed ``cfg`` differs from what the file at ``path`` sets: each leaf value
    it sets (under ``prefix``), unresolved, and each group its defaults list overrides
    (``override /backbone: efficientnetb0`` -> ``backbone.name``)."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    composed = OmegaConf.to_container(cfg, resolve=False)
    wrong = []
    for entry in raw.pop("defaults", None) or []:
        for target, choice in (entry.items() if isinstance(entry, dict) else []):
            group = target.removeprefix("override ").strip("/")
            if group in ("dataset", "backbone", "decoder") and composed[group]["name"] != choice:
                wrong.append(f"{group}.name: {composed[group]['name']!r}, the file says {choice!r}")

    def walk(tree, key):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from walk(v, f"{key}{k}.")
            else:
                yield f"{key}{k}", v

    for key, value in walk(raw, prefix):
        got = composed
        for part in key.split("."):
            got = got.get(part, "<absent>") if isinstance(got, dict) else "<absent>"
        if got != value:
            wrong.append(f"{key}: {got!r}, the file says {value!r}")
    return wrong


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_to_what_its_file_sets(group, option):
    cfg = compose_config(f"{group}={option}")
    assert group in cfg or group == "debug"
    if group in ("dataset", "backbone", "decoder"):
        assert cfg[group].name == option
    path = ROOT / "conf" / group / f"{option}.yaml"
    assert _differences(cfg, path, "" if _is_global(path) else f"{group}.") == []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes_to_what_its_file_sets(name):
    cfg = compose_config(f"experiment={name}")
    OmegaConf.to_container(cfg.trainer, resolve=True)   # everything it sets resolves
    path = ROOT / "experiments" / f"{name}.yaml"
    assert _is_global(path)                             # a preset sets keys of every group
    assert _differences(cfg, path, "") == []


def test_recipe_a_preset_sets_its_hyperparameters_and_data_location():
    cfg = compose_config("experiment=flickr8k_transformer")
    assert (cfg.dataset.name, cfg.backbone.name, cfg.decoder.name) == (
        "flickr8k", "efficientnetb0", "transformer")
    assert (cfg.text.vocab_size, cfg.text.seq_len, cfg.trainer.batch_size) == (10000, 25, 64)
    assert (cfg.decoder.dim, cfg.decoder.num_heads,
            cfg.callbacks.early_stopping.patience) == (512, 2, 3)
    # the data location: <paths.data_dir>/flickr8k unless dataset.root= says otherwise
    root = OmegaConf.to_container(cfg.dataset, resolve=False)["root"]
    assert root == "${paths.data_dir}/flickr8k"
    assert cfg.backbone.image_size == 299       # recipe A keeps 299 (efficientnetb0's own is 224)


def test_an_unknown_group_option_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        compose_config("backbone=resnet9000")
    assert "small_cnn" in str(e.value) and "efficientnetb0" in str(e.value)


def test_a_misspelt_key_is_refused_naming_it():
    with pytest.raises(ConfigError, match="bacth_size"):
        compose_config("trainer.bacth_size=3")


@pytest.mark.parametrize("override,message", [
    ("trainer.batch_size=abc", "trainer.batch_size must be an integer"),
    ("trainer.learning_rate=-1", "trainer.learning_rate must be > 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1"),
    ("text.seq_len=2", "text.seq_len must be >= 3"),
    ("trainer.lr_schedule=linear", "trainer.lr_schedule must be constant or cosine"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction"),
    ("trainer.word_loss=-1.0", "trainer.word_loss must be >= 0"),
    ("trainer.ema=1.0", "trainer.ema must be in \\[0, 1\\)"),
    ("trainer.backbone_lr_multiplier=0", "trainer.backbone_lr_multiplier must be > 0"),
    ("trainer.sample_captions=0", "trainer.sample_captions must be null"),
    ("callbacks.early_stopping.monitor=val_cider", "set callbacks.val_captions.every_n_epochs=1"),
    ("trainer.max_minutes=0", "trainer.max_minutes must be a number of minutes > 0"),
    ("callbacks.val_captions.method=gready", "callbacks.val_captions.method must be null"),
    ("trainer.deterministic=maybe", "trainer.deterministic must be true or false"),
    ("decode.tta=rotate", "decode.tta must be none, flip .* or dihedral"),
    ("callbacks.val_captions.tta=8", "callbacks.val_captions.tta must be none, flip .* or null"),
    ("+trainer.scst_reward.spice=1", "trainer.scst_reward has unknown score\\(s\\) \\['spice'\\]"),
    ("trainer.scst_reward.bleu_4=-1", "trainer.scst_reward weights must be numbers >= 0"),
    ("trainer.scst_reward={cider:0,bleu_4:0}", "at least one > 0"),
    ("trainer.scst_reward.cider=lots", "trainer.scst_reward weights must be numbers"),
])
def test_nonsense_hyperparameters_fail_early(override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(override))


def test_bfloat16_on_a_cpu_runs_only_where_the_cpu_runs_it(tmp_path):
    """TensorFlow's CPU bfloat16 kernels die with SIGILL on some CPUs: a child process tries
    them first. Where they run, mixed_bfloat16 trains (float32 variables, bfloat16 products) and
    auto picks it; where they do not, mixed_bfloat16 is refused with the reason and auto trains
    in float32. float16 is refused on every CPU."""
    import keras
    import tensorflow as tf

    from captioning.training import train
    from captioning.training.runtime import _precision, cpu_bfloat16

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: mixed precision is allowed")
    why = cpu_bfloat16()
    try:
        _precision("auto")
        assert keras.mixed_precision.dtype_policy().name == ("float32" if why else "mixed_bfloat16")
        with pytest.raises(ConfigError, match="float16 is for GPUs only"):
            _precision("mixed_float16")
    finally:
        _precision("float32")
    cfg = compose_config("debug=tiny", "logger=none", "trainer.precision=mixed_bfloat16",
                         f"paths.output_dir={tmp_path}")
    try:
        if why:
            with pytest.raises(ConfigError, match="needs a GPU here: .*precision=float32"):
                train(cfg)
        else:
            result = train(cfg)
            assert "bleu_4" in result["val"] and result["meta"]["precision"] == "mixed_bfloat16"
            from captioning.models.backbones import build_backbone

            frozen = build_backbone(compose_config("debug=tiny", "backbone=efficientnetb0",
                                                   "backbone.weights=null",
                                                   "backbone.image_size=32"))
            # a fixed feature extractor: float32 under any policy (the feature cache is shared)
            assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"
            assert {x.dtype_policy.name for x in frozen.layers} == {"float32"}
    finally:
        _precision("float32")              # the policy is process-wide: other tests build models


def test_cfg_and_help_do_not_import_tensorflow():
    code = ("import sys, runpy; sys.argv = ['run.py', '--cfg', 'job']; "
            "runpy.run_path('run.py', run_name='__main__'); "
            "print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'TF-NOT-IMPORTED')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "TF-NOT-IMPORTED" in out.stdout and "decoder:" in out.stdout
    help_out = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
    assert (help_out.returncode == 0
            and "python run.py -m decoder=gru,transformer" in help_out.stdout)
    assert "dataset: coco, coco_json, flickr30k, flickr8k, karpathy, synthetic" in help_out.stdout


def test_presets_carry_the_recipes_text_and_decoding():
    a = compose_config("experiment=flickr8k_transformer", "dataset.root=/data/flickr8k")
    assert (a.text.punctuation, a.text.length_counts, a.text.filter, a.text.min_tokens,
            a.text.seq_len, a.text.min_count) == ("delete", "raw", "drop_image", 5, 25, 1)
    b = compose_config("experiment=coco_gru")
    assert (b.dataset.captions_per_image, b.dataset.restval) == (1, False)
    assert (b.decode.method, b.decode.k, b.decode.num_captions) == ("top_k", 10, 5)
    assert b.text.punctuation == "delete" and b.text.seq_len == 64
    for cfg in (a, b):
        check_config(cfg)


def test_several_captions_per_image_need_a_sampling_method():
    with pytest.raises(ConfigError, match="decode.num_captions=3 .*decode.method=top_k or top_p"):
        check_config(compose_config("decode.num_captions=3", "decode.method=beam"))
    check_config(compose_config("decode.num_captions=3", "decode.method=top_p"))
