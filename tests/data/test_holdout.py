"""A held-out split (dataset.holdout, holdout_list) that nothing in training sees: the same
images for every run seed, taken from train and kept out of the vocabulary; the final fit on
val; and the config errors around both."""

from __future__ import annotations

import pytest

from captioning import ConfigError, DatasetError
from captioning.config_check import check_config
from captioning.data.datamodule import build_data, load_records
from captioning.data.text import normalize
from tests.conftest import SHARED_DATA, compose_config

SPECIAL = {"", "[UNK]", "<start>", "<end>"}


def _ids(records) -> set[str]:
    return {r.id for r in records}


def _words(records) -> set[str]:
    return {w for r in records for c in r.captions for w in normalize(c).split()}


# ------------------------------------------------------------------ the carve
def test_holdout_is_the_same_images_for_every_run_seed_and_apart_from_the_rest():
    """Synthetic data, dataset.split=random: val and test follow the run's seed, the holdout
    only dataset.holdout_seed."""
    ds = compose_config("dataset.num_images=60", "dataset.holdout=12").dataset
    runs = {seed: load_records(ds, seed, progress=False)[0] for seed in (1, 2, 3)}
    for splits in runs.values():
        assert {s: len(r) for s, r in splits.items()} == {
            "train": 36, "val": 6, "test": 6, "holdout": 12}     # val/test keep 10% of 60 each
        held = _ids(splits["holdout"])
        assert not held & (_ids(splits["train"]) | _ids(splits["val"]) | _ids(splits["test"]))
    assert len({frozenset(_ids(s["holdout"])) for s in runs.values()}) == 1    # every seed
    assert len({frozenset(_ids(s["val"])) for s in runs.values()}) > 1         # val: per seed
    again = load_records(ds, 2, progress=False)[0]
    assert [r.id for r in again["holdout"]] == [r.id for r in runs[2]["holdout"]]
    other = load_records(compose_config("dataset.num_images=60", "dataset.holdout=12",
                                        "dataset.holdout_seed=1").dataset, 1, progress=False)[0]
    assert _ids(other["holdout"]) != _ids(runs[1]["holdout"])
    # a fraction: of the 48 images the fractions leave to train
    fraction = compose_config("dataset.num_images=60", "dataset.holdout=0.25").dataset
    assert len(load_records(fraction, 1, progress=False)[0]["holdout"]) == 12
    # off by default: no holdout images, the split as before
    plain = load_records(compose_config("dataset.num_images=60").dataset, 1, progress=False)[0]
    assert not plain["holdout"] and len(plain["train"]) == 48


def test_holdout_comes_from_train_and_stays_out_of_the_vocabulary(flickr8k_original):
    """An official split (train a, b; val c; test d): one train image held out, with every
    reference kept, none of its words learned, and counted in the data report."""
    cfg = compose_config("dataset=flickr8k", f"dataset.root={flickr8k_original}",
                         "dataset.split=karpathy", "dataset.holdout=1", "backbone.image_size=32",
                         "text.seq_len=12")
    data = build_data(cfg, progress=False)
    assert (_ids(data.splits["val"]), _ids(data.splits["test"])) == ({"c.jpg"}, {"d.jpg"})
    (held,) = data.splits["holdout"]
    assert held.id in {"a.jpg", "b.jpg"} and _ids(data.splits["train"]) == {"a.jpg",
                                                                             "b.jpg"} - {held.id}
    assert len(held.captions) == 5
    learned = set(data.vocab.tokens) - SPECIAL
    assert learned <= _words(data.splits["train"])
    assert _words([held]) - learned                   # its own words ("red" or "blue") unknown
    assert data.report.counts == {"train": 1, "val": 1, "test": 1, "holdout": 1}
    seed7, _ = load_records(cfg.dataset, 7, progress=False)
    assert _ids(seed7["holdout"]) == {held.id}                 # not the run's seed


def test_the_final_fit_trains_on_val_and_says_so(flickr8k_original):
    """dataset.train_on_val=true: val's image joins train (and its words the vocabulary); the
    data report notes it, and warns when the checkpoint is still picked on val (select=best)."""
    base = ("dataset=flickr8k", f"dataset.root={flickr8k_original}", "dataset.split=karpathy",
            "backbone.image_size=32", "text.seq_len=12", "dataset.train_on_val=true")
    data = build_data(compose_config(*base), progress=False)
    assert _ids(data.splits["train"]) == {"a.jpg", "b.jpg", "c.jpg"}
    assert _ids(data.splits["val"]) == {"c.jpg"}                       # still scored as before
    assert _words(data.splits["val"]) - SPECIAL <= set(data.vocab.tokens)
    assert any("train_on_val=true" in n for n in data.report.notes)
    assert any("select=best picks its epoch on val" in n for n in data.report.notes)
    data = build_data(compose_config(*base, "callbacks.checkpoints.select=mean:1-2"),
                      progress=False)
    assert not any("select=best" in n for n in data.report.notes)


def test_the_final_fit_can_train_on_the_holdout_too(flickr8k_original):
    """dataset.train_on_holdout=true: the held-out train image joins train again (its words the
    vocabulary) and stays scored as holdout, with a note; without a holdout it is refused."""
    base = ("dataset=flickr8k", f"dataset.root={flickr8k_original}", "dataset.split=karpathy",
            "backbone.image_size=32", "text.seq_len=12", "dataset.train_on_holdout=true")
    data = build_data(compose_config(*base, "dataset.holdout=1"), progress=False)
    (held,) = data.splits["holdout"]
    assert _ids(data.splits["train"]) == {"a.jpg", "b.jpg"}            # c.jpg (val) is not
    assert _words([held]) - SPECIAL <= set(data.vocab.tokens)
    assert any("train_on_holdout=true" in n and n.endswith("read test")
               for n in data.report.notes)
    both = build_data(compose_config(*base, "dataset.holdout=1", "dataset.train_on_val=true"),
                      progress=False)                 # neither val's nor the holdout's note
    assert [n.rsplit("read ", 1)[1] for n in both.report.notes if "=true: the" in n] == [
        "test", "test"]                              # sends the reader to the other
    with pytest.raises(ConfigError, match="dataset.train_on_holdout=true trains on the holdout"):
        check_config(compose_config(*base))


def test_a_holdout_larger_than_train_names_the_key_and_the_fix(flickr8k_original):
    ds = compose_config("dataset=flickr8k", f"dataset.root={flickr8k_original}",
                        "dataset.split=karpathy", "dataset.holdout=2").dataset
    with pytest.raises(DatasetError, match=r"dataset.holdout=2 asks for 2 of the 2 train "
                                           r"images.*use at most 1 images"):
        load_records(ds, 0, progress=False)


@pytest.mark.parametrize("overrides,message", [
    (["dataset.holdout=-3"], r"^dataset.holdout must be null \(no held-out split\), a number of "
                             r"train images \(an integer >= 1.*Received: dataset.holdout=-3$"),
    (["dataset.holdout=0"], r"^dataset.holdout must be null .*Received: dataset.holdout=0$"),
    (["dataset.holdout=1.5"], r"^dataset.holdout must be .*a float of 1 or more is neither"),
    (["dataset.holdout=1.0"], r"^dataset.holdout must be .*Use an integer"),
    (["dataset.holdout=many"], r"^dataset.holdout must be null"),
    (["dataset.holdout_seed=-1"], r"^dataset.holdout_seed must be in \[0, 4294967295\]"),
    (["trainer.lr_follows_clock=maybe"], r"^trainer.lr_follows_clock must be true or false"),
    (["trainer.lr_follows_clock=true", "trainer.lr_schedule=cosine"],
     r"^trainer.lr_follows_clock=true .*trainer.max_minutes is null"),
    (["trainer.lr_follows_clock=true", "trainer.max_minutes=5"],
     r"^trainer.lr_follows_clock=true changes only a cosine schedule"),
    (["callbacks.checkpoints.select=mean:9-12", "trainer.max_epochs=10"],
     r"^callbacks.checkpoints.select=mean:9-12 names epochs after the last one planned \(10: "),
    (["callbacks.checkpoints.select=newest"],
     r"^callbacks.checkpoints.select must be best, last or mean:FIRST-LAST .*Received: "
     r"callbacks.checkpoints.select='newest'"),
])
def test_holdout_and_clock_nonsense_is_one_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(*overrides))


def test_the_holdout_keys_pass_where_shipped():
    check_config(compose_config("dataset.holdout=0.1", "dataset.holdout_seed=3"))
    check_config(compose_config("trainer.lr_follows_clock=true", "trainer.max_minutes=5",
                                "trainer.lr_schedule=cosine"))
    for name in ("synthetic", "flickr8k", "flickr30k", "karpathy", "coco", "coco_json"):
        ds = compose_config(f"dataset={name}").dataset
        assert (ds.holdout, ds.holdout_seed, ds.holdout_list) == (None, 0, None), name
    ucm = compose_config("experiment=ucm_scratch")
    assert (ucm.dataset.split, ucm.dataset.holdout, ucm.dataset.holdout_list,
            ucm.dataset.untouched_list, ucm.trainer.lr_follows_clock) == (
        "karpathy", None, "experiments/ucm_holdout.txt", "experiments/ucm_untouched.txt", False)
    # the final fit trains on val and the holdout: only the untouched block is held out
    assert ucm.dataset.train_on_val and ucm.dataset.train_on_holdout
    check_config(compose_config("experiment=ucm_scratch", "dataset.json=x.json",
                                "dataset.images=x"))


needs_ucm = pytest.mark.skipif(not (SHARED_DATA / "ucm_captions" / "dataset.json").is_file(),
                               reason="../shared/data/ucm_captions absent")


@needs_ucm
def test_real_ucm_captions_hold_out_210_train_images():
    root = SHARED_DATA / "ucm_captions"
    ds = compose_config("experiment=ucm_scratch", f"dataset.json={root / 'dataset.json'}",
                        f"dataset.images={root / 'images'}", "dataset.verify_images=false").dataset
    splits, report = load_records(ds, 42, progress=False)
    assert {s: len(r) for s, r in splits.items()} == {
        "train": 1260, "val": 210, "test": 0, "holdout": 210, "untouched": 210}
    assert report.removed["missing images"] == 0
    assert not _ids(splits["holdout"]) & (_ids(splits["train"]) | _ids(splits["val"]))
    # experiments/ucm_untouched.txt: images 61-70 of each class, apart from all the rest
    assert _ids(splits["untouched"]) == {f"{c * 100 + k}.jpg" for c in range(21)
                                         for k in range(61, 71)}
    assert not _ids(splits["untouched"]) & (_ids(splits["train"]) | _ids(splits["val"])
                                            | _ids(splits["holdout"]))
    again, _ = load_records(ds, 1, progress=False)             # another run seed
    assert _ids(again["holdout"]) == _ids(splits["holdout"])
    # experiments/ucm_holdout.txt: images 71-80 of each class of 100, a block like val and test
    assert _ids(splits["holdout"]) == {f"{c * 100 + k}.jpg" for c in range(21)
                                       for k in range(71, 81)}


def test_a_holdout_list_names_train_images_or_fails_in_one_message(tmp_path):
    from captioning import DatasetError

    def splits(*overrides):
        ds = compose_config("dataset.num_images=60", *overrides).dataset
        return load_records(ds, 1, progress=False)[0]

    ids = sorted(r.id for r in splits()["train"])
    listed = tmp_path / "held.txt"
    listed.write_text(f"# two images\n{ids[0]}\n{ids[3]}  # a comment\n")
    held = splits(f"dataset.holdout_list={listed}")
    assert _ids(held["holdout"]) == {ids[0], ids[3]} and len(held["val"]) == 6
    listed.write_text("not_an_image.png\n")
    with pytest.raises(DatasetError, match="not train images of this dataset.*not_an_image.png"):
        splits(f"dataset.holdout_list={listed}")
    with pytest.raises(DatasetError, match="no such file"):
        splits(f"dataset.holdout_list={tmp_path / 'missing.txt'}")
    with pytest.raises(ConfigError, match="both choose the held-out images"):
        check_config(compose_config(f"dataset.holdout_list={listed}", "dataset.holdout=3"))


def test_the_untouched_block_is_set_aside_before_any_choice_and_out_of_the_vocabulary(
        flickr8k_original, tmp_path):
    """dataset.untouched_list: its train images leave train before the holdout is chosen (the
    same holdout size from the rest), none of their words are learned, and no run scores them
    (metrics.json has no "untouched"; eval.py split=untouched does)."""
    listed = tmp_path / "untouched.txt"
    listed.write_text("b.jpg  # a train image\n")
    cfg = compose_config("dataset=flickr8k", f"dataset.root={flickr8k_original}",
                         "dataset.split=karpathy", f"dataset.untouched_list={listed}",
                         "backbone.image_size=32", "text.seq_len=12")
    data = build_data(cfg, progress=False)
    (kept,) = data.splits["untouched"]
    assert kept.id == "b.jpg" and len(kept.captions) == 5           # every reference kept
    assert _ids(data.splits["train"]) == {"a.jpg"}
    assert data.report.counts["untouched"] == 1
    only_there = _words([kept]) - _words(data.splits["train"])
    assert only_there and not only_there & set(data.vocab.tokens)


def test_an_untouched_list_names_train_images_apart_from_the_holdout(tmp_path):
    def splits(*overrides):
        ds = compose_config("dataset.num_images=60", *overrides).dataset
        return load_records(ds, 1, progress=False)[0]

    ids = sorted(r.id for r in splits()["train"])
    untouched, held = tmp_path / "untouched.txt", tmp_path / "held.txt"
    untouched.write_text(f"{ids[0]}\n{ids[1]}\n")
    held.write_text(f"{ids[2]}\n")
    both = splits(f"dataset.untouched_list={untouched}", f"dataset.holdout_list={held}")
    assert (_ids(both["untouched"]), _ids(both["holdout"])) == ({ids[0], ids[1]}, {ids[2]})
    assert not (_ids(both["untouched"]) | _ids(both["holdout"])) & (
        _ids(both["train"]) | _ids(both["val"]) | _ids(both["test"]))
    # split=random: val and test are drawn from the rest, at the sizes of all 60 images
    assert (len(both["val"]), len(both["test"])) == (6, 6)
    assert "untouched" not in splits()                      # no list: no such split
    held.write_text(f"{ids[1]}\n")
    with pytest.raises(DatasetError, match="share 1 image.*apart from the block choices"):
        splits(f"dataset.untouched_list={untouched}", f"dataset.holdout_list={held}")
    untouched.write_text("nope.png\n")
    with pytest.raises(DatasetError, match=r"^dataset.untouched_list=.* names 1 image\(s\) that"):
        splits(f"dataset.untouched_list={untouched}")
