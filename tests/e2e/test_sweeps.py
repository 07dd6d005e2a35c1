"""Sweeps: a real multirun with the joblib launcher, Comet archives tagged by sweep, a failing
job that does not stop the others, and the comparison table; launcher presets compose; an
Optuna study through submitit that resumes.

The one sweep (two decoders, one failing learning rate) is trained once for the module and
also checks what every job writes while validation captions are scored each epoch (caption
diversity in history.csv and Comet, plots/scores.png) and the comparison DataGrid, served and
read by a real browser."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four jobs (gru, transformer) x (learning rate 0.001, -1): two finish, two fail; then
    ``python -m captioning.compare``. Returns (sweep folder, sweep result, compare result)."""
    folder = tmp_path_factory.mktemp("sweep") / "sweep"
    res = subprocess.run(
        [sys.executable, "run.py", "-m", "hydra/launcher=parallel", "debug=tiny",
         "trainer.max_epochs=1", "logger=comet", "logger.online=false", "decoder=gru,transformer",
         "callbacks.val_captions.every_n_epochs=1",
         "trainer.learning_rate=0.001,-1", f"hydra.sweep.dir={folder}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = subprocess.run([sys.executable, "-m", "captioning.compare", str(folder)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    return folder, res, out


def _done(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("*/metrics.json"))


@pytest.mark.slow
def test_a_failing_job_leaves_the_other_jobs_and_the_comparison(sweep):
    folder, res, out = sweep
    # Hydra reports the failed job with a non-zero exit, after every job has run.
    assert res.returncode != 0
    done = [p.name for p in _done(folder)]
    assert len(done) == 2, res.stderr[-3000:]
    tags = []
    for job in done:
        (archive,) = (folder / job / "comet").glob("*.zip")
        with zipfile.ZipFile(archive) as z:
            exp = json.loads(z.read("experiment.json"))
        assert exp["project_name"] == "captioning"
        tags.append({t for t in exp["tags"] if t.startswith("sweep:")})
    assert tags[0] == tags[1] and len(tags[0]) == 1                     # one shared sweep tag

    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(folder / "comparison.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    # best first: CIDEr as shown (3 decimals), ties by val loss (compare.TIE_RULE)
    ranked = [(-round(float(r["cider"]), 3), float(r["loss"])) for r in rows[:2]]
    assert ranked == sorted(ranked)
    assert "learning_rate must be > 0" in rows[2]["error"]
    assert "varied" not in rows[0] and not (folder / "comparison_seeds.csv").exists()


@pytest.mark.slow
def test_comparison_grid_has_each_jobs_caption_cider_best_and_spread(sweep):
    import kangas

    folder, _, out = sweep
    assert "comparison.datagrid" in out.stdout, out.stdout[-2000:]
    dg = kangas.read_datagrid(str(folder / "comparison.datagrid"))
    columns = dg.get_columns()
    captions = [c for c in columns if c.endswith(": caption")]
    assert columns[:3] == ["image", "id", "references"] and columns[-2:] == ["best", "spread"]
    assert sorted(c.split()[1] for c in captions) == ["decoder=gru", "decoder=transformer"]
    assert all("learning_rate=0.001" in c and len(c) <= 50 for c in captions)
    rows = list(dg.to_dicts())
    preds = {}
    for job in _done(folder):
        with open(job / "predictions.csv", newline="") as f:
            preds[job.name] = {r["image"]: r for r in csv.DictReader(f)}
    assert [r["id"] for r in rows] == list(next(iter(preds.values())))        # every val image
    for r in rows:
        ciders = {}
        for c in captions:
            job = c.split()[0]
            assert r[c] == preds[job][r["id"]]["prediction"]
            ciders[c[: -len(": caption")]] = r[c.replace(": caption", ": cider")]
            assert ciders[c[: -len(": caption")]] == pytest.approx(
                float(preds[job][r["id"]]["cider"]))
        assert r["spread"] == pytest.approx(max(ciders.values()) - min(ciders.values()), abs=1e-4)
        top = max(ciders.values())
        winners = [label for label, c in ciders.items() if c == top]
        if top <= 0 or len(winners) == len(ciders):          # no winner: all tied, or all 0
            assert r["best"] is None
        else:
            assert r["best"] == " = ".join(winners)
        assert r["image"].to_pil().size[0] > 16                  # the image itself, not grey


@pytest.mark.slow
def test_jobs_log_caption_diversity_and_plot_score_curves(sweep):
    from captioning.data.text import Vocabulary
    from captioning.runs.files import read_history
    from captioning.training.callbacks import caption_diversity

    folder, _, _ = sweep
    for job in _done(folder):
        (row,) = read_history(job)                                     # one epoch
        with open(job / "predictions.csv", newline="") as f:
            captions = [r["prediction"] for r in csv.DictReader(f)]
        vocab = Vocabulary.load(job / "checkpoints" / "vocab.json")
        # one epoch, so the final captions come from the same weights and decoding
        assert (row["val_distinct"], row["val_vocab_used"]) == pytest.approx(
            caption_diversity(captions, vocab))
        assert (job / "plots" / "scores.png").stat().st_size > 5000
        (archive,) = (job / "comet").glob("*.zip")
        with zipfile.ZipFile(archive) as z:
            messages = [json.loads(x) for x in z.read("messages.json").decode().splitlines()]
        metrics = {m["payload"]["metric"]["metricName"] for m in messages
                   if m["type"] == "metric_msg"}
        assert {"val_distinct", "val_vocab_used"} <= metrics
        figures = {m["payload"]["additional_params"].get("figName") for m in messages
                   if m["type"] == "file_upload"}
        assert "plots/scores" in figures


@pytest.mark.slow
def test_comparison_grid_in_a_browser_shows_both_jobs_captions(sweep, tmp_path):
    import kangas

    from tests.tools.test_review import chromium, chromium_missing, serving

    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    folder, _, _ = sweep
    grid = folder / "comparison.datagrid"
    first = next(iter(kangas.read_datagrid(str(grid)).to_dicts()))
    captions = [c for c in first if c.endswith(": caption")]
    with serving(folder, grid, tmp_path / "kangas.log") as (url, _):
        dom = chromium(url, tmp_path / "chrome", screenshot=tmp_path / "comparison.png")
    for column in captions:
        assert column in dom, column                         # each job's caption column
    assert first["id"] in dom and all(first[c] in dom for c in captions)
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_final_grid_in_a_browser_shows_an_image_with_its_attention_layers(sweep, tmp_path):
    """The final grid's image cells carry the decoder's attention maps as mask layers
    (kangas add_mask_metric, captioning/tracking/kangas_grids.py); the served page shows the
    image cell and the backend hands the page its layers."""
    import sqlite3
    import urllib.parse
    import urllib.request

    import kangas

    from tests.tools.test_review import chromium, chromium_missing, serving

    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    job = _done(sweep[0])[0]
    grid = job / "predictions" / "final.datagrid"
    first = next(iter(kangas.read_datagrid(str(grid)).to_dicts()))
    with sqlite3.connect(str(grid)) as db:             # the layers as stored with the asset
        (meta,) = db.execute("SELECT asset_metadata FROM assets WHERE asset_id = ?",
                             (first["image"].asset_id,)).fetchone()
    expected = [a["name"] for a in json.loads(meta).get("annotations", [])]
    assert expected, "the final grid's images have no layers (attention maps)"
    with serving(job, grid, tmp_path / "kangas.log") as (url, backend):
        dom = chromium(url, tmp_path / "chrome", screenshot=tmp_path / "final.png")
        query = urllib.parse.urlencode({"dgid": str(grid), "assetId": first["image"].asset_id})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{backend}datagrid/asset-metadata?{query}", timeout=60) as r:
            served = json.loads(r.read())
    assert first["id"] in dom and "IMAGE" in dom.upper()
    assert [a["name"] for a in served.get("annotations", [])] == expected


@pytest.mark.parametrize("override", ["hydra/launcher=slurm", "hydra/launcher=parallel",
                                      "hparams_search=optuna"])
def test_launcher_and_search_presets_compose(override):
    res = subprocess.run([sys.executable, "run.py", override, "--cfg", "hydra"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    expected = {"hydra/launcher=slurm": "SlurmLauncher",
                "hydra/launcher=parallel": "JoblibLauncher",
                "hparams_search=optuna": "OptunaSweeper"}[override]
    assert expected in res.stdout
