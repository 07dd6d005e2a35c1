"""Training end to end through ``train()``: the real config, tiny runs, the files a run
directory must hold, the time budget, the feature cache, the self-critical phase, and
deterministic runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from captioning import DatasetError
from captioning.training import train
from tests.conftest import compose_config

METRICS = {"loss", "accuracy", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}


def _check_run_dir(out, result):
    assert set(result["val"]) >= METRICS and math.isfinite(result["val"]["loss"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"] == pytest.approx(result["val"])
    rows = list(csv.DictReader(open(out / "predictions.csv", encoding="utf-8")))
    assert rows and {"image", "references", "prediction"} <= set(rows[0])
    assert all(" | " in r["references"] for r in rows)
    history = list(csv.DictReader(open(out / "history.csv")))
    assert [int(h["epoch"]) for h in history] == list(range(1, len(history) + 1))
    assert {"seconds", "loss", "val_loss", "accuracy", "val_accuracy"} <= set(history[0])
    for f in ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5",
              "checkpoints/vocab.json", "plots/loss.png", "plots/accuracy.png",
              "config.yaml", "data.json"):
        assert (out / f).is_file(), f
    return rows


def test_one_tiny_run_writes_a_complete_run_dir(tmp_path):
    # debug=tiny leaves METEOR out (its Java scorer takes ~11 s to start); this run keeps it.
    cfg = compose_config("debug=tiny", "evaluation.meteor=true", f"paths.output_dir={tmp_path}")
    result = train(cfg)
    rows = _check_run_dir(tmp_path, result)
    assert len(rows) == 4                                  # 10% of 40 images
    from captioning.evaluation.metrics import java_available

    # METEOR needs Java (.ci/run installs it); without it the score is left out, with a note.
    assert ("meteor" in result["val"]) == java_available()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert ("meteor" in metrics["test"]) == java_available()


def test_time_budget_stops_after_the_epoch_that_fills_it(tmp_path, capsys):
    cfg = compose_config("debug=tiny", "trainer.max_epochs=5", "trainer.max_minutes=0.0001",
                         "trainer.scst_epochs=2", f"paths.output_dir={tmp_path}")
    result = train(cfg)
    _check_run_dir(tmp_path, result)                       # still evaluated, every file written
    meta = json.loads((tmp_path / "metrics.json").read_text())["meta"]
    assert meta["epochs_run"] == 1 and meta["stopped_by"] == "time budget"
    # The budget is spent: the self-critical epochs are skipped, and the run says so.
    assert meta["self_critical_from_epoch"] is None
    assert "Self-critical training skipped" in capsys.readouterr().out


def test_validation_loss_is_computed_every_nth_epoch_only(tmp_path, recwarn):
    """trainer.check_val_every_n_epoch=2: val_loss on epochs 2 and 4 only, early stopping on it
    waits without Keras's missing-metric warning, the plots draw the epochs that have it."""
    cfg = compose_config("debug=tiny", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=2",
                         "callbacks.early_stopping.monitor=val_loss",
                         f"paths.output_dir={tmp_path}")
    train(cfg)
    history = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [bool(h["val_loss"]) for h in history] == [False, True, False, True]
    assert all(h["loss"] for h in history)
    assert not [w for w in recwarn if "Early stopping conditioned on metric" in str(w.message)]
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 0
    from captioning import ConfigError
    from captioning.config_check import check_config

    with pytest.raises(ConfigError, match="trainer.check_val_every_n_epoch"):
        check_config(compose_config("trainer.check_val_every_n_epoch=0"))
    with pytest.raises(ConfigError, match="would never be computed"):
        check_config(compose_config("trainer.max_epochs=4", "trainer.check_val_every_n_epoch=5"))


def test_a_tiny_gru_run_with_beam_search_writes_a_complete_run_dir(tmp_path):
    cfg = compose_config("debug=tiny", "decoder=gru", "trainer.max_epochs=1", "decode.method=beam",
                         f"paths.output_dir={tmp_path}")
    _check_run_dir(tmp_path, train(cfg))


@pytest.mark.slow
def test_recipe_a_preset_runs_tiny_on_a_flickr8k_layout(tmp_path, flickr8k_kaggle):
    cfg = compose_config("experiment=flickr8k_transformer", "debug=tiny",
                         f"dataset.root={flickr8k_kaggle}", "dataset.val_fraction=0.25",
                         "text.min_tokens=3", "text.filter=drop_caption",
                         "trainer.max_epochs=1", f"paths.output_dir={tmp_path}")
    # debug=tiny: no download
    assert cfg.backbone.name == "efficientnetb0" and cfg.backbone.weights is None
    _check_run_dir(tmp_path, train(cfg))


def test_missing_dataset_is_one_clear_error(tmp_path):
    cfg = compose_config("dataset=flickr8k", f"dataset.root={tmp_path}/absent",
                         f"paths.output_dir={tmp_path}/run")
    with pytest.raises(DatasetError, match="does not exist"):
        train(cfg)


@pytest.mark.slow
def test_recipe_b_preset_runs_tiny_on_mock_tfds(tmp_path):
    from tests.data.test_datasets import _mock_coco

    cfg = compose_config("experiment=coco_gru", "debug=tiny", f"dataset.data_dir={tmp_path}/tfds",
                         f"dataset.cache_dir={tmp_path}/cache", "trainer.max_epochs=1",
                         "logger=none", f"paths.output_dir={tmp_path}/run")
    assert (cfg.backbone.name, cfg.decoder.name, cfg.decode.method) == (
        "inceptionresnetv2", "gru", "top_k")
    with _mock_coco(per_split=4):
        result = train(cfg)
    assert {"val", "test"} <= set(result) and math.isfinite(result["test"]["cider"])


@pytest.mark.slow
def test_feature_cache_is_built_once_and_matches_the_image_path(tmp_path):
    """A frozen backbone: the second run reuses the cache, and the loss curve equals the one
    computed from images (features are stored in float16, hence the tolerance: Adam's first
    steps amplify the rounding, to 0.27% by epoch 2 measured; wrong features differ by far
    more)."""
    common = ["debug=tiny", "backbone=efficientnetb0", "backbone.image_size=32",
              "backbone.weights=null", "logger=none", "callbacks.kangas.enabled=false"]
    cache = tmp_path / "cache"
    runs = {}
    for name, extra in (("images", ["trainer.feature_cache=false"]), ("cached", []), ("again", [])):
        cfg = compose_config(*common, *extra, f"paths.cache_dir={cache}",
                             f"paths.output_dir={tmp_path}/{name}")
        train(cfg)
        runs[name] = list(csv.DictReader(open(tmp_path / name / "history.csv")))
    folders = [p for p in (cache / "features").iterdir() if p.is_dir()]
    assert len(folders) == 1                               # built once, reused by the third run
    for key in ("loss", "val_loss"):
        a = [float(r[key]) for r in runs["images"]]
        b = [float(r[key]) for r in runs["cached"]]
        assert b == pytest.approx(a, rel=5e-3), key
    assert [r["val_loss"] for r in runs["cached"]] == [r["val_loss"] for r in runs["again"]]


@pytest.mark.slow
def test_augmentation_bypasses_the_cache(tmp_path, capsys):
    cfg = compose_config("debug=tiny", "backbone=efficientnetb0", "backbone.image_size=32",
                         "backbone.weights=null", "augment.flip=horizontal", "logger=none",
                         "trainer.max_epochs=1", f"paths.cache_dir={tmp_path}/cache",
                         f"paths.output_dir={tmp_path}/run")
    train(cfg)
    assert "feature cache bypassed: augmentation is on" in capsys.readouterr().out
    assert not (tmp_path / "cache" / "features").exists()
    # Every augmentation the model applies to images counts (zoom and translate were missed once).
    from captioning.data.features import bypass_reason

    for extra in ("augment.zoom=0.1", "augment.translate=0.1", "augment.contrast=0.2",
                  "augment.rot90=true"):
        assert "augmentation is on" in bypass_reason(
            compose_config("backbone=efficientnetb0", extra)), extra
    assert bypass_reason(compose_config("backbone=efficientnetb0")) is None
    # Views of images and blends of images cannot come from cached (B, S, C) features.
    assert "mixup" in bypass_reason(compose_config("backbone=efficientnetb0", "augment.mixup=0.2"))
    for extra in ("decode.tta=flip", "callbacks.val_captions.tta=dihedral"):
        assert "test-time augmentation" in bypass_reason(
            compose_config("backbone=efficientnetb0", extra)), extra


@pytest.mark.parametrize("layout", ["flickr8k_original", "flickr30k_kaggle", "karpathy_json",
                                    "coco_raw"])
def test_each_layout_trains_one_tiny_epoch_on_its_own_images(layout, request, tmp_path):
    fixture = request.getfixturevalue(layout)
    data_args = {
        "flickr8k_original": ["dataset=flickr8k", f"dataset.root={fixture}",
                              "dataset.split=karpathy"],
        "flickr30k_kaggle": ["dataset=flickr30k", f"dataset.root={fixture}",
                             "dataset.val_fraction=0.25"],
        "karpathy_json": ["dataset=karpathy",
                          f"dataset.json={fixture[0]}" if isinstance(fixture, tuple) else "",
                          f"dataset.images={fixture[1]}" if isinstance(fixture, tuple) else ""],
        "coco_raw": ["dataset=coco_json", f"dataset.root={fixture}"],
    }[layout]
    cfg = compose_config("debug=tiny", *data_args, "backbone.image_size=32", "trainer.max_epochs=1",
                         "logger=none", "callbacks.kangas.enabled=false", "text.min_tokens=2",
                         f"paths.output_dir={tmp_path}")
    result = train(cfg)
    assert math.isfinite(result["val"]["loss"])
    # The layout's reader found the fixture's images and their captions.
    root = Path(fixture[1] if isinstance(fixture, tuple) else fixture)
    files = {p.name for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert rows and all(Path(r["image"]).name in files for r in rows)
    assert all(r["references"].strip() for r in rows)
    counts = json.loads((tmp_path / "data.json").read_text())
    assert counts["vocab_size"] > 4


def _optimizer_steps(run_dir: Path) -> int:
    """The optimizer's step counter (``iterations``, its first variable) in the resume state."""
    with np.load(run_dir / "checkpoints" / "last.state.npz") as state:
        return int(state["o0"])


@pytest.mark.slow
def test_self_critical_epochs_follow_and_resume_inside_the_phase(tmp_path):
    """trainer.scst_epochs: after the cross-entropy epochs, self-critical epochs log the mean
    sampled CIDEr-D as `reward`; a resume inside the phase stays in it; limit_train_batches
    cuts both phases' epochs."""
    overrides = ["debug=tiny", "trainer.max_epochs=1", "trainer.scst_samples=3",
                 "trainer.scst_reward.bleu_4=2", "trainer.limit_train_batches=2",
                 f"paths.output_dir={tmp_path}"]
    result = train(compose_config(*overrides, "trainer.scst_epochs=1"))
    _check_run_dir(tmp_path, result)
    assert _optimizer_steps(tmp_path) == 2 + 2               # two batches in each phase's epoch
    history = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert len(history) == 2 and history[0]["reward"] == ""
    assert math.isfinite(float(history[1]["reward"]))
    scst_lr = float(compose_config().trainer.scst_learning_rate)
    assert float(history[1]["learning_rate"]) == pytest.approx(scst_lr)   # the phase's own rate
    meta = json.loads((tmp_path / "metrics.json").read_text())["meta"]
    assert meta["self_critical_from_epoch"] == 2 and meta["stopped_by"] == "scst_epochs"
    # One more self-critical epoch through resume= (the run's state says where the phase began).
    (tmp_path / "metrics.json").unlink()
    train(compose_config(*overrides, "trainer.scst_epochs=2", "resume=true"))
    history = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [h["reward"] != "" for h in history] == [False, True, True]
    assert _optimizer_steps(tmp_path) == 2 + 2 + 2
    assert (json.loads((tmp_path / "metrics.json").read_text())["meta"]["self_critical_from_epoch"]
            == 2)


@pytest.mark.slow
def test_self_critical_epochs_can_follow_a_resumed_run_whose_cross_entropy_epochs_are_done(
        tmp_path):
    """A run stopped after its last cross-entropy epoch (or a finished one, given more epochs)
    resumes straight into the self-critical phase, from its best checkpoint."""
    overrides = ["debug=tiny", "trainer.max_epochs=1", f"paths.output_dir={tmp_path}"]
    train(compose_config(*overrides))
    (tmp_path / "metrics.json").unlink()                      # as if killed before the evaluation
    result = train(compose_config(*overrides, "trainer.scst_epochs=1", "trainer.scst_samples=2",
                                  "resume=true"))
    _check_run_dir(tmp_path, result)
    history = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [h["reward"] != "" for h in history] == [False, True]
    assert (json.loads((tmp_path / "metrics.json").read_text())["meta"]["self_critical_from_epoch"]
            == 2)


def test_self_critical_and_mixup_bad_settings_are_one_clear_error():
    from captioning import ConfigError
    from captioning.config_check import check_config

    with pytest.raises(ConfigError, match="trainer.scst_samples must be >= 2"):
        check_config(compose_config("trainer.scst_samples=1"))
    with pytest.raises(ConfigError, match="trainer.scst_epochs must be >= 0"):
        check_config(compose_config("trainer.scst_epochs=-1"))
    with pytest.raises(ConfigError, match="augment.mixup must be >= 0"):
        check_config(compose_config("augment.mixup=-0.2"))
    with pytest.raises(ConfigError, match="augment.mixup must be a number"):
        check_config(compose_config("augment.mixup=lots"))


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly_and_the_switch_goes_back_off(tmp_path):
    """trainer.deterministic=true: two runs of one config and seed give the same history and the
    same weights and optimizer state, bit for bit; a later run without it turns TensorFlow's op
    determinism off, and the same seed still gives the same first-epoch loss (to float noise)."""
    from tensorflow.python.framework import config as tf_config

    from captioning.training import train

    def run(name, deterministic):
        cfg = compose_config("debug=tiny", "logger=none", "seed=3",
                             "callbacks.kangas.enabled=false", "trainer.max_epochs=1",
                             f"trainer.deterministic={deterministic}",
                             f"paths.output_dir={tmp_path / name}")
        train(cfg)
        assert tf_config.is_op_determinism_enabled() is deterministic
        with open(tmp_path / name / "history.csv") as f:
            history = [{k: v for k, v in row.items() if k != "seconds"}
                       for row in csv.DictReader(f)]
        # The resume state holds every weight and optimizer variable (w*, o*) and the epoch's meta.
        # Its meta also counts the seconds spent (RunState.seconds), which no two runs share.
        with np.load(tmp_path / name / "checkpoints" / "last.state.npz") as state:
            arrays = {k: state[k] for k in state.files if k != "meta"}
            meta = {k: v for k, v in json.loads(str(state["meta"])).items() if k != "seconds"}
            return history, {**arrays, "meta": meta}

    try:
        (hist_a, state_a), (hist_b, state_b) = run("a", True), run("b", True)
        assert len(hist_a) == 1 and hist_a == hist_b
        assert any(k.startswith("w") for k in state_a) and state_a.keys() == state_b.keys()
        assert state_a.pop("meta") == state_b.pop("meta")
        assert all(np.array_equal(state_a[k], state_b[k]) for k in state_a)
        hist_c, _ = run("c", False)
        assert float(hist_c[0]["loss"]) == pytest.approx(float(hist_a[0]["loss"]), rel=1e-5)
    finally:
        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()
