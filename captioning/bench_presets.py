"""``make bench ARGS=--presets``: every preset and default a user runs, its training epoch
through ``run.py`` against recipe A's way at the same sizes, side by side in one process.

    python -m captioning.bench --presets [--presets-only] [--preset-names default,flickr8k,...]

Each row: ``python run.py <preset> trainer.max_epochs=3`` on the same images (the UCM sample,
``dataset=karpathy`` with the preset's own backbone, input size, decoder, text and batch
settings; the default run on its synthetic set), its median epoch after the first (the first
traces), then recipe A's way with that preset's model on the same training images (the frozen
CNN on every batch, one optimizer step per caption: ``bench.recipe_a_train_step``). Per-epoch
caption scoring is off in both (recipe A has none); the validation loss stays in ours. The
feature cache's build (and the augmented views', ``augment.cached_views``) happens once per
image set, before the first epoch: reported as its own column (seconds before training).

For the augmented preset (``flickr8k_transformer``), ``--breakdown`` splits one epoch into the
input pipeline, the augmentation + CNN forward pass, and the decoder's training steps, for the
path that runs the CNN every step (cache bypassed) and the cached views' path.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from captioning.config import compose
from captioning.data.datamodule import build_data
from captioning.data.features import attach_feature_cache
from captioning.io import scratch_dir
from captioning.models.build import build_model
from captioning.models.captioner import masked_loss_and_accuracy
from captioning.training.compile import compile_captioner

ROOT = Path(__file__).resolve().parents[1]
UCM = Path(os.environ.get("CAPTIONING_UCM", "/work/shared/data/ucm_captions"))
# What every row turns off: scoring and grids each epoch (recipe A scores nothing while it
# trains), METEOR's Java start, self-critical epochs, ImageNet weights (no network here).
COMMON = ["logger=none", "backbone.weights=null", "callbacks.val_captions.every_n_epochs=0",
          "callbacks.kangas.enabled=false", "evaluation.meteor=false", "trainer.scst_epochs=0",
          "callbacks.checkpoints.select=last", "evaluation.show=0",
          "trainer.check_val_every_n_epoch=1"]          # ucm_scratch: 5, more than a row runs
REAL = ("flickr8k", "flickr30k", "karpathy", "coco", "coco_json")


def ucm(images: int) -> list[str]:
    return ["dataset=karpathy", f"dataset.json={UCM / 'dataset.json'}",
            f"dataset.images={UCM / 'images'}", f"dataset.max_images={images}"]


def dataset_sizes(name: str) -> list[str]:
    """``dataset=<name>``'s own settings (its backbone, input size, decoder, text lengths), as
    overrides for the UCM images read through ``dataset=karpathy``."""
    c = compose([f"dataset={name}"])
    return [f"backbone={c.backbone.name}", f"backbone.image_size={c.backbone.image_size}",
            f"backbone.trainable={str(c.backbone.trainable).lower()}",
            f"decoder={c.decoder.name}", f"decoder.dim={c.decoder.dim}",
            f"text.seq_len={c.text.seq_len}", f"text.vocab_size={c.text.vocab_size}"]


def presets(images: int) -> dict[str, list[str]]:
    """Row name -> overrides: the default run, each real dataset's default, the presets."""
    rows = {"default (synthetic)": [f"dataset.max_images={images}"]}
    for name in REAL:
        rows[f"dataset={name}"] = [*ucm(images), *dataset_sizes(name)]
    rows["flickr8k_transformer"] = ["experiment=flickr8k_transformer", *ucm(images)]
    rows["coco_gru"] = ["experiment=coco_gru", *ucm(images)]
    # its holdout list names images a 256-image subset may not have
    rows["ucm_scratch"] = ["experiment=ucm_scratch", *ucm(images), "dataset.holdout_list=null",
                          "dataset.train_on_holdout=false",
                          "dataset.untouched_list=null"]
    return rows


def run_epochs(overrides: list[str], epochs: int) -> dict:
    """``run.py`` with ``overrides``: its epochs' seconds (history.csv), the seconds before the
    first epoch (the feature cache's build among them) and what it said about the cache. The
    run's folder (about a GB with its cache) is removed once read."""
    with tempfile.TemporaryDirectory(prefix="bench-preset-") as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "run.py", *overrides, *COMMON, f"trainer.max_epochs={epochs}",
               f"hydra.run.dir={out}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"bench --presets: {' '.join(cmd)} failed (exit {proc.returncode}):"
                             "\n" + proc.stdout[-2000:] + proc.stderr[-2000:])
        seconds = [float(r["seconds"]) for r in csv.DictReader(open(out / "history.csv"))]
        meta = json.loads((out / "metrics.json").read_text()).get("meta", {})
    said = proc.stdout
    cache = ("cached views" if "augmented views:" in said else
             "cached" if "feature cache:" in said else
             "bypassed" if "feature cache bypassed" in said else "none (CNN trained)")
    precision = meta.get("precision", "float32").replace("mixed_", "")
    return {"epochs": seconds, "epoch": statistics.median(seconds[1:] or seconds),
            "wall": wall, "cache": cache, "precision": precision}


def recipe_a_epoch(overrides: list[str]) -> float:
    """One epoch of recipe A's way with the preset's model on its training images (decoded
    and resized before timing; traced on each batch shape first, as our epochs after the
    first are)."""
    cfg = compose([*overrides, *COMMON])
    keras.utils.set_random_seed(0)
    data = build_data(cfg, progress=False)
    model = build_model(cfg, data.vocab.size)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    ds = data.train_dataset(int(cfg.trainer.batch_size), 0).cache()
    for _ in ds:
        pass
    step = recipe_a_train_step(model)
    shapes = {}
    for x, c, *_ in ds:         # trace each batch shape (a short last batch) untimed; recipe A
        shapes.setdefault((x.shape[0], c.shape[1]), (x, c))     # has no class head: *_ unused
    for x, c in shapes.values():
        step(x, c)
    t0 = time.perf_counter()
    for x, c, *_ in ds:
        step(x, c)
    return time.perf_counter() - t0


def recipe_a_train_step(model):
    """Recipe A's train_step: CNN once per batch, then per caption an encoder pass, a decoder
    pass and an optimizer step (five per batch)."""

    @tf.function
    def step(images, captions):
        feats = model.backbone(images, training=False)
        for i in range(captions.shape[1]):
            seq = captions[:, i]
            with tf.GradientTape() as tape:
                memory = model.encoder(feats, training=True)
                logits = model.decoder.project(model.decoder(seq[:, :-1], memory, training=True))
                loss, _, _ = masked_loss_and_accuracy(seq[:, 1:], logits)
            variables = model.encoder.trainable_variables + model.decoder.trainable_variables
            model.optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def breakdown(overrides: list[str]) -> dict:
    """One epoch of the preset split in parts, both paths in this process: with the CNN every
    step (the cache bypassed: decoded images in memory -> augmentation + CNN -> decoder step)
    and from the cached views (features -> decoder step). Each part timed alone after a
    warm-up pass; "decoder steps" is the epoch (``model.fit``) less the other parts."""
    cfg = compose([*overrides, *COMMON, "augment.cached_views=0"])
    keras.utils.set_random_seed(0)
    data = build_data(cfg, progress=False)
    model, _ = compile_captioner(cfg, data, tf.distribute.get_strategy())
    batch = int(cfg.trainer.batch_size)
    images, steps = data.train_dataset(batch, 0), data.steps("train", batch)
    encode = tf.function(lambda x: model.encode(x, training=True))
    parts = {}
    for _ in range(2):                                        # warm-up, then measured
        parts["input pipeline"] = _seconds(lambda: [None for _ in images])
        parts["augmentation + CNN forward"] = _seconds(lambda: [encode(x) for x, _ in images])
        epoch = _seconds(lambda: model.fit(images, epochs=1, verbose=0, shuffle=False,
                                           steps_per_epoch=steps))      # its length is unknown
    parts["decoder steps"] = epoch - sum(parts.values())
    before = {**parts, "epoch": epoch}
    fresh = f"paths.cache_dir={scratch_dir('bench-views-')}"    # time the build
    views = compose([*overrides, *COMMON, fresh])
    build = _seconds(lambda: attach_feature_cache(views, data, model))
    keras.utils.set_random_seed(0)       # a fresh model: its train step traced for features
    model, _ = compile_captioner(cfg, data, tf.distribute.get_strategy())
    feats = data.train_dataset(batch, 0)
    for _ in range(2):
        read = _seconds(lambda: [None for _ in feats])
        epoch = _seconds(lambda: model.fit(feats, epochs=1, verbose=0, shuffle=False))
    after = {"input pipeline": read, "augmentation + CNN forward": 0.0,
             "decoder steps": epoch - read, "epoch": epoch}
    # views_build: the plain features of every split too (a fresh cache folder)
    return {"bypassed": before, "cached_views": after, "views_build": build,
            "views": int(views.augment.cached_views), "images": len(data.splits["train"])}


def preset_rows(names: list[str] | None, images: int, epochs: int, console) -> list[dict]:
    """Each preset's row (alternating: recipe A's epoch, then the run's)."""
    rows = []
    for name, overrides in presets(images).items():
        if names and name not in names and name.split("=")[-1] not in names:
            continue
        if "dataset=karpathy" in overrides and not (UCM / "dataset.json").is_file():
            console.print(f"  {name}: skipped, no UCM sample at {UCM} (CAPTIONING_UCM=...)")
            continue
        console.print(f"  {name}: recipe A's way, then run.py ({epochs} epochs) ...")
        recipe = recipe_a_epoch(overrides)
        run = run_epochs(overrides, epochs)
        rows.append({"preset": name, "recipe_a": recipe, **run, "ratio": recipe / run["epoch"]})
    return rows


def print_presets(console, rows: list[dict], split: dict | None) -> None:
    from rich.table import Table

    table = Table(title="presets through run.py vs recipe A's way, same images and sizes "
                        "(median epoch after the first; before: seconds until the first epoch)")
    for col in ("preset", "epoch (s)", "recipe A (s)", "ratio", "feature cache", "precision",
                "before (s)"):
        table.add_column(col, justify="left" if col in ("preset", "feature cache", "precision")
                         else "right")
    for r in rows:
        first = r["wall"] - sum(r["epochs"])
        table.add_row(r["preset"], f"{r['epoch']:.1f}", f"{r['recipe_a']:.1f}",
                      f"{r['ratio']:.1f}x", r["cache"], r.get("precision", "float32"),
                      f"{first:.0f}")
    console.print(table)
    if split:
        t = Table(title=f"flickr8k_transformer epoch by part ({split['images']} images; "
                        f"plain features + {split['views']} views built once in "
                        f"{split['views_build']:.1f} s)")
        for col in ("part", "CNN every step (s)", "cached views (s)"):
            t.add_column(col, justify="left" if col == "part" else "right")
        for part in split["bypassed"]:
            t.add_row(part, f"{split['bypassed'][part]:.2f}",
                      f"{split['cached_views'][part]:.2f}")
        console.print(t)


def write_json(path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2))
