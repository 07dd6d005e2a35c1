"""Bad input at indexing and decoding: truncated and over-sized images, EXIF orientation,
captions files in another encoding, malformed COCO JSON, TFDS COCO's on_missing, and Karpathy
paths that leave the image folder. The helpers that write these files are shared with
tests/e2e/test_bad_input.py (a whole run on them)."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from captioning import DatasetError
from captioning.data.datamodule import CaptionData, build_data, load_records
from tests.conftest import CAPTIONS, compose_config, write_image

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink"]
BROKEN = ["cut.jpg", "cut.tif", "cut.webp"]          # valid files cut to half their bytes


# ------------------------------------------------------------------ files
def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, pixels: np.ndarray, fmt: str, **kw) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt, **kw)
    return path


def _cut(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _rotated_jpeg(path: Path) -> Path:
    """Stored 40 wide x 20 high, red left half, blue right half, EXIF orientation 6 (rotate 90
    degrees clockwise to view, as phones save portrait photos): upright it is 20 x 40, red on
    top, blue below."""
    from PIL import Image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(path, pixels, "JPEG", quality=95, exif=exif.tobytes())


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A 1-bit side x side PNG (400 million pixels at 20000): a few tens of KB on disk."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + side // 8)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _captions(color: str) -> list[str]:
    return [f"a {color} square on a grey background", f"the {color} square in the middle",
            f"one {color} box on grey", f"a bright {color} square", f"a square that is {color}"]


def _write_dataset(root: Path, extra: dict[str, str] | None = None) -> Path:
    """Kaggle Flickr8k layout: nine good JPEGs, a good WebP and TIFF, an EXIF-rotated JPEG, and
    a truncated JPEG, TIFF and WebP (plus ``extra`` {name: colour} written by the caller)."""
    images = root / "Images"
    names = {}
    for i, color in enumerate(COLORS):
        _save(images / f"g{i}.jpg", _noise(40, 40, i) // 4 + np.uint8(60 + 20 * i), "JPEG")
        names[f"g{i}.jpg"] = color
    _save(images / "g9.webp", _noise(40, 40, 9), "WEBP")
    _save(images / "g10.tif", _noise(40, 40, 10), "TIFF")
    _rotated_jpeg(images / "rot.jpg")
    names.update({"g9.webp": "red", "g10.tif": "blue", "rot.jpg": "red"})
    for name in BROKEN:
        fmt = {"jpg": "JPEG", "tif": "TIFF", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        _cut(_save(images / name, _noise(64, 64, 7), fmt))
        names[name] = "green"
    names.update(extra or {})
    with open(root / "captions.txt", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for name, color in names.items():
            w.writerows([name, c] for c in _captions(color))
    return root


def _ds(root: Path, **kw):
    cfg = compose_config("dataset=flickr8k", f"dataset.root={root}",
                         "dataset.val_fraction=0.25").dataset
    return OmegaConf.merge(cfg, kw)


def _all(splits) -> dict:
    return {r.id: r for s in splits.values() for r in s}


# ------------------------------------------------------------------ truncated images
def test_truncated_images_are_skipped_and_counted_at_indexing(tmp_path):
    root = _write_dataset(tmp_path / "ds")
    splits, report = load_records(_ds(root), 0, progress=False)
    records = _all(splits)
    assert not set(BROKEN) & set(records)
    assert report.removed["unreadable images"] == 3
    note = next(n for n in report.notes if "cannot be decoded" in n)
    assert all(name in note for name in BROKEN) and "truncated" in note
    # how each good file is decoded: TensorFlow as is, or Pillow (TIFF, EXIF orientation)
    assert records["g0.jpg"].decoder == "tf" and records["g9.webp"].decoder == "tf"
    assert records["g10.tif"].decoder == "pil" and records["rot.jpg"].decoder == "pil"
    # both decoders in one pipeline: every checked image arrives, none is dropped
    from captioning.data.records import DataReport
    from captioning.data.text import Vocabulary

    good = sorted(records.values(), key=lambda r: r.id)
    vocab = Vocabulary.build(["<start> a red square <end>"], 20, 8)
    data = CaptionData({"train": good, "val": [], "test": []}, vocab, DataReport(), 5, 32)
    assert sum(len(x) for x, _ in data.train_dataset(4, 0, shuffle=False)) == len(good) == 12
    assert sum(len(x) for x in data.image_dataset(good, 4)) == 12


def test_unchecked_broken_images_become_blank_rows_in_place(tmp_path):
    """dataset.verify_images=false: nothing is dropped at indexing, so captioning and the
    feature cache feed a broken file as a black image (rows stay aligned) and say so."""
    root = _write_dataset(tmp_path / "ds")
    cfg = compose_config("dataset=flickr8k", f"dataset.root={root}", "dataset.val_fraction=0.25",
                         "dataset.verify_images=false", "backbone.image_size=32")
    data = build_data(cfg, progress=False)
    records = sorted(_all(data.splits).values(), key=lambda r: r.id)
    assert {"cut.jpg", "cut.tif"} <= {r.id for r in records}
    batches = list(data.image_dataset(records, batch_size=4))
    images = np.concatenate([b.numpy() for b in batches])
    assert len(images) == len(records)
    blank = [r.id for r, x in zip(records, images, strict=True) if not x.any()]
    assert {"cut.jpg", "cut.tif"} <= set(blank) and "g0.jpg" not in blank
    assert any("fed as blank" in n and "cut.jpg" in n for n in data.report.notes)


# ------------------------------------------------------------------ decompression bombs
def test_images_over_the_pixel_limit_are_skipped_with_a_message(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)   # restored after
    root = tmp_path / "ds"
    _write_dataset(root, extra={"huge.png": "white"})
    _bomb_png(root / "Images" / "huge.png")
    splits, report = load_records(_ds(root), 0, progress=False)
    assert "huge.png" not in _all(splits) and report.removed["images over the pixel limit"] == 1
    note = next(n for n in report.notes if "huge.png" in n)
    assert "400,000,000 pixels" in note and "dataset.max_image_pixels" in note
    # dataset.max_image_pixels sets the limit (here below the 40x40 JPEGs)
    splits, report = load_records(_ds(root, max_image_pixels=1000), 0, progress=False)
    assert "g0.jpg" not in _all(splits) and "rot.jpg" in _all(splits)       # 1600 vs 800 pixels
    assert Image.MAX_IMAGE_PIXELS == 1000
    from captioning.data.images import check_image

    assert check_image(str(root / "Images" / "g0.jpg")) == ("too large", "40x40 = 1,600 pixels")


# ------------------------------------------------------------------ EXIF orientation
def test_exif_orientation_is_applied_everywhere_an_image_is_read(tmp_path, monkeypatch):
    import kangas

    from captioning.data.records import DataReport, Record
    from captioning.data.text import Vocabulary
    from captioning.tracking import kangas_grids

    path = _rotated_jpeg(tmp_path / "rot.jpg")

    def upright(x) -> bool:                                          # red on top, blue below
        x = np.asarray(x, np.float32)
        top, bottom = x[2, x.shape[1] // 2], x[-3, x.shape[1] // 2]
        return top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]

    # captioning (caption.py, evaluation, the feature cache): a record the check has not seen
    vocab = Vocabulary.build(["<start> a red square <end>"], 20, 8)
    rec = Record(id="rot.jpg", image=str(path), captions=("a red square",))
    data = CaptionData({"train": [rec], "val": [], "test": []}, vocab, DataReport(), 1, 32)
    (image,) = next(iter(data.image_dataset([rec], batch_size=1))).numpy()
    assert upright(image)
    # Kangas grids: upright thumbnails; a broken or over-sized file is a grey square
    monkeypatch.setattr(kangas, "Image", lambda im, source=None: im)
    thumb = kangas_grids.image_cell(str(path))
    assert thumb.size == (20, 40) and upright(thumb)
    broken = _cut(_save(tmp_path / "cut.jpg", _noise(64, 64), "JPEG"))
    bomb = _bomb_png(tmp_path / "huge.png")
    for bad in (broken, bomb):
        grey = np.asarray(kangas_grids.image_cell(str(bad)))
        assert (grey == 128).all()
    # training and indexing: the check marks the file for Pillow, which applies the tag
    from captioning.data.images import check_image, pil_pixels

    assert check_image(str(path)) == ("pil", "")
    assert pil_pixels(str(path)).shape == (40, 20, 3)               # upright: 40 high, 20 wide
    rec = Record(id="rot.jpg", image=str(path), captions=("a red square",), decoder="pil")
    data = CaptionData({"train": [rec], "val": [], "test": []}, vocab, DataReport(), 1, 32)
    for ds in (data.image_dataset([rec], batch_size=1),
               data.train_dataset(batch_size=1, seed=0, shuffle=False).map(lambda x, c: x)):
        assert upright(next(iter(ds)).numpy()[0])


# ------------------------------------------------------------------ text encodings
def _kaggle(root: Path, encoding: str) -> Path:
    for name in CAPTIONS:
        write_image(root / "Images" / name)
    with open(root / "captions.txt", "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([n, c] for n, caps in CAPTIONS.items() for c in caps if "Một" not in c)
    return root


def test_captions_not_in_utf8_name_the_file_and_dataset_encoding(tmp_path):
    root = _kaggle(tmp_path / "latin", "latin-1")                  # "grüner", "Straße"
    with pytest.raises(DatasetError, match=r"captions.txt is not valid utf-8 text \(line 12, "
                                           r"byte 0xfc.*Set dataset.encoding"):
        load_records(_ds(root), 0, progress=False)
    splits, _ = load_records(_ds(root, encoding="latin-1"), 0, progress=False)
    assert _all(splits)["c.jpg"].captions[0] == "Ein grüner Baum über der Straße."
    root = _kaggle(tmp_path / "utf16", "utf-16")
    with pytest.raises(DatasetError, match="byte-order mark: dataset.encoding=utf-16"):
        load_records(_ds(root), 0, progress=False)
    assert len(_all(load_records(_ds(root, encoding="utf-16"), 0, progress=False)[0])) == 4
    with pytest.raises(DatasetError, match="dataset.encoding='klingon' is not a known"):
        load_records(_ds(root, encoding="klingon"), 0, progress=False)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path, flickr8k_original, karpathy_json):
    root = _kaggle(tmp_path / "bom", "utf-8-sig")
    assert len(_all(load_records(_ds(root), 0, progress=False)[0])) == 4
    token = flickr8k_original / "Flickr8k_text" / "Flickr8k.token.txt"
    token.write_text(token.read_text(encoding="utf-8"), encoding="utf-8-sig")
    splits, _ = load_records(_ds(flickr8k_original), 0, progress=False)
    assert "a.jpg" in _all(splits)
    path, images = karpathy_json
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8-sig")
    cfg = compose_config("dataset=karpathy", f"dataset.json={path}", f"dataset.images={images}")
    assert len(_all(load_records(cfg.dataset, 0, progress=False)[0])) == 4


# ------------------------------------------------------------------ raw COCO JSON
def test_malformed_coco_json_is_one_message_naming_file_and_fault(coco_raw):
    cfg = compose_config("dataset=coco_json", f"dataset.root={coco_raw}").dataset
    ann = coco_raw / "annotations" / "captions_train2017.json"
    good = json.loads(ann.read_text(encoding="utf-8"))
    text = json.dumps(good)
    cases = [
        (text[: len(text) // 2], r"captions_train2017.json is not valid JSON"),
        (json.dumps({"images": good["images"]}),
         r"captions_train2017.json is not a COCO captions file: expected .*'annotations'"),
        (json.dumps([1, 2]), r"is not a COCO captions file.*Found: list"),
        (json.dumps({**good, "annotations": [*good["annotations"][:1], {"image_id": 100}]}),
         r"captions_train2017.json: annotations\[1\] lacks 'caption'"),
        (json.dumps({**good, "annotations": [{"image_id": 100, "caption": None}]}),
         r"annotations\[0\] has a NoneType 'caption', not a string"),
        (json.dumps({**good, "images": [{"id": 100}]}), r"images\[0\] lacks 'file_name'"),
    ]
    for content, message in cases:
        ann.write_text(content, encoding="utf-8")
        with pytest.raises(DatasetError, match=message):
            load_records(cfg, 0, progress=False)


# ------------------------------------------------------------------ COCO through TFDS
def test_tfds_coco_honours_on_missing(tmp_path):
    from captioning.data.readers.tfds_coco import read_coco_tfds
    from captioning.data.records import DataReport

    cache = tmp_path / "tfds_coco_captions"
    for split in ("train", "restval", "val", "test"):
        names = [f"{split}_{i}.jpg" for i in range(2)]
        for name in names:
            write_image(cache / split / name)
        (cache / split / "captions.json").write_text(
            json.dumps({n: [f"caption of {n}"] for n in names}), encoding="utf-8")
    (cache / "val" / "val_1.jpg").unlink()
    cfg = compose_config("dataset=coco", f"dataset.cache_dir={tmp_path}").dataset
    with pytest.raises(DatasetError, match="val_1.jpg.*dataset.on_missing=skip"):
        read_coco_tfds(cfg, DataReport())
    report = DataReport()
    records, _ = read_coco_tfds(OmegaConf.merge(cfg, {"on_missing": "skip"}), report)
    assert len(records) == 7 and report.removed["missing images"] == 1


# ------------------------------------------------------------------ Karpathy paths
def test_karpathy_filepath_is_confined_to_the_image_folder(karpathy_json, tmp_path):
    path, images = karpathy_json
    outside = tmp_path / "outside"
    write_image(outside / "x.jpg")
    write_image(outside / "y.jpg")
    data = json.loads(path.read_text(encoding="utf-8"))
    sents = [{"raw": "a picture from elsewhere on the disk"}]
    data["images"] += [
        {"filepath": "../outside", "filename": "x.jpg", "split": "train", "sentences": sents},
        {"filepath": str(outside), "filename": "y.jpg", "split": "train", "sentences": sents}]
    path.write_text(json.dumps(data), encoding="utf-8")
    base = ["dataset=karpathy", f"dataset.json={path}", f"dataset.images={images}"]
    with pytest.raises(DatasetError, match=r"images\[4\] \(../outside/x.jpg\) and 1 more "
                                           r"point\(s\) outside dataset.images.*"
                                           r"dataset.allow_outside_images=true"):
        load_records(compose_config(*base).dataset, 0, progress=False)
    splits, _ = load_records(compose_config(*base, "dataset.allow_outside_images=true").dataset,
                             0, progress=False)
    records = _all(splits)
    assert Path(records["x.jpg"].image).resolve() == (outside / "x.jpg").resolve()
    assert records["y.jpg"].image == str(outside / "y.jpg")


def test_image_format_fixtures_are_what_they_claim(tmp_path):
    from PIL import Image

    root = _write_dataset(tmp_path / "ds")
    with Image.open(root / "Images" / "g10.tif") as im:
        assert im.format == "TIFF"
    with Image.open(root / "Images" / "rot.jpg") as im:
        assert im.getexif()[0x0112] == 6 and im.size == (40, 20)
    for name in ("cut.jpg", "cut.tif"):                 # these pass Pillow's header check
        with Image.open(root / "Images" / name) as im:
            im.verify()
    assert len(_bomb_png(tmp_path / "b.png").read_bytes()) < 100_000
