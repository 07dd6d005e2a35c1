"""End to end: the real config, a tiny run, the files a run directory must hold."""

from __future__ import annotations

import csv
import json
import math

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
    for f in ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "checkpoints/vocab.json",
              "plots/loss.png", "plots/accuracy.png", "config.yaml", "data.json"):
        assert (out / f).is_file(), f
    return rows


def test_one_tiny_run_writes_a_complete_run_dir(tmp_path):
    cfg = compose_config("debug=tiny", f"paths.output_dir={tmp_path}")
    result = train(cfg)
    rows = _check_run_dir(tmp_path, result)
    assert len(rows) == 4                                  # 10% of 40 images
    assert "meteor" in result["val"]                        # Java is on the CI machine


def test_tiny_gru_run(tmp_path):
    cfg = compose_config("debug=tiny", "decoder=gru", "trainer.max_epochs=1", "decode.method=beam",
                         f"paths.output_dir={tmp_path}")
    _check_run_dir(tmp_path, train(cfg))


def test_recipe_a_preset_runs_tiny_on_a_flickr8k_layout(tmp_path, flickr8k_kaggle):
    cfg = compose_config("experiment=flickr8k_transformer", "debug=tiny", f"dataset.root={flickr8k_kaggle}",
                         "dataset.val_fraction=0.25", "text.min_tokens=3", "text.filter=drop_caption",
                         "trainer.max_epochs=1", f"paths.output_dir={tmp_path}")
    assert cfg.backbone.name == "efficientnetb0" and cfg.backbone.weights is None   # debug=tiny: no download
    _check_run_dir(tmp_path, train(cfg))


def test_missing_dataset_is_one_clear_error(tmp_path):
    cfg = compose_config("dataset=flickr8k", f"dataset.root={tmp_path}/absent", f"paths.output_dir={tmp_path}/run")
    with pytest.raises(DatasetError, match="does not exist"):
        train(cfg)
