"""The debug variants (conf/debug/: fdr, limit, overfit, profile) and the trainer keys behind
them, for real. fdr and profile run in tests/tracking/test_comet.py (the resumed Comet run)."""

from __future__ import annotations

import math

import pytest

from captioning import ConfigError
from captioning.config_check import check_config
from captioning.training.debug import batches, limit_splits, limit_train, train_steps
from tests.conftest import compose_config


def test_limits_count_batches_as_lightning_does():
    assert [batches(None, 10), batches(1, 10), batches(3, 10), batches(30, 10)] == [10, 1, 3, 10]
    assert [batches(1.0, 10), batches(0.25, 10), batches(0.01, 10)] == [10, 2, 1]


def test_debug_presets_compose_and_pass_the_checks():
    expected = {
        "fdr": {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1},
        "limit": {"limit_train_batches": 0.25, "limit_val_batches": 0.5},
        "overfit": {"overfit_batches": 1, "limit_train_batches": None},
        "profile": {"profile_batches": [2, 4], "max_epochs": 1},
    }
    for name, keys in expected.items():
        cfg = compose_config(f"debug={name}", "logger=none")
        check_config(cfg)
        assert {k: cfg.trainer[k] for k in keys} == keys, name
    cfg = compose_config("debug=[tiny,fdr]", "logger=none")
    assert cfg.evaluation.batch_size == 4 and cfg.dataset.max_images == 40   # tiny and fdr
    assert compose_config("debug=overfit").dataset.captions_per_image == 1


@pytest.mark.parametrize("override, words", [
    ("trainer.limit_train_batches=2.5", "a float above 1"),
    ("trainer.limit_val_batches=0", "a number of batches"),
    ("trainer.overfit_batches=-1", "0 (off)"),
    ("trainer.profile_batches=[4,2]", "first <= last"),
    ("trainer.profile_batches=[1,2,3]", "[first, last]"),
])
def test_bad_debug_values_are_one_clear_error(override, words):
    with pytest.raises(ConfigError, match=r"trainer\.") as e:
        check_config(compose_config("debug=tiny", "logger=none", override))
    assert words in str(e.value) and "Received" in str(e.value)


def test_limits_cut_the_splits_and_the_epoch():
    """debug=limit on the tiny data: a quarter of the training batches per epoch, the first
    half of the val batches (its images, for every validation pass and the final scores)."""
    from captioning.data.datamodule import build_data

    cfg = compose_config("debug=[tiny,limit]", "logger=none", "trainer.batch_size=4",
                         "evaluation.batch_size=2")
    data = build_data(cfg, progress=False)
    val, test = list(data.splits["val"]), list(data.splits["test"])
    limit_splits(cfg, data)
    for split, records in (("val", val), ("test", test)):
        kept = max(1, int(math.ceil(len(records) / 2) * 0.5)) * 2       # 2 images a batch
        assert data.splits[split] == records[:kept] and kept < len(records)
    assert any("limit_val_batches=0.5" in n for n in data.report.notes)
    full = math.ceil(len(data.splits["train"]) / 4)
    ds, steps = limit_train(cfg, data, data.train_dataset(4, 0))
    assert steps == train_steps(cfg, data) == max(1, int(full * 0.25)) < full
    # The passes repeat (model.fit is given steps_per_epoch), each cut to `steps` batches: in a
    # fixed order the second pass is the first again, shuffled it is a new order.
    def two_passes(dataset):
        batches = iter(dataset)
        return ([next(batches)[1].numpy() for _ in range(steps)] for _ in range(2))

    fixed, _ = limit_train(cfg, data, data.train_dataset(4, 0, shuffle=False))
    first, second = two_passes(fixed)
    assert all((a == b).all() for a, b in zip(first, second, strict=True))
    first, second = two_passes(ds)
    assert not all((a == b).all() for a, b in zip(first, second, strict=True))


@pytest.mark.slow
def test_overfit_drives_the_training_loss_near_zero(tmp_path):
    """debug=overfit on the tiny model: one batch of 8 images, validated on themselves. The
    cross-entropy starts near ln(vocabulary) ~ 5 and must fall below 0.3 (25 epochs here; the
    preset runs 40), and greedy captions of those images must be close to their own."""
    import csv

    from captioning.training import train

    cfg = compose_config("debug=[tiny,overfit]", "logger=none", "trainer.max_epochs=25",
                         f"paths.output_dir={tmp_path}")
    result = train(cfg)
    with open(tmp_path / "history.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 25 and losses[0] > 3.0
    assert losses[-1] < 0.3, losses
    assert "test" not in result and result["val"]["bleu_4"] > 0.5
    assert any("overfit_batches=1" in n for n in result["meta"]["notes"])
