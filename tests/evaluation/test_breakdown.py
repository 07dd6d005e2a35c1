"""Per-class scores, seed means and repeated captions from predictions files."""

from __future__ import annotations

import csv
import json

import pytest

from captioning import CaptioningError
from captioning.data.classes import UCM_CLASSES
from captioning.evaluation.breakdown import class_of, main, predictions_file

REFS = {
    "5.jpg": ["there is a piece of farmland", "a piece of green farmland"],
    "6.jpg": ["there is a piece of farmland", "many pieces of farmland"],
    "105.jpg": ["two airplanes are parked at the airport", "an airplane is parked"],
    "106.jpg": ["an airplane is on the runway", "two airplanes are parked near a building"],
}


def _write(path, predictions):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "references", "prediction", "bleu_4", "cider"])
        for image, refs in REFS.items():
            w.writerow([image, " | ".join(refs), predictions[image], "0", "0"])
    return path


def test_ucm_names_map_to_their_scene_class_and_others_to_one_row():
    assert len(UCM_CLASSES) == 21
    name = class_of(["1.jpg", "100.jpg", "101.jpg", "2100.jpg"], "auto")
    assert [name(i) for i in ("1.jpg", "100.jpg", "101.jpg", "2100.jpg")] == [
        "agricultural", "agricultural", "airplane", "tenniscourt"]
    assert class_of(["a.jpg"], "auto")("a.jpg") == "all"
    with pytest.raises(CaptioningError, match="--classes ucm needs UCM-Captions' image names"):
        class_of(["a.jpg"], "ucm")


def test_seeds_give_a_mean_with_spread_a_class_table_and_the_repeated_captions(tmp_path, capsys):
    good = {"5.jpg": "there is a piece of farmland", "6.jpg": "there is a piece of farmland",
            "105.jpg": "two airplanes are parked at the airport",
            "106.jpg": "two airplanes are parked at the airport"}
    bad = dict(good, **{"105.jpg": "there is a piece of farmland"})
    run = tmp_path / "run2"
    run.mkdir()
    _write(run / "predictions_untouched_greedy.csv", bad)
    out = tmp_path / "summary.json"
    assert main([str(_write(tmp_path / "seed1.csv", good)), str(run), "--split", "untouched",
                 "--top", "2", "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert set(s["classes"]) == {"agricultural", "airplane"}
    assert s["classes"]["agricultural"]["images"] == 2
    # farmland is right in both runs, the airplanes only in one: that class scores lower
    assert s["classes"]["airplane"]["cider"] < s["classes"]["agricultural"]["cider"]
    b4 = [r["bleu_4"] for r in s["runs"].values()]
    assert b4[0] > b4[1]
    assert s["mean"]["bleu_4"]["mean"] == pytest.approx(sum(b4) / 2)
    assert s["mean"]["bleu_4"]["std"] > 0 and s["mean"]["bleu_4"]["min"] == min(b4)
    assert s["distinct_captions"] == {str(tmp_path / "seed1.csv"): 2, str(run): 2}
    assert s["most_repeated"][0] == ["there is a piece of farmland", 5]      # 2 + 3
    shown = capsys.readouterr().out
    assert "mean" in shown and "airplane" in shown and "there is a piece of farmland" in shown


def test_a_run_without_that_split_says_how_to_score_it(tmp_path):
    with pytest.raises(CaptioningError, match=r"no predictions for split=untouched\. Score it "
                                              r"first: python eval.py run_dir=.* split=untouched"):
        predictions_file(tmp_path, "untouched")
    with pytest.raises(CaptioningError, match="no such run directory"):
        predictions_file(tmp_path / "nope", "val")
