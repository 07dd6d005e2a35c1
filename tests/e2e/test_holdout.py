"""A tiny run scores the held-out split like val, and eval.py repeats it."""

from __future__ import annotations

import csv
import json

import pytest

from captioning import CaptioningError
from tests.conftest import compose_config


@pytest.mark.slow
def test_a_tiny_run_scores_the_holdout_like_val_and_eval_py_repeats_it(tmp_path, capsys):
    """Also the final fit: dataset.train_on_val=true trains on val's images too, and
    callbacks.checkpoints.select=last scores the last epoch (eval.py's default follows). And
    the untouched block (dataset.untouched_list): set aside, never scored by the run itself,
    scored by eval.py split=untouched."""
    from captioning.data.datamodule import load_records
    from captioning.training import train
    from eval import main as eval_main

    plain = compose_config("debug=[tiny,fdr]", "backbone.image_size=32").dataset
    train_ids = sorted(r.id for r in load_records(plain, 42, progress=False)[0]["train"])
    untouched = tmp_path / "untouched.txt"
    untouched.write_text("\n".join(train_ids[:3]) + "\n")
    cfg = compose_config(f"dataset.untouched_list={untouched}", "debug=[tiny,fdr]", "logger=none",
                         "backbone.image_size=32", "dataset.holdout=4", "evaluation.show=0",
                         "callbacks.kangas.enabled=false",
                         "dataset.train_on_val=true", "callbacks.checkpoints.select=last",
                         f"paths.output_dir={tmp_path}")
    result = train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["holdout"]) == set(metrics["val"]) >= {"loss", "bleu_4", "cider"}
    assert metrics["holdout"] == pytest.approx(result["holdout"])
    assert json.loads((tmp_path / "data.json").read_text())["counts"] == {
        "train": 29, "val": 4, "test": 4, "holdout": 4,   # debug=tiny: 40 images; val trained on
        "untouched": 3}
    assert "untouched" not in metrics and not (tmp_path / "predictions_untouched.csv").exists()
    meta = metrics["meta"]
    assert (meta["best_epoch"], meta["selected_by"]) == (meta["epochs_run"], "last epoch")
    assert any("train_on_val=true" in n for n in meta["notes"])
    assert not any("select=best" in n for n in meta["notes"])      # select=last: no pick on val
    rows = {s: [r["image"] for r in csv.DictReader(open(tmp_path / f, encoding="utf-8"))]
            for s, f in (("val", "predictions.csv"), ("test", "predictions_test.csv"),
                         ("holdout", "predictions_holdout.csv"))}
    assert len(rows["holdout"]) == 4 and not set(rows["holdout"]) & set(rows["val"] + rows["test"])
    assert eval_main([f"run_dir={tmp_path}", "split=holdout"]) == 0
    again = json.loads((tmp_path / "eval_holdout_greedy_last.json").read_text())
    assert (again["meta"]["images"], again["meta"]["weights"]) == (4, "last")
    assert again["holdout"] == pytest.approx(metrics["holdout"], rel=1e-3)   # same images
    with open(tmp_path / "predictions_holdout_greedy_last.csv", encoding="utf-8") as f:
        assert [r["image"] for r in csv.DictReader(f)] == rows["holdout"]
    with pytest.raises(CaptioningError, match=r"dataset.holdout cannot change after training"):
        eval_main([f"run_dir={tmp_path}", "split=holdout", "dataset.holdout=3"])
    capsys.readouterr()
    assert eval_main([f"run_dir={tmp_path}", "split=untouched"]) == 0
    scored = json.loads((tmp_path / "eval_untouched_greedy_last.json").read_text())
    assert scored["meta"]["images"] == 3 and {"bleu_4", "cider"} <= set(scored["untouched"])
    shown = capsys.readouterr().out           # the scores table has the untouched column
    assert "untouched" in shown and f"{scored['untouched']['cider']:.4f}" in shown
    with open(tmp_path / "predictions_untouched_greedy_last.csv", encoding="utf-8") as f:
        assert sorted(r["image"] for r in csv.DictReader(f)) == train_ids[:3]
    with pytest.raises(CaptioningError, match=r"dataset.untouched_list cannot change after"):
        eval_main([f"run_dir={tmp_path}", "split=untouched", "dataset.untouched_list=null"])
