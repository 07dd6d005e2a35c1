"""Per-epoch validation loss of recipe A's training loop vs ours, on the same data and model.

    python -m captioning.bench_epochs --json /work/shared/data/ucm_captions/dataset.json \
        --images /work/shared/data/ucm_captions/images [--epochs 5] [--max-images 900]

Recipe A (``../shared/RECIPES.md``) takes one optimizer step per caption: five per batch of
64 images. Ours takes one step per batch, with all of its images' captions, so an epoch has a
fifth of the updates at the same learning rate. This trains recipe A's preset
(``experiment=flickr8k_transformer``: its decoder, Adam, batch 64, learning rate 1e-4) both
ways from the same initial weights, on the same cached features of a frozen, randomly
initialised EfficientNetB0 (ImageNet weights are not needed to compare the loops), and prints
the validation loss (masked per-token cross-entropy on every caption) after each epoch.

Ways (``--ways``, comma-separated): ``recipe`` (5 steps per batch of 64, lr 1e-4) and
``ours:B:LR`` (one step per batch of B images, learning rate LR), e.g. ``ours:64:1e-4`` (no
compensation), ``ours:13:1e-4`` (the same number of steps per epoch), ``ours:64:5e-4``.
"""

# ruff: noqa: E402 - TensorFlow is imported quietly before the modules that load it
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from captioning.quiet import import_tensorflow

import_tensorflow()   # before the modules below load it, without its start-up noise (quiet.py)

from captioning.config import compose as compose_config
from captioning.data.datamodule import build_data
from captioning.data.features import attach_feature_cache
from captioning.models.build import build_model

DEFAULT_WAYS = "recipe,ours:64:1e-4,ours:13:1e-4,ours:64:5e-4"


def compose(args):
    return compose_config([
        "experiment=flickr8k_transformer", "dataset=karpathy", f"dataset.json={args.json}",
        f"dataset.images={args.images}", f"dataset.max_images={args.max_images}",
        "backbone.weights=null", f"backbone.image_size={args.image_size}",
        # no augmentation, so both ways read the same cached features
        "augment.flip=none", "augment.rotation=0.0", "augment.contrast=0.0",
        "logger=none", f"paths.cache_dir={args.cache_dir}", f"seed={args.seed}",
        *args.overrides])


def recipe_step(model, optimizer):
    """Recipe A's train_step on cached features: per caption, an encoder pass, a decoder pass
    and an optimizer step (five per batch)."""
    import tensorflow as tf

    @tf.function
    def step(feats, captions):
        for i in range(captions.shape[1]):
            with tf.GradientTape() as tape:
                memory = model.encode(feats, training=True)
                loss, _, _ = model.decode_loss(memory, captions[:, i:i + 1], training=True)
            variables = model.encoder.trainable_variables + model.decoder.trainable_variables
            optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def train_one_way(cfg, data, way: str, epochs: int, seed: int) -> dict:
    """Train from the seed's initial weights one way; returns steps/epoch, val losses, time."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(cfg, data.vocab.size)
    if way == "recipe":
        batch, lr = 64, 1e-4
    else:
        _, batch, lr = way.split(":")
        batch, lr = int(batch), float(lr)
    optimizer = keras.optimizers.Adam(lr)
    model.compile(optimizer=optimizer)
    train = data.train_dataset(batch, seed)
    val = data.train_dataset(64, seed, split="val", shuffle=False)
    n = len(data.splits["train"])
    steps = math.ceil(n / batch) * (data.captions_per_image if way == "recipe" else 1)
    step = recipe_step(model, optimizer) if way == "recipe" else None
    losses, t0 = [], time.perf_counter()
    for _ in range(epochs):
        if step is None:
            model.fit(train, epochs=1, verbose=0, shuffle=False)
        else:
            for feats, captions in train:
                step(feats, captions)
        losses.append(float(model.evaluate(val, verbose=0, return_dict=True)["loss"]))
        print(f"  {way}: epoch {len(losses)} val_loss {losses[-1]:.4f}", flush=True)
    return {"way": way, "batch": batch, "lr": lr, "steps_per_epoch": steps,
            "val_loss": losses, "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="a Karpathy-format dataset.json")
    p.add_argument("--images", required=True, help="its image folder")
    p.add_argument("--max-images", type=int, default=900)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ways", default=DEFAULT_WAYS)
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/captioning"))
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. decoder.dim=256")
    args = p.parse_args(argv)

    cfg = compose(args)
    data = build_data(cfg, progress=False)
    attach_feature_cache(cfg, data, build_model(cfg, data.vocab.size))
    print(f"{len(data.splits['train'])} train / {len(data.splits['val'])} val images, "
          f"vocabulary {data.vocab.size}, decoder dim {cfg.decoder.dim}", flush=True)
    results = [train_one_way(cfg, data, w, args.epochs, args.seed) for w in args.ways.split(",")]
    head = "| way | batch | lr | steps/epoch | " + " | ".join(
        f"epoch {i + 1}" for i in range(args.epochs)) + " | seconds |"
    lines = [head, "|" + "---|" * (args.epochs + 5)]
    for r in results:
        lines.append(f"| {r['way']} | {r['batch']} | {r['lr']:g} | {r['steps_per_epoch']} | "
                     + " | ".join(f"{v:.3f}" for v in r["val_loss"]) + f" | {r['seconds']:.0f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
