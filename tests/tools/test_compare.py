"""captioning.compare without training: seed groups get mean, std and n."""

from __future__ import annotations

import csv
import json
import statistics

import pytest


def test_seed_groups_show_mean_std_and_n(tmp_path):
    """Jobs that differ only in seed: mean ± sample std and n per metric, from the jobs' own
    metrics.json; the per-job table and comparison.csv stay as they were."""
    import random

    from captioning.compare import COLUMNS, main

    rng = random.Random(0)
    runs = [("decoder=gru seed=1", 0), ("decoder=gru seed=2", 1), ("decoder=gru seed=3", 2),
            ("decoder=transformer seed=1", 3)]
    written = {}
    for overrides, job in runs:
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(
            "".join(f"- {o}\n" for o in overrides.split()))
        written[job] = {c: rng.uniform(0.1, 0.9) for c in COLUMNS}
        held = {"bleu_4": rng.uniform(0.1, 0.9), "cider": rng.uniform(0.1, 0.9)}
        written[job].update({f"holdout_{k}": v for k, v in held.items()})
        (tmp_path / str(job) / "metrics.json").write_text(
            json.dumps({"val": written[job], "holdout": held}))
    assert main([str(tmp_path), "--no-grid"]) == 0
    groups = {g["overrides"]: g for g in csv.DictReader(open(tmp_path / "comparison_seeds.csv"))}
    gru = groups["decoder=gru"]
    assert gru["n"] == "3" and gru["seeds"] == "1 2 3" and groups["decoder=transformer"]["n"] == "1"
    for c in (*COLUMNS, "holdout_bleu_4", "holdout_cider"):          # holdout: dataset.holdout
        values = [written[j][c] for j in (0, 1, 2)]
        assert float(gru[c]) == pytest.approx(statistics.fmean(values))
        assert float(gru[f"{c}_std"]) == pytest.approx(statistics.stdev(values))
    assert groups["decoder=transformer"]["cider_std"] == ""
    assert len(list(csv.DictReader(open(tmp_path / "comparison.csv")))) == 4


def test_ties_follow_the_stated_rule_and_a_failed_job_shows_its_error_from_the_start(
        tmp_path, capsys):
    """Two jobs tied at CIDEr 0.000 as shown are ranked by val loss (the stated rule), not by
    digits the table hides; a failed job shows the start of its error line; an image where
    every job scored 0 (or all tied) has no best job in the grid's rows."""
    from captioning.compare import TIE_RULE, best_jobs, collect, main, rank_key

    jobs = {0: {"cider": 0.00028, "loss": 3.9}, 1: {"cider": 0.0, "loss": 3.1}}
    for job, val in jobs.items():
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"val": val}))
    failed = tmp_path / "2"
    (failed / ".hydra").mkdir(parents=True)
    message = ("error: Dataset folder /data/flickr8k does not exist. Download flickr8k and set "
               "dataset.root to the folder that contains captions.txt and Images/ (Kaggle) or "
               "Flickr8k.token.txt (original), or put it at /data/flickr8k (tensorflow_datasets")
    (failed / "run.log").write_text(f"[2026-12-07 03:00:00,000][captioning][ERROR] - {message}\n"
                                    "[2026-12-07 03:00:01,000][HYDRA] job done\n")
    rows = sorted(collect(tmp_path), key=rank_key("cider"))
    assert [r["job"] for r in rows] == ["1", "0", "2"]          # loss 3.1 before 3.9
    assert rows[2]["error"].startswith("error: Dataset folder /data/flickr8k does not exist")
    assert len(rows[2]["error"]) <= 160
    assert main([str(tmp_path), "--no-grid"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ties (equal to the 3 decimals shown)" in out and TIE_RULE.startswith("ties")
    assert "failed: error: Dataset folder" in out
    assert best_jobs({"a": 0.0, "b": 0.0}) is None
    assert best_jobs({"a": 0.5, "b": 0.5}) is None
    assert best_jobs({"a": 0.5, "b": 0.5, "c": 0.1}) == "a = b"
    assert best_jobs({"a": 0.2, "b": 0.7}) == "b"


def test_a_job_that_kept_the_default_seed_counts_with_its_seed(tmp_path):
    """Seeds come from each job's composed config: a job run without ``seed=`` is listed with
    the seed it ran with (before, a group of 42 (default) and 43 read "43" with n = 2)."""
    from captioning.compare import collect, job_seed, seed_groups

    for job, overrides, seed in ((0, [], 42), (1, ["seed=43"], 43)):
        hydra = tmp_path / str(job) / ".hydra"
        hydra.mkdir(parents=True)
        hydra.joinpath("overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        hydra.joinpath("config.yaml").write_text(f"seed: {seed}\ndecoder: {{name: gru}}\n")
        (tmp_path / str(job) / "metrics.json").write_text(json.dumps({"val": {"cider": 1.0}}))
    (group,) = seed_groups(collect(tmp_path))
    assert group["n"] == 2 and group["seeds"] == "42 43" and group["overrides"] == "(defaults)"
    bare = tmp_path / "bare"
    bare.mkdir()
    assert job_seed(bare, ["seed=7"]) == "7" and job_seed(bare, []) is None
