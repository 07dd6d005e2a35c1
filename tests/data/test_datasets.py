"""Datasets: the synthetic generator, the readers for every layout (tiny fixtures and the real
samples in ../shared/data), COCO through TFDS, and the build steps around them (vectorising,
caption sampling, temporary folders, the free-space check)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from captioning import CaptioningError, DatasetError
from captioning.data import synthetic
from captioning.data.datamodule import build_data, load_records
from captioning.data.readers import read_captions_csv
from captioning.data.records import DataReport
from captioning.data.text import normalize
from tests.conftest import CAPTIONS, SHARED_DATA, compose_config


# ------------------------------------------------------------------ synthetic
def test_synthetic_is_deterministic_and_parses_back(tmp_path):
    a = synthetic.ensure_synthetic(tmp_path / "a", 30, 48, seed=3, progress=False)
    b = synthetic.ensure_synthetic(tmp_path / "b", 30, 48, seed=3, progress=False)
    c = synthetic.ensure_synthetic(tmp_path / "c", 30, 48, seed=4, progress=False)
    assert (a / "captions.txt").read_bytes() == (b / "captions.txt").read_bytes()
    image = "Images/synth_00007.jpg"
    assert (a / image).read_bytes() == (b / image).read_bytes()
    assert (a / "captions.txt").read_bytes() != (c / "captions.txt").read_bytes()
    caps = read_captions_csv(a / "captions.txt", "error", DataReport())
    assert len(caps) == 30 and all(len(v) == 5 and len(set(v)) == 5 for v in caps.values())
    # quoted commas survived the round trip
    assert any("," in c for v in caps.values() for c in v)
    # The first N scenes do not depend on the dataset size.
    img10, caps10 = synthetic.render(7, 3, 48)
    assert caps10 == caps["synth_00007.jpg"]


def test_synthetic_captions_describe_the_scene():
    for i in range(50):
        img, caps = synthetic.render(i, 0, 64)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        words = {w for c in caps for w in normalize(c).split()}
        assert words & set(synthetic.COLORS)                       # every scene names a colour


# ------------------------------------------------------------------ readers
def _ds(**kw):
    base = {"name": "flickr8k", "root": None, "layout": "auto", "split": "random",
            "val_fraction": 0.25, "test_fraction": 0.0, "captions_per_image": 5,
            "max_images": None, "on_missing": "error", "on_malformed": "error",
            "verify_images": True}
    return OmegaConf.create({**base, **kw})


def test_flickr8k_kaggle_layout_keeps_quoted_commas_and_non_ascii(flickr8k_kaggle):
    splits, report = load_records(_ds(root=str(flickr8k_kaggle)), seed=0, progress=False)
    records = {r.id: r for s in splits.values() for r in s}
    assert set(records) == set(CAPTIONS)
    # the comma is inside the caption
    assert records["a.jpg"].captions[0] == "A red square, on grey."
    assert records["c.jpg"].captions[1] == "Một con chó đang chạy"
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 0]
    assert any("no test split" in n for n in report.notes)


def test_flickr8k_original_layout_follows_its_split_lists(flickr8k_original):
    splits, _ = load_records(_ds(root=str(flickr8k_original), split="karpathy"), seed=0,
                             progress=False)
    assert [r.id for r in splits["train"]] == ["a.jpg", "b.jpg"]
    assert [r.id for r in splits["val"]] == ["c.jpg"]
    assert [r.id for r in splits["test"]] == ["d.jpg"]
    assert len(splits["train"][0].captions) == 5


def test_missing_root_names_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*dataset.root"):
        load_records(_ds(root=str(tmp_path / "nope")), 0, progress=False)
    with pytest.raises(DatasetError, match="captions.txt"):
        load_records(_ds(root=str(tmp_path)), 0, progress=False)


def test_malformed_line_names_file_and_line(flickr8k_kaggle):
    with open(flickr8k_kaggle / "captions.txt", "a", encoding="utf-8") as f:
        f.write("broken line without a caption field\n")
    with pytest.raises(DatasetError, match=r"captions.txt:22"):
        load_records(_ds(root=str(flickr8k_kaggle)), 0, progress=False)
    splits, report = load_records(_ds(root=str(flickr8k_kaggle), on_malformed="skip"), 0,
                                  progress=False)
    assert report.removed["malformed caption lines"] == 1 and sum(map(len, splits.values())) == 4


def test_missing_images_fail_or_are_skipped_and_corrupt_ones_counted(flickr8k_kaggle):
    (flickr8k_kaggle / "Images" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match="1 of 4 images .* missing .*b.jpg.*on_missing=skip"):
        load_records(_ds(root=str(flickr8k_kaggle)), 0, progress=False)
    (flickr8k_kaggle / "Images" / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    splits, report = load_records(_ds(root=str(flickr8k_kaggle), on_missing="skip"), 0,
                                  progress=False)
    assert sorted(r.id for s in splits.values() for r in s) == ["a.jpg", "d.jpg"]
    assert report.removed["missing images"] == 1 and report.removed["unreadable images"] == 1


def _words(records) -> set[str]:
    return {w for r in records for c in r.captions for w in normalize(c).split()}


def test_build_data_vectorises_train_captions_only(flickr8k_kaggle):
    cfg = compose_config("dataset=flickr8k", f"dataset.root={flickr8k_kaggle}",
                         "dataset.val_fraction=0.25", "backbone.image_size=32", "text.seq_len=12")
    data = build_data(cfg, progress=False)
    val_words, train_words = _words(data.splits["val"]), _words(data.splits["train"])
    assert set(data.vocab.tokens) - {"", "[UNK]", "<start>", "<end>"} <= train_words
    assert val_words - train_words              # some val-only words exist and were not learned
    ids = data.encode(data.splits["train"])
    assert ids.shape == (3, 5, 12) and (ids[:, :, 0] == data.vocab.start_id).all()
    images, caps = next(iter(data.train_dataset(batch_size=2, seed=0)))
    assert images.shape == (2, 32, 32, 3) and caps.shape == (2, 5, 12)
    # 0..255, not rescaled
    assert float(images.numpy().max()) <= 255.0 and float(images.numpy().max()) > 1.0
    # Every pipeline runs without tf.data's autotuner: with it, Keras's per-epoch iterator
    # deletion blocked for up to ~40 s on a 2-core CPU (see datamodule._finish).
    for ds in (data.train_dataset(batch_size=2, seed=0), data.train_dataset(2, 0, sample=2),
               data.image_dataset(data.splits["val"], batch_size=2)):
        assert ds.options().autotune.enabled is False
        assert sum(1 for _ in ds) >= 1


def test_sample_captions_draws_k_distinct_captions_afresh_each_epoch(flickr8k_kaggle):
    cfg = compose_config("dataset=flickr8k", f"dataset.root={flickr8k_kaggle}",
                         "dataset.val_fraction=0.25", "backbone.image_size=32", "text.seq_len=12")
    data = build_data(cfg, progress=False)
    full = data.encode(data.splits["train"])                             # (3, 5, 12)
    ds = data.train_dataset(batch_size=3, seed=0, shuffle=False, sample=2)
    seen = [set() for _ in full]
    for _ in range(6):                                                   # six epochs
        _, caps = next(iter(ds))
        assert caps.shape == (3, 2, 12)
        for i, rows in enumerate(caps.numpy()):
            picked = [next(j for j in range(5) if (full[i, j] == row).all()) for row in rows]
            assert len(set(picked)) == 2                                 # without replacement
            seen[i].update(picked)
    assert all(len(s) > 2 for s in seen)                                 # a new draw each epoch

    def first_draw():
        return next(iter(data.train_dataset(batch_size=3, seed=0, shuffle=False, sample=2)))[1]

    first = [first_draw().numpy() for _ in range(2)]
    assert (first[0] == first[1]).all()                                  # same seed, same draws

# ------------------------------------------------------------------ real samples
# These need ../shared/data and are skipped in a user's clone.
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "flickr8k_sample").is_dir(),
                                  reason="../shared/data absent")


@needs_shared
def test_real_flickr8k_sample_loads_in_both_layouts():
    root = SHARED_DATA / "flickr8k_sample"
    kaggle, _ = load_records(_ds(root=str(root)), 0, progress=False)
    assert sum(map(len, kaggle.values())) == 136
    assert all(len(r.captions) == 5 for s in kaggle.values() for r in s)
    # The original token file lists all 8,092 names; only the 136 present images load with skip.
    orig, report = load_records(
        _ds(root=str(root), layout="original", on_missing="skip", split="karpathy"),
        0, progress=False)
    assert sum(map(len, orig.values())) == 136 - report.removed["images in no split list"]
    assert report.removed["missing images"] == 8092 - 136
    with pytest.raises(DatasetError, match="missing"):
        load_records(_ds(root=str(root), layout="original"), 0, progress=False)


@needs_shared
def test_real_ucm_captions_load_with_the_test_images_held_back():
    root = SHARED_DATA / "ucm_captions"
    cfg = OmegaConf.create({
        "name": "karpathy", "json": str(root / "dataset.json"), "images": str(root / "images"),
        "restval": True, "split": "karpathy", "captions_per_image": 5, "max_images": None,
        "on_missing": "skip", "on_malformed": "error", "verify_images": False})
    splits, report = load_records(cfg, 0, progress=False)
    assert (len(splits["train"]), len(splits["val"])) == (1680, 210)
    # test images are held back
    assert report.removed["missing images"] == 0 and not splits["test"]


def test_flickr8k_fixtures_are_written_in_the_real_formats(flickr8k_kaggle, flickr8k_original):
    rows = list(csv.reader(open(flickr8k_kaggle / "captions.txt", encoding="utf-8")))
    assert rows[0] == ["image", "caption"] and len(rows) == 21
    token_file = flickr8k_original / "Flickr8k_text" / "Flickr8k.token.txt"
    line = token_file.read_text(encoding="utf-8").splitlines()[0]
    assert line.startswith("a.jpg#0\t")


def test_a_missing_default_root_names_the_keys_that_set_it(tmp_path):
    """dataset.root defaults to <paths.data_dir>/flickr8k; absent, the message says both keys."""
    cfg = compose_config("dataset=flickr8k", f"paths.data_dir={tmp_path}")
    with pytest.raises(DatasetError, match=rf"{tmp_path}/flickr8k does not exist.*dataset.root"
                                           r".*paths.data_dir.*CAPTIONING_DATA_DIR"):
        load_records(cfg.dataset, 0, progress=False)


# ------------------------------------------------------------------ COCO through TFDS (mock data)
def _mock_coco(per_split: int):
    """``tfds.testing.mock_data`` with coco_captions' real structure (its random generator
    cannot build the variable-length captions sequence, so we give the examples)."""
    import io

    import tensorflow as tf
    import tensorflow_datasets as tfds
    from PIL import Image

    def as_dataset(self, split, decoders=None, **kwargs):
        offset = {"train": 0, "restval": 100, "val": 200, "test": 300}[str(split)]
        examples = {"image": [], "image/filename": [], "image/id": [],
                    "captions": {"text": [], "id": []}}
        for i in range(per_split):
            buf = io.BytesIO()
            Image.new("RGB", (48, 40), (i * 20 % 255, 80, 160)).save(buf, format="JPEG")
            examples["image"].append(buf.getvalue())
            examples["image/filename"].append(f"COCO_{split}2014_{offset + i:012d}.jpg")
            examples["image/id"].append(offset + i)
        ds = tf.data.Dataset.from_tensor_slices(
            {k: v for k, v in examples.items() if k != "captions"})
        n_caps = 6                                            # COCO has 5-7 captions per image
        caps = tf.data.Dataset.from_tensor_slices({
            "text": [[f"caption {k} of image {offset + i}, in {split}" for k in range(n_caps)]
                     for i in range(per_split)],
            "id": [[k for k in range(n_caps)] for _ in range(per_split)]})
        return tf.data.Dataset.zip(ds, caps).map(lambda e, c: {**e, "captions": c})

    return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def test_coco_via_tfds_keeps_every_caption_and_split(tmp_path):
    cfg = compose_config("dataset=coco", f"dataset.cache_dir={tmp_path}")
    with _mock_coco(per_split=3):
        splits, _ = load_records(cfg.dataset, 0, progress=False)
    # restval joined train
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    r = splits["val"][0]
    assert len(r.captions) == 6 and r.captions[0].startswith("caption 0 of image 200")
    assert (tmp_path / "tfds_coco_captions" / "val" / "captions.json").is_file()
    # A second load reads the materialised index, without TFDS.
    again, _ = load_records(cfg.dataset, 0, progress=False)
    assert [r.id for r in again["test"]] == [r.id for r in splits["test"]]


def test_coco_not_prepared_says_how_to_build_it(tmp_path):
    cfg = compose_config("dataset=coco", f"dataset.cache_dir={tmp_path}",
                         f"dataset.data_dir={tmp_path}/tfds")
    with pytest.raises(DatasetError, match="tfds build coco_captions"):
        load_records(cfg.dataset, 0, progress=False)


def test_flickr30k_pipe_layout_strips_stray_spaces(flickr30k_kaggle):
    cfg = compose_config("dataset=flickr30k", f"dataset.root={flickr30k_kaggle}",
                         "dataset.val_fraction=0.25")
    splits, _ = load_records(cfg.dataset, 0, progress=False)
    records = {r.id: r for s in splits.values() for r in s}
    assert set(records) == set(CAPTIONS)
    # stray spaces stripped
    assert records["a.jpg"].captions[0] == "A red square, on grey."


def test_karpathy_json_joins_restval_to_train_unless_turned_off(karpathy_json):
    path, images = karpathy_json
    cfg = compose_config("dataset=karpathy", f"dataset.json={path}", f"dataset.images={images}")
    splits, _ = load_records(cfg.dataset, 0, progress=False)
    assert [r.id for r in splits["train"]] == ["a.jpg", "b.jpg"]         # restval joined train
    assert [r.id for r in splits["val"]] == ["c.jpg"]
    assert [r.id for r in splits["test"]] == ["d.jpg"]
    assert splits["val"][0].image.endswith("val2014/c.jpg")
    cfg = compose_config("dataset=karpathy", f"dataset.json={path}", f"dataset.images={images}",
                         "dataset.restval=false")
    splits, report = load_records(cfg.dataset, 0, progress=False)
    assert [r.id for r in splits["train"]] == ["a.jpg"]


def test_coco_raw_json_gives_train_and_val_and_no_test(coco_raw):
    cfg = compose_config("dataset=coco_json", f"dataset.root={coco_raw}")
    splits, report = load_records(cfg.dataset, 0, progress=False)
    assert len(splits["train"]) == 3 and len(splits["val"]) == 1 and not splits["test"]
    assert any("no public test captions" in n for n in report.notes)


def test_not_enough_disk_is_one_message_before_anything_is_written(tmp_path):
    """The COCO copy's estimate (images x mean JPEG size) is checked against the real free
    space before a byte is written: here TFDS (its own mock_data) reports more images than
    the disk can hold."""
    import io

    import tensorflow as tf
    import tensorflow_datasets as tfds
    from PIL import Image

    from captioning.data.readers.tfds_coco import read_coco_tfds
    from captioning.data.records import DataReport

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(buf, format="JPEG")
    repeat = shutil.disk_usage(tmp_path).free // len(buf.getvalue()) + 1

    def as_dataset(self, split, decoders=None, **kwargs):
        one = tf.data.Dataset.from_tensors({"image": buf.getvalue(),
                                            "image/filename": f"{split}.jpg", "image/id": 1,
                                            "captions": {"text": ["a caption"], "id": [0]}})
        return one.repeat(repeat)                       # cardinality known, nothing stored

    cfg = compose_config("dataset=coco", f"dataset.cache_dir={tmp_path}/cache").dataset
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        with pytest.raises(CaptioningError, match=r"Not enough disk space: the copy of TFDS "
                                                  r"coco_captions .*GB in .*only .* free there"
                                                  r".*dataset.cache_dir"):
            read_coco_tfds(cfg, DataReport())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.jpg"))


def test_the_next_build_removes_temporary_folders_a_killed_build_left(tmp_path):
    from captioning.data.synthetic import ensure_synthetic

    stale = tmp_path / ".synth.k1ll3d"                        # what kill -9 mid-render leaves
    (stale / "Images").mkdir(parents=True)
    root = ensure_synthetic(tmp_path / "synth", 4, 32, seed=0, progress=False)
    assert (root / "captions.txt").is_file() and not stale.exists()
    # Nothing else is left: the build lock (a file holding host and pid) goes with the build.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]
