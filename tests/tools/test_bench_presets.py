"""``python -m captioning.bench --presets``: its rows are the presets and defaults a user runs,
each a valid run.py command, and a row reads a real run's epochs and feature-cache line."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from captioning.bench_presets import COMMON, REAL, dataset_sizes, presets, run_epochs
from captioning.config_check import check_config
from captioning.data.features import bypass_reason, cached_views
from captioning.data.readers import READERS
from tests.conftest import compose_config


def test_the_rows_are_every_preset_and_default_and_each_is_a_valid_run():
    rows = presets(256)
    assert set(REAL) == set(READERS) - {"synthetic"}                 # every real dataset
    assert set(rows) == {"default (synthetic)", *(f"dataset={n}" for n in REAL),
                         "flickr8k_transformer", "coco_gru", "ucm_scratch"}
    for name, overrides in rows.items():
        cfg = compose_config(*overrides, *COMMON, "trainer.max_epochs=3")
        check_config(cfg)
        assert int(cfg.dataset.max_images) == 256, name
    coco = compose_config("dataset=coco")
    assert f"backbone.image_size={coco.backbone.image_size}" in dataset_sizes("coco")
    # the augmented preset trains on cached views; the from-scratch one cannot cache
    aug = compose_config(*rows["flickr8k_transformer"], *COMMON)
    assert bypass_reason(aug) is None and cached_views(aug) == 5
    assert "trained" in bypass_reason(compose_config(*rows["ucm_scratch"], *COMMON))


@pytest.mark.slow
def test_a_row_reads_the_runs_epochs_and_what_it_said_about_the_cache():
    before = set(Path(tempfile.gettempdir()).glob("bench-preset-*"))
    out = run_epochs(["debug=tiny", "backbone=efficientnetb0", "backbone.image_size=32",
                      "augment.flip=horizontal", "augment.cached_views=2"], epochs=2)
    assert len(out["epochs"]) == 2 and out["epoch"] == out["epochs"][1]
    assert out["cache"] == "cached views" and out["wall"] > sum(out["epochs"])
    assert set(Path(tempfile.gettempdir()).glob("bench-preset-*")) == before   # removed once read
