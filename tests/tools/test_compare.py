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
