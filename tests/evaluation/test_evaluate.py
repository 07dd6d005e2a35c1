"""Scoring a split and writing its results: METEOR left out, N sampled captions in the CSV and
the grid, and eval.py's result file names."""

from __future__ import annotations

import csv
from types import SimpleNamespace

from tests.conftest import compose_config
from tests.data.test_text import build


def test_n_sampled_captions_per_image_reach_csv_and_grid(flickr8k_kaggle, tmp_path):
    """A tiny untrained model: 3 top-k captions per image; the first is the prediction, the
    others go to prediction_2/3 of predictions.csv and all to the grid's samples column."""
    import kangas
    import keras

    from captioning.evaluation.evaluate import write_predictions
    from captioning.models.build import build_model
    from captioning.models.decoding import Generator, sample_records
    from captioning.tracking.kangas_grids import write_predictions_grid

    cfg = compose_config("debug=tiny", "dataset=flickr8k", f"dataset.root={flickr8k_kaggle}",
                         "dataset.val_fraction=0.5", "decode.method=top_k", "decode.k=10",
                         "decode.num_captions=3", "decode.temperature=3.0", "text.seq_len=8",
                         "logger=none")
    data = build(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, data.vocab.size)
    records = data.splits["val"]
    generator = Generator.from_config(model, data.vocab, cfg.decode, seed=0)
    samples = sample_records(generator, data, records, 4, 3)
    assert len(samples) == len(records) and all(len(s) == 3 for s in samples)
    r = SimpleNamespace(records=records, samples=samples, predictions=[s[0] for s in samples],
                        per_image={})
    assert any(len(set(s)) > 1 for s in r.samples)               # sampled, not repeated
    write_predictions(tmp_path / "p.csv", r.records, r.predictions, r.per_image, r.samples)
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    assert list(rows[0]) == ["image", "references", "prediction", "bleu_4", "cider",
                             "prediction_2", "prediction_3"]
    assert [[x["prediction"], x["prediction_2"], x["prediction_3"]] for x in rows] == r.samples
    grid = write_predictions_grid(tmp_path / "g.datagrid", r.records, r.predictions, r.per_image,
                                  1, "run", samples=r.samples)
    shown = [g["samples"] for g in kangas.read_datagrid(str(grid)).to_dicts()]
    assert shown == [" | ".join(s) for s in r.samples]


def test_meteor_can_be_left_out_and_the_scores_say_so():
    from captioning.data.datamodule import build_data
    from captioning.evaluation.evaluate import evaluate_split
    from captioning.models.build import build_model

    cfg = compose_config("debug=tiny", "evaluation.meteor=false")
    data = build_data(cfg, progress=False)
    scores, preds = evaluate_split(build_model(cfg, data.vocab.size), data, data.splits["val"],
                                   cfg)
    assert len(preds) == len(data.splits["val"])
    assert "meteor" not in scores.corpus and "cider" in scores.corpus
    assert "METEOR skipped (evaluation.meteor=false)" in scores.notes


def test_eval_file_names_say_the_decoding():
    from omegaconf import OmegaConf

    from eval import decoding_name

    d = OmegaConf.create({"method": "beam", "beam_size": 3, "length_penalty": 0.0, "k": 10,
                          "p": 0.9, "temperature": 1.0, "tta": "none"})
    assert decoding_name(d) == "beam3"
    assert (decoding_name(OmegaConf.merge(d, {"length_penalty": 1.0, "tta": "flip"}))
            == "beam3_lp1_tta_flip")
    assert (decoding_name(OmegaConf.merge(d, {"method": "greedy", "tta": "dihedral"}))
            == "greedy_tta_dihedral")


def test_eval_result_names_differ_whenever_the_settings_do():
    """Overrides the decoding's name leaves out (a dataset setting, a greedy temperature, the
    last weights) still give their own result files instead of overwriting each other."""
    from omegaconf import OmegaConf

    from eval import result_name

    d = OmegaConf.create({"method": "beam", "beam_size": 3, "length_penalty": 0.0, "k": 10,
                          "p": 0.9, "temperature": 1.0, "tta": "none"})
    plain = result_name("val", d, "best", ["decode.method=beam"])
    assert plain == "val_beam3"
    names = {plain, result_name("val", d, "last", []),
             result_name("val", d, "best", ["dataset.max_images=50"]),
             result_name("val", d, "best", ["dataset.max_images=60"]),
             result_name("val", d, "best", ["decode.temperature=0.5"])}
    assert len(names) == 5
    assert result_name("holdout", d, "mean:21-30", []) == "holdout_beam3_mean21-30"
