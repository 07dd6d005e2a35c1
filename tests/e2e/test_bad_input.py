"""A whole run on a dataset with broken files (truncated JPEG/TIFF/WebP, an EXIF-rotated JPEG):
training with the feature cache, eval.py and caption.py all get through and name what they
skipped."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, compose_config
from tests.data.test_bad_input import BROKEN, _bomb_png, _write_dataset


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    """A debug=tiny run on the dataset with broken files, frozen backbone: the feature cache is
    built (and the final Kangas grid written)."""
    from captioning.data.features import bypass_reason
    from captioning.training import train

    root = _write_dataset(tmp_path_factory.mktemp("broken") / "ds")
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config("debug=tiny", "dataset=flickr8k", f"dataset.root={root}",
                         "dataset.val_fraction=0.25", "backbone.trainable=false",
                         "backbone.image_size=32", "trainer.max_epochs=1", "logger=none",
                         f"paths.output_dir={out}")
    assert bypass_reason(cfg) is None                  # the cache really is built
    return root, out, cfg, train(cfg)


def test_run_with_truncated_images_and_the_feature_cache_ends_with_metrics(cached_run):
    root, out, cfg, result = cached_run
    assert (out / "metrics.json").is_file() and np.isfinite(result["val"]["loss"])
    data = json.loads((out / "data.json").read_text())
    assert data["removed"]["unreadable images"] == 3
    assert any("cut.jpg" in n for n in data["notes"])
    cache = Path(os.path.expanduser(str(cfg.paths.cache_dir))) / "features"
    ids = [json.loads(p.read_text())["ids"] for p in cache.glob("*/index.json")]
    assert any("rot.jpg" in i and "g10.tif" in i and "cut.jpg" not in i for i in ids)
    assert (out / "predictions" / "final.datagrid").is_file()


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}_cli", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_py_scores_a_dataset_with_truncated_images(cached_run):
    _, out, _, _ = cached_run
    assert _script("eval").main([f"run_dir={out}", "split=val"]) == 0
    assert (out / "eval_val_greedy.json").is_file()


def test_caption_py_names_broken_images_and_captions_the_others(cached_run, tmp_path, capsys):
    root, out, _, _ = cached_run
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["g0.jpg", "g9.webp", "g10.tif", "rot.jpg", *BROKEN]:
        (folder / name).write_bytes((root / "Images" / name).read_bytes())
    _bomb_png(folder / "huge.png")
    assert _script("caption").main([f"run_dir={out}", f"images=[{folder}]"]) == 0
    io_ = capsys.readouterr()
    captioned = [line.split("\t")[0] for line in io_.out.strip().splitlines()]
    assert sorted(Path(p).name for p in captioned) == ["g0.jpg", "g10.tif", "g9.webp", "rot.jpg"]
    skipped = [line for line in io_.err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped 4 image(s)")
    assert all(name in skipped[0] for name in [*BROKEN, "huge.png"])
    assert "dataset.max_image_pixels" in skipped[0]
