"""Sweeps: a real multirun with the joblib launcher, Comet archives tagged by sweep, a failing
job that does not stop the others, and the comparison table; launcher presets compose."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_parallel_sweep_with_a_failing_job_then_compare(tmp_path):
    sweep = tmp_path / "sweep"
    res = subprocess.run(
        [sys.executable, "run.py", "-m", "hydra/launcher=parallel", "debug=tiny",
         "trainer.max_epochs=1", "logger=comet", "logger.online=false", "decoder=gru,transformer",
         "trainer.learning_rate=0.001,-1", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    # Hydra reports the failed job with a non-zero exit, after every job has run.
    assert res.returncode != 0
    done = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(done) == 2, res.stderr[-3000:]
    tags = []
    for job in done:
        (archive,) = (sweep / job / "comet").glob("*.zip")
        with zipfile.ZipFile(archive) as z:
            exp = json.loads(z.read("experiment.json"))
        assert exp["project_name"] == "captioning"
        tags.append({t for t in exp["tags"] if t.startswith("sweep:")})
    assert tags[0] == tags[1] and len(tags[0]) == 1                     # one shared sweep tag

    out = subprocess.run([sys.executable, "-m", "captioning.compare", str(sweep)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    ciders = [float(r["cider"]) for r in rows[:2]]
    assert ciders == sorted(ciders, reverse=True)
    assert "learning_rate must be > 0" in rows[2]["error"]


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
