"""Shared fixtures: the real Hydra config composed with overrides, and tiny datasets written
in the exact on-disk layouts users download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.slurm_fixture import slurm_cluster  # noqa: E402,F401 - the fixture of tests marked slurm

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Synthetic datasets and feature caches go to a per-session folder, not ~/.cache."""
    os.environ["CAPTIONING_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _float32_after_each_test():
    """A run with trainer.precision=auto (flickr8k_transformer) sets Keras's process-wide
    policy to mixed_bfloat16 on a CPU that runs it; tests that build models directly after it,
    on the same worker, must not inherit it."""
    yield
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_dtype_policy("float32")


def compose_config(*overrides: str):
    """The real config from conf/, as `python run.py OVERRIDES` would compose it (through
    `captioning.config.compose`, the tools' own path). A Hydra left initialised by a test
    that failed midway is cleared first."""
    from hydra.core.global_hydra import GlobalHydra

    from captioning.config import compose

    GlobalHydra.instance().clear()
    return compose(overrides)


def write_image(path: Path, color=(200, 30, 30), size=40) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, quality=90)
    return path


CAPTIONS = {
    "a.jpg": ["A red square, on grey.", "a square that is red", "the red box", "red square here",
              "one red square"],
    "b.jpg": ["A blue circle .", "a circle, blue and round", "blue ball", "the blue circle",
              "one blue circle"],
    "c.jpg": ["Ein grüner Baum über der Straße.", "Một con chó đang chạy", "green tree", "a tree",
              "the tree"],
    "d.jpg": ["a yellow sun", "yellow sun, bright", "the sun", "sun in the sky", "a bright sun"],
}


@pytest.fixture
def flickr8k_kaggle(tmp_path) -> Path:
    """Kaggle layout: captions.txt (CSV, quoted commas, non-ASCII) + Images/."""
    import csv

    root = tmp_path / "flickr8k"
    for i, name in enumerate(CAPTIONS):
        write_image(root / "Images" / name, (50 * i, 100, 200 - 40 * i))
    with open(root / "captions.txt", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for name, caps in CAPTIONS.items():
            w.writerows([name, c] for c in caps)
    return root


@pytest.fixture
def flickr8k_original(tmp_path) -> Path:
    """Original release: Flickr8k_text/Flickr8k.token.txt + split lists, Flicker8k_Dataset/."""
    root = tmp_path / "flickr8k_orig"
    for name in CAPTIONS:
        write_image(root / "Flicker8k_Dataset" / name)
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    lines = [f"{n}#{k}\t{c}" for n, caps in CAPTIONS.items() for k, c in enumerate(caps)]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (text / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\n")
    (text / "Flickr_8k.devImages.txt").write_text("c.jpg\n")
    (text / "Flickr_8k.testImages.txt").write_text("d.jpg\n")
    return root


@pytest.fixture
def flickr30k_kaggle(tmp_path) -> Path:
    """Kaggle Flickr30k: results.csv with '| ' separators and stray spaces + flickr30k_images/."""
    root = tmp_path / "flickr30k"
    lines = ["image_name| comment_number| comment"]
    for name, caps in CAPTIONS.items():
        write_image(root / "flickr30k_images" / name)
        lines += [f"{name}| {k}|  {c} " for k, c in enumerate(caps)]
    (root / "results.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def karpathy_json(tmp_path) -> tuple[Path, Path]:
    """A Karpathy split file (COCO-style, with filepath and restval) + its image folders."""
    import json

    images = tmp_path / "coco_images"
    entries = []
    for i, (name, caps) in enumerate(CAPTIONS.items()):
        folder = "train2014" if i < 2 else "val2014"
        write_image(images / folder / name)
        entries.append({"filepath": folder, "filename": name, "imgid": i,
                        "split": ["train", "restval", "val", "test"][i],
                        "sentences": [{"raw": c, "tokens": c.split()} for c in caps]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": entries}), encoding="utf-8")
    return path, images


@pytest.fixture
def coco_raw(tmp_path) -> Path:
    """Raw COCO: annotations/captions_{train,val}2017.json + train2017/, val2017/."""
    import json

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    names = list(CAPTIONS)
    for part, chosen in (("train", names[:3]), ("val", names[3:])):
        images, anns = [], []
        for i, name in enumerate(chosen):
            write_image(root / f"{part}2017" / name)
            images.append({"id": 100 + i, "file_name": name})
            anns += [{"id": 1000 + 10 * i + k, "image_id": 100 + i, "caption": c}
                     for k, c in enumerate(CAPTIONS[name])]
        (root / "annotations" / f"captions_{part}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns}), encoding="utf-8")
    return root


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers), tests that share a module-scoped
    fixture (a trained tiny model, a running Kangas server) go to one worker, so the fixture
    is built once; `--dist loadgroup` spreads the rest test by test."""
    for item in items:
        defs = getattr(item, "_fixtureinfo", None)
        shared = defs and any(d.scope == "module" for fd in defs.name2fixturedefs.values()
                              for d in fd)
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # Modules with slow end-to-end tests first: two workers then finish together instead of one
    # running a long test alone at the end. A module's tests stay together and in order, so its
    # module-scoped fixtures are built once (pytest tears them down when another module's test
    # comes between).
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)
