"""Speed benchmark: this framework vs the published recipe A's way, measured side by side in
one process, on the same data and model sizes. Prints a table of ratios and absolute figures.

    python -m captioning.bench [--images 256] [--image-size 299] [--vocab-size 10000] [--quick]

It ends with the speed goals, each with its measured value on this machine: the training epoch
against recipe A's (>= 5x), the training step's achieved GFLOP/s against this CPU's own float32
GEMM (>= 50%), a self-critical step against a cross-entropy one and validation captioning
against the epoch on the UCM preset's shapes (<= 1.5x, <= 10%), and greedy generation against
recipe A's (>= 100x) and against its arithmetic bound. ``--quick`` skips the end-to-end,
per-backbone extraction and peak-memory sections. ``--scaling N,N`` prints only the scaling
table at the real-data sizes (``--scaling-memory-mb M``: each size in a memory cgroup);
docs/scale.md turns its figures into a COCO run's cost on GPUs and CPU nodes.
``--presets`` adds one row per preset and default a user runs (its epoch through ``run.py``,
recipe A's way with that preset's model on the same images, the ratio, the feature cache) and
the augmented preset's epoch by part, with its goal (>= 5x); ``--presets-only`` runs just that
(``captioning/bench_presets.py``). The greedy goal times the default decoding
(``decode.jit_compile=auto``: the XLA loop or the plain one, as this CPU decides) and requires
the XLA loop's captions to equal the plain loop's.

What the recipe-A way does (``../shared/RECIPES.md``): the frozen CNN runs on every batch of
every epoch; each batch takes five optimizer steps, one per caption, each re-running the
encoder; generation re-runs the whole decoder over the padded sequence for every new token,
one image at a time, re-tokenising the partial caption string at each step.
"""

# ruff: noqa: E402 - TensorFlow is imported quietly before the modules that load it
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from captioning.quiet import import_tensorflow

import_tensorflow()   # before the modules below load it, without its start-up noise (quiet.py)

from captioning.bench_presets import (
    breakdown,
    preset_rows,
    presets,
    print_presets,
    recipe_a_train_step,
)
from captioning.config import compose
from captioning.data.datamodule import build_data
from captioning.data.features import attach_feature_cache, ensure_features
from captioning.flops import Sizes, caption_flops, training_step_flops
from captioning.io import memory_cgroup_folder, scratch_dir
from captioning.models.backbones import build_backbone
from captioning.models.build import build_model
from captioning.models.decoding import Generator, resolve_jit
from captioning.provenance import cpu_info
from captioning.training.callbacks import ValidationCaptions
from captioning.training.compile import compile_captioner
from captioning.training.runtime import cpu_bfloat16
from captioning.training.scst import enable_self_critical


def machine() -> str:
    cpu = cpu_info().get("model name") or "unknown CPU"
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()}, TF {tf.__version__}"
            + (f", GPUs {gpus}" if gpus else ", no GPU"))


def timed(fn, repeat: int = 1) -> float:
    fn()                                   # warm-up: tracing and compilation are not steady state
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def build(args, overrides):
    return compose([
        "backbone=efficientnetb0", f"backbone.image_size={args.image_size}",
        "backbone.weights=null",
        "decoder.dim=512", "decoder.num_heads=2", "decoder.ff_dim=512", "logger=none",
        f"dataset.max_images={args.images}", f"dataset.image_size={min(args.image_size, 128)}",
        f"dataset.num_images={max(args.images, 2000)}", "dataset.val_fraction=0.1",
        "dataset.test_fraction=0.0",
        f"paths.cache_dir={args.cache_dir}", *overrides])


def recipe_a_generate(model, vocab, features, max_len):
    """Recipe A's greedy generation for one image: the whole decoder over the padded sequence
    for each new token, the partial caption re-tokenised from its string every step."""
    import numpy as np

    memory = model.encoder(features[None], training=False)
    caption = "<start>"
    for i in range(max_len - 1):
        tokens = vocab.encode([caption])[:, :-1]                       # string -> ids, every step
        logits = model.decoder.project(model.decoder(tokens, memory, training=False))
        token = int(np.argmax(np.asarray(logits)[0, i]))
        caption += " " + vocab.tokens[token]                # never stops early (as published)
    return caption


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256,
                   help="training images (recipe A: 256-image epoch)")
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--vocab-size", type=int, default=10000,
                   help="decoder vocabulary (recipe A: 10,000)")
    p.add_argument("--batch-size", type=int,
                   help="default 64; --scaling: the trainer's batch size (32)")
    p.add_argument("--gen-images", type=int, default=8,
                   help="images for the (slow) recipe-A generation timing")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/captioning"))
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--quick", action="store_true",
                   help="skip end to end, per-backbone extraction and peak memory (sections 3-5)")
    p.add_argument("--preset-images", type=int, default=1470,
                   help="train images of the UCM-shaped measurement (UCM with its holdout: 1,470)")
    p.add_argument("--scaling", metavar="N,N,...",
                   help="only the scaling table at the real-data sizes (EfficientNetB0 224 px "
                        "features cached, Transformer 512, vocabulary 10,000): cache size and "
                        "build time, epoch and step time, peak memory on synthetic sets of "
                        "these sizes (e.g. 1000,6000); docs/scale.md")
    p.add_argument("--scaling-memory-mb", type=int, metavar="M",
                   help="--scaling: run each size in a memory cgroup limited to M MiB (root; "
                        "the page cache is emptied first, so the cache is read inside it)")
    p.add_argument("--scaling-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--presets", action="store_true",
                   help="also one row per preset and default (run.py's epoch, recipe A's, the "
                        "ratio, the feature cache) and flickr8k_transformer's epoch by part; "
                        "tens of minutes (captioning/bench_presets.py)")
    p.add_argument("--presets-only", action="store_true", help="only the --presets section")
    p.add_argument("--preset-names", help="only these rows, e.g. flickr8k_transformer,coco_gru")
    p.add_argument("--preset-epochs", type=int, default=3, help="run.py epochs per preset row")
    p.add_argument("--preset-run-images", type=int, default=256,
                   help="images of the UCM sample (or the synthetic set) each preset row uses")
    args = p.parse_args(argv)
    if args.presets_only:
        return presets_section(args)
    if args.scaling_child:
        return scaling_child(args)
    if args.scaling:
        return scaling_table(args, [int(n) for n in args.scaling.split(",")])
    args.batch_size = args.batch_size or 64

    import keras
    import numpy as np
    import tensorflow as tf
    from rich.console import Console

    console = Console()
    console.print(f"[bold]Machine:[/] {machine()}")
    gemm = gemm_gflops()                       # first, on a quiet process: the machine's ceiling
    console.print(f"float32 GEMM 2048^3: {gemm:.0f} GFLOP/s (best of 5)")
    cfg = build(args, [])
    keras.utils.set_random_seed(0)
    data = build_data(cfg, progress=False)
    vocab_size = max(args.vocab_size, data.vocab.size)
    model = build_model(cfg, vocab_size)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    train_records = data.splits["train"]
    rows, results = [], {"machine": machine(), "images": len(train_records),
                         "image_size": args.image_size, "vocab_size": vocab_size}

    # 1. Training epoch: recipe-A way vs cached features + one step per batch.
    console.print("1/5 training epochs (recipe-A way, then cached features) ...")
    image_ds = data.train_dataset(args.batch_size, 0).cache()
    for _ in image_ds:
        pass                                                            # decode JPEGs before timing
    step_a = recipe_a_train_step(model)
    t_recipe = timed(lambda: [step_a(x, c) for x, c in image_ds])
    from omegaconf import OmegaConf

    fresh = OmegaConf.merge(
        cfg, {"paths": {"cache_dir": str(scratch_dir("bench-features-"))}})
    t0 = time.perf_counter()                                    # a fresh cache: measure the build
    feats, row_of, _ = ensure_features(fresh, model.backbone, data,
                                       train_records + data.splits["val"],
                                       args.batch_size, progress=False)
    t_cache_build = time.perf_counter() - t0
    data.use_features(feats, row_of)
    feat_ds = data.train_dataset(args.batch_size, 0).cache()
    t_ours = timed(lambda: model.fit(feat_ds, epochs=1, verbose=0, shuffle=False))
    rows.append(("training epoch (s)", t_recipe, t_ours,
                 "recipe A: CNN every batch, 5 steps/batch"))
    sizes = Sizes.of(model)
    epoch_flops = sum(training_step_flops(sizes, *batch_shape(c)) for _, c in feat_ds)
    achieved = epoch_flops / t_ours / 1e9
    t_bf16 = bfloat16_epoch(cfg, vocab_size, feat_ds)       # None where the CPU cannot
    if t_bf16 is not None:
        rows.append(("training epoch, bfloat16 (s)", t_recipe, t_bf16,
                     "trainer.precision=auto on this CPU (mixed_bfloat16)"))
    results["epoch_seconds"] = {"recipe_a": t_recipe, "ours": t_ours, "cache_build": t_cache_build,
                                "ours_bfloat16": t_bf16}
    results["training_gflops"] = {"epoch_gflop": epoch_flops / 1e9, "achieved": achieved,
                                  "gemm": gemm}

    # 1b. Decoder training pass with C captions per image: a plain batched decoder (the memory
    # repeated C times, every position padded to the longest caption) vs what Captioner.
    # decode_loss runs (cross-attention keys/values once per image, the blocks on real tokens
    # only: call_packed). The padded pass with shared memory is timed too, for the split.
    x0, c0 = next(iter(feat_ds))
    memory = model.encoder(x0)
    c = c0.shape[1]
    captions = tf.reshape(c0, (-1, c0.shape[2]))
    tokens, real = captions[:, :-1], captions[:, 1:] > 0

    def decoder_pass(mode):
        @tf.function
        def f(m):
            with tf.GradientTape() as tape:
                tape.watch(m)
                if mode == "packed":
                    h = model.decoder.call_packed(tokens, m, real, repeats=c, training=True)
                else:
                    h = tf.boolean_mask(
                        model.decoder(tokens, m, training=True, repeats=c) if mode == "shared"
                        else model.decoder(tokens, tf.repeat(m, c, axis=0), training=True), real)
                loss = tf.reduce_mean(h ** 2)
            return tape.gradient(loss, [m, *model.decoder.trainable_variables])[0]
        f(memory)
        return timed(lambda: f(memory).numpy(), repeat=5)

    t_rep, t_shared = decoder_pass("repeated"), decoder_pass("shared")
    t_packed = decoder_pass("packed") if model.decoder.supports_packed else t_shared
    rows.append(("decoder fwd+bwd, one batch (s)", t_rep, t_packed,
                 f"{c} captions/image: K/V once per image ({t_shared:.3f} s), then real "
                 f"tokens only"))
    results["decoder_pass_seconds"] = {"memory_repeated": t_rep, "memory_shared": t_shared,
                                       "packed": t_packed}

    # 2. Captions/s from features, both to full length (no end token can stop them).
    console.print("2/5 generation from features ...")
    gen_feats = np.asarray(feats[: args.gen_images], np.float32)
    max_len = data.vocab.seq_len
    t_a = timed(lambda: [recipe_a_generate(model, data.vocab, f, max_len)
                         for f in gen_feats]) / len(gen_feats)
    all_feats = np.asarray(feats[: min(len(feats), 256)], np.float32)
    plain = Generator(model, data.vocab.start_id, -1, max_len, "greedy")
    loop = Generator(model, data.vocab.start_id, -1, max_len, "greedy", jit_compile="loop")
    beam = Generator(model, data.vocab.start_id, -1, max_len, "beam", beam_size=5)
    t_p, t_l = alternated(lambda: plain(all_feats), lambda: loop(all_feats), repeat=3)
    t_p, t_l = t_p / len(all_feats), t_l / len(all_feats)
    same = bool(np.array_equal(np.asarray(plain(all_feats)), np.asarray(loop(all_feats))))
    # what a run uses unless told otherwise: decode.jit_compile=auto, decided for this machine
    auto = resolve_jit("auto", "greedy")
    t_g = t_l if auto == "loop" else t_p
    t_b = timed(lambda: beam(all_feats), repeat=1) / len(all_feats)
    rows.append(("captions/s from features, greedy, no XLA", 1 / t_a, 1 / t_p,
                 "decode.jit_compile=false; recipe A: batch 1, full re-run per token"))
    rows.append(("captions/s from features, greedy, XLA loop", 1 / t_a, 1 / t_l,
                 f"decode.jit_compile=loop; captions identical: {same}"))
    results["captions_per_second"] = {"greedy_plain": 1 / t_p, "greedy_loop": 1 / t_l,
                                      "greedy_identical": same, "auto": str(auto)}
    rows.append(("captions/s from features, beam 5", None, 1 / t_b,
                 "beam-5 cost vs greedy: see ratio"))
    bound = gemm * 1e9 / caption_flops(sizes, max_len)      # captions/s if all were GEMM-speed
    results.setdefault("captions_per_second", {}).update(
        {"recipe_a": 1 / t_a, "greedy": 1 / t_g, "beam5": 1 / t_b})

    # UCM preset shapes: a self-critical step vs a cross-entropy one; validation captioning.
    console.print("UCM preset shapes: cross-entropy and self-critical steps, validation "
                  "captioning ...")
    preset = preset_costs(args)
    results["ucm_preset"] = preset
    goals = [
        ("training epoch vs recipe A", f"{t_recipe / t_ours:.1f}x", ">= 5x",
         t_recipe / t_ours >= 5),
        *([("training epoch vs recipe A, bfloat16 (trainer.precision=auto here)",
            f"{t_recipe / t_bf16:.1f}x", "(reported)", None)] if t_bf16 else []),
        ("training step GFLOP/s vs float32 GEMM",
         f"{achieved:.0f} / {gemm:.0f} = {achieved / gemm:.0%}", ">= 50%", achieved / gemm >= 0.5),
        (f"self-critical step vs cross-entropy step (UCM preset; samples "
         f"{preset['sampled_length_mean']:.1f} tokens, longest {preset['sampled_length_max']})",
         f"{preset['scst_step'] / preset['ce_step']:.2f}x", "<= 1.5x",
         preset["scst_step"] / preset["ce_step"] <= 1.5),
        ("validation captioning, share of the epoch (UCM preset)",
         f"{preset['val_share']:.1%}", "<= 10%", preset["val_share"] <= 0.10),
        (f"greedy captions/s from features vs recipe A (the default: jit_compile=auto, "
         f"here {'the XLA loop' if auto == 'loop' else 'no XLA'})",
         f"{t_a / t_g:.0f}x", ">= 100x", t_a / t_g >= 100 and same),
        ("greedy captions/s vs its arithmetic bound",
         f"{1 / t_g:.0f} / {bound:.0f} = {1 / t_g / bound:.0%}", "(reported)", None),
    ]
    if args.presets:
        results["presets"] = presets_rows_and_goals(args, console, goals)
    results["goals"] = [{"measure": m, "value": v, "goal": g, "met": ok} for m, v, g, ok in goals]
    if args.quick:
        print_tables(console, args, train_records, vocab_size, rows, goals, t_recipe, t_ours)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0

    # 3. End to end from JPEG files vs the backbone alone on the same files.
    console.print("3/5 end to end from JPEG files ...")
    data.features = None
    files = train_records[: min(len(train_records), 128)]
    e2e = Generator(model, data.vocab.start_id, data.vocab.end_id, max_len, "greedy")
    t_e2e = timed(lambda: [e2e(x) for x in data.image_dataset(files, args.batch_size)]) / len(files)
    backbone_fn = tf.function(lambda x: model.backbone(x, training=False))
    t_cnn = timed(lambda: [backbone_fn(x)
                           for x in data.image_dataset(files, args.batch_size)]) / len(files)
    rows.append(("captions/s end to end from JPEG", None, 1 / t_e2e,
                 f"backbone alone: {1 / t_cnn:.1f} images/s"))
    results["end_to_end"] = {"captions_per_second": 1 / t_e2e,
                             "backbone_images_per_second": 1 / t_cnn}

    # 4. Feature extraction per backbone, and the cache's size on disk.
    console.print("4/5 feature extraction per backbone ...")
    extraction = {}
    for name in ("efficientnetb0", "inceptionresnetv2"):
        c = build(args, [f"backbone={name}", f"backbone.image_size={args.image_size}",
                         "backbone.weights=null"])

        net = build_backbone(c)
        fn = tf.function(lambda x, net=net: net(x, training=False))
        t = timed(lambda fn=fn: [fn(x)
                                 for x in data.image_dataset(files, args.batch_size)]) / len(files)
        s, ch = net.output_shape[1:]
        extraction[name] = {"images_per_second": 1 / t, "kib_per_image_float16": s * ch * 2 / 1024}
    results["extraction"] = extraction

    # 5. Peak memory of a real training run (a separate process, the default config, 1 epoch).
    console.print("5/5 peak memory of a default training run ...")
    root = Path(__file__).resolve().parents[1]
    import psutil

    proc = subprocess.Popen([sys.executable, "run.py", "trainer.max_epochs=1", "logger=none",
                             "callbacks.kangas.enabled=false",
                             f"hydra.run.dir={scratch_dir('bench-run-')}",
                             "evaluation.show=0"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Poll the process tree's resident memory (getrusage would count this big process's pages,
    # inherited at fork, as the child's peak).
    peak, p = 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"the default training run failed (exit {proc.returncode})")
    peak /= 2 ** 20
    results["peak_rss_mib_default_run"] = peak

    print_tables(console, args, train_records, vocab_size, rows, goals, t_recipe, t_ours)
    console.print(f"feature cache build: {t_cache_build:.1f} s for {len(feats)} images "
                  "(once per image set and backbone)")
    console.print(f"beam 5 costs {t_b / t_g:.1f}x greedy; end to end reaches "
                  f"{t_cnn / t_e2e * 100:.0f}% of backbone-only throughput")
    for name, e in extraction.items():
        console.print(f"feature extraction {name}: {e['images_per_second']:.1f} images/s, cache "
                      f"{e['kib_per_image_float16']:.0f} KiB/image (float16)")
    console.print(f"peak RSS of a 1-epoch default training run (with its Java scorers): "
                  f"{peak:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def presets_rows_and_goals(args, console, goals: list | None = None) -> dict:
    """The presets' rows (``bench_presets``), printed; the augmented preset's goal appended to
    ``goals``."""
    console.print("presets: each through run.py beside recipe A's way ...")
    names = args.preset_names.split(",") if args.preset_names else None
    rows = preset_rows(names, args.preset_run_images, args.preset_epochs, console)
    split = None
    if names is None or "flickr8k_transformer" in names:
        console.print("  flickr8k_transformer's epoch by part, CNN every step vs cached views ...")
        split = breakdown(next(o for n, o in presets(args.preset_run_images).items()
                               if n == "flickr8k_transformer"))
    print_presets(console, rows, split)
    aug = [r for r in rows if r["preset"] == "flickr8k_transformer"]
    if goals is not None and aug:
        r = aug[0]
        goals.append((f"flickr8k_transformer epoch (augmented, {r['cache']}) vs recipe A",
                      f"{r['ratio']:.1f}x", ">= 5x", r["ratio"] >= 5))
    return {"rows": rows, "breakdown": split}


def presets_section(args) -> int:
    from rich.console import Console

    console = Console(width=160)
    console.print(f"[bold]Machine:[/] {machine()}")
    goals: list = []
    results = presets_rows_and_goals(args, console, goals)
    for measure, value, target, ok in goals:
        console.print(f"goal: {measure}: {value} (target {target}): {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def bfloat16_epoch(cfg, vocab_size: int, feat_ds) -> float | None:
    """The cached-feature epoch with a fresh model under mixed_bfloat16 (what
    ``trainer.precision=auto`` picks on this CPU), or None where this CPU does not run
    TensorFlow's bfloat16 kernels (``training.runtime.cpu_bfloat16``: a child process tries)."""
    import keras
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or cpu_bfloat16():
        return None
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = build_model(cfg, vocab_size)
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        return timed(lambda: model.fit(feat_ds, epochs=1, verbose=0, shuffle=False))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def alternated(a, b, repeat: int = 3) -> tuple[float, float]:
    """Mean seconds of ``a`` and of ``b`` over ``repeat`` rounds, a then b in each (one warm-up
    call of each first), so that a machine's drift falls on both alike."""
    a(), b()
    ta = tb = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        a()
        ta += time.perf_counter() - t
        t = time.perf_counter()
        b()
        tb += time.perf_counter() - t
    return ta / repeat, tb / repeat


def gemm_gflops(n: int = 2048) -> float:
    """This CPU's float32 matrix-multiply throughput (n x n by n x n, best of 5): the ceiling
    the training step's achieved GFLOP/s is reported against."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    mm = tf.function(lambda a: tf.matmul(a, a))
    mm(a).numpy()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        mm(a).numpy()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def batch_shape(captions) -> tuple[int, int, int]:
    """(images, packed row length, real target tokens) of a (B, C, L) caption batch, as
    ``Captioner.decode_loss`` runs it: an image's teacher-forced positions with a real target,
    its captions end to end (``TransformerDecoder.call_packed``)."""
    import numpy as np

    c = np.asarray(captions)
    per_image = (c[..., 1:] > 0).sum(axis=(1, 2))
    return c.shape[0], int(max(per_image.max(), 1)), int(per_image.sum())


def _through_end(ids, end_id: int):
    """(N, L) sampled ids -> (N,) tokens through the first end token. The sampler keeps drawing
    for rows that have ended until every row has, so non-zero tokens overstate a length."""
    import numpy as np

    hit = ids == end_id
    return np.where(hit.any(1), hit.argmax(1) + 1, ids.shape[1])


# Synthetic images have no UCM class (the preset's class head is one 256 x 21 Dense); val
# captions by beam 3 without the consensus vote, the tuning runs' shapes this table has measured.
PRESET_COST_PINS = ("dataset.classes=null", "trainer.class_loss=0", "decode.beam_size=3",
                    "decode.rerank=none")


def preset_costs(args, steps: int = 12) -> dict:
    """The UCM preset's training shapes (experiment=ucm_scratch: small_cnn from scratch at
    128 px, Transformer 256, batch 32, 2 captions per step, 5 samples per image for the
    self-critical reward, beam-3 val captions of 210 images every epoch as in tuning) on synthetic
    data of the same counts. Times ``steps`` cross-entropy steps after as many warm-up steps
    (so sampled captions end like a trained model's), then ``steps`` self-critical steps, then
    one epoch's validation captioning and scoring (the ``ValidationCaptions`` callback itself).
    The epoch's share is validation / (steps per epoch x step + validation)."""
    import math

    import keras
    import numpy as np
    import tensorflow as tf

    n_train, n_val = args.preset_images, 210
    cfg = compose([
        "experiment=ucm_scratch", "dataset=synthetic", "logger=none", "dataset.untouched_list=null",
        f"dataset.num_images={n_train + n_val}", f"dataset.max_images={n_train + n_val}",
        f"dataset.val_fraction={n_val / (n_train + n_val)}", "dataset.test_fraction=0.0",
        "dataset.split=random", "dataset.holdout=null", "dataset.holdout_list=null",
        # a tuning run's shapes: train alone, val scored every epoch (the final fit does neither)
        "dataset.train_on_val=false", "dataset.train_on_holdout=false",
        "callbacks.val_captions.every_n_epochs=1", f"paths.cache_dir={args.cache_dir}",
        "callbacks.kangas.enabled=false", "trainer.warmup_steps=0", *PRESET_COST_PINS])
    # The warm-up steps teach the captions' length (sampled captions end as a trained
    # model's do, not at max_len); the schedule's own warm-up would keep them random.
    keras.utils.set_random_seed(0)
    data = build_data(cfg, progress=False)
    model, _ = compile_captioner(cfg, data, tf.distribute.get_strategy())
    t = cfg.trainer
    per_epoch = math.ceil(len(data.splits["train"]) / int(t.batch_size))
    # The image path's datasets have no known length (ignore_errors): Keras would run past
    # their end at every fit and warn "Your input ran out of data". These are the steps' first
    # batches of well-formed synthetic images: their length is known, and asserted.
    steps = min(steps, per_epoch)
    known = tf.data.experimental.assert_cardinality(steps)
    ce = data.train_dataset(int(t.batch_size), 0, sample=int(t.sample_captions)).take(steps)
    ce = ce.apply(known).cache()
    model.fit(ce, epochs=4, verbose=0, shuffle=False)  # warm-up
    ce_step = timed(lambda: model.fit(ce, epochs=1, verbose=0, shuffle=False)) / steps
    val = ValidationCaptions(data, cfg, scratch_dir("bench-val-"))
    val.set_model(model)
    val.on_epoch_end(0, {})                                                # builds its generator
    t0 = time.perf_counter()
    val.on_epoch_end(0, {})
    val_seconds = time.perf_counter() - t0
    enable_self_critical(cfg, data, model)
    sc = data.train_dataset(int(t.batch_size), 1).take(steps).apply(known).cache()
    model.fit(sc.take(2), epochs=1, verbose=0, shuffle=False)                             # trace
    t0 = time.perf_counter()
    model.fit(sc, epochs=1, verbose=0, shuffle=False)
    scst_step = (time.perf_counter() - t0) / steps
    x, c = next(iter(sc))
    ids = model.self_critical.sampler.generate(model.encode(x), repeats=5).numpy()[:, 1:]
    lengths = _through_end(ids, data.vocab.end_id)
    return {"ce_step": ce_step, "scst_step": scst_step, "steps_per_epoch": per_epoch,
            "val_captions_seconds": val_seconds,
            "val_share": val_seconds / (per_epoch * ce_step + val_seconds),
            "sampled_length_mean": float(np.mean(lengths)),
            "sampled_length_max": int(np.max(lengths))}


def print_tables(console, args, train_records, vocab_size, rows, goals, t_recipe, t_ours):
    from rich.table import Table

    table = Table(title=f"captioning benchmark ({len(train_records)} images at "
                        f"{args.image_size} px, "
                        f"EfficientNetB0 + Transformer 512, vocabulary {vocab_size})")
    for col in ("measure", "recipe A", "captioning", "ratio", "note"):
        table.add_column(col, justify="right" if col in ("recipe A", "captioning", "ratio")
                         else "left")
    for name, a_val, ours, note in rows:
        if a_val is None:
            ratio = ""
        elif "epoch" in name or name.endswith("(s)"):
            ratio = f"{a_val / ours:.1f}x faster"
        else:
            ratio = f"{ours / a_val:.0f}x faster"
        table.add_row(name, "" if a_val is None else f"{a_val:.2f}", f"{ours:.2f}", ratio, note)
    console.print(table)
    goal_table = Table(title=f"speed goals on this machine (recipe-A epoch {t_recipe:.1f} s, "
                             f"ours {t_ours:.1f} s)")
    for col in ("goal", "measured", "target", "met"):
        goal_table.add_column(col)
    for measure, value, target, ok in goals:
        goal_table.add_row(measure, value, target,
                           "" if ok is None else ("[green]yes[/]" if ok else "[red]no[/]"))
    console.print(goal_table)


# The scaling table's fixed settings; the sizes come from the real-data defaults
# (``real_data_sizes``): the synthetic set stands in for COCO's images, nothing else changes.
SCALING = ["backbone.trainable=false", "backbone.weights=null", "logger=none",
           "dataset.val_fraction=0.05", "dataset.test_fraction=0.0", "trainer.feature_cache=true"]


def real_data_sizes() -> list[str]:
    """The sizes a COCO run trains with (``dataset=coco``: its backbone at its native size, the
    decoder width and text lengths it brings; the trainer's batch size and captions per image),
    as overrides for the synthetic set, rendered at the backbone's input size."""
    c = compose(["dataset=coco"])
    size = int(c.backbone.image_size)
    return [f"backbone={c.backbone.name}", f"backbone.image_size={size}",
            f"dataset.image_size={size}", f"decoder={c.decoder.name}",
            f"decoder.dim={c.decoder.dim}", f"text.seq_len={c.text.seq_len}",
            f"text.vocab_size={c.text.vocab_size}", f"trainer.batch_size={c.trainer.batch_size}",
            f"dataset.captions_per_image={c.dataset.captions_per_image}"]


def rss_parts_mib(status: Path = Path("/proc/self/status")) -> dict:
    """This process's resident memory, MiB: total, anonymous (heap, tensors, TensorFlow's
    allocator) and file-backed (mapped libraries, the feature cache's resident pages), and the
    peak total (VmHWM); empty where /proc is not there."""
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}
    try:
        lines = status.read_text().splitlines()
    except OSError:
        return {}
    return {keys[k]: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in lines)
            if k in keys}


def scaling_child(args) -> int:
    """One size of the scaling table, in its own process (so its peak memory is its own): build
    (or load) the feature cache through the real path, trace on two batches, then time one
    full training epoch. The model's vocabulary is the config's ``text.vocab_size`` (the
    synthetic captions use a few dozen of its words; the cost is the same)."""
    import resource

    import keras

    n = args.scaling_child
    cfg = compose([*SCALING, *real_data_sizes(), f"dataset.num_images={n}",
                   f"dataset.max_images={n}", f"paths.cache_dir={args.cache_dir}"])
    batch = int(args.batch_size or cfg.trainer.batch_size)
    keras.utils.set_random_seed(0)
    data = build_data(cfg, progress=False)
    model = build_model(cfg, max(int(cfg.text.vocab_size), data.vocab.size))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    baseline = rss_parts_mib()                 # TensorFlow, the CNN and the model: no features
    root = Path(os.path.expanduser(args.cache_dir)) / "features"
    before = set(root.iterdir()) if root.is_dir() else set()
    t0 = time.perf_counter()
    attach_feature_cache(cfg, data, model)
    cache_seconds = time.perf_counter() - t0
    feats = data.features[0]
    built = bool(set(root.iterdir()) - before)
    records = [r for split in ("train", "val", "test", "holdout", "untouched")
               for r in data.splits.get(split, [])]
    _, _, folder = ensure_features(cfg, model.backbone, data, records, batch)     # its folder
    ds = data.train_dataset(batch, 0)
    model.fit(ds.take(2), epochs=1, verbose=0, shuffle=False)  # tracing
    steps = sum(1 for _ in ds)
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    epoch = time.perf_counter() - t0
    flops = [training_step_flops(Sizes.of(model), *batch_shape(c)) for _, c in ds]
    tokens = sum(batch_shape(c)[2] for _, c in ds)
    result = {"images": len(data.splits["train"]), "rows": int(feats.shape[0]),
              "feature_bytes": int(feats[0].nbytes), "cache_bytes": int(feats.nbytes),
              "cache_seconds": cache_seconds, "cache_built": built,
              "cache_path": str(folder / "features.npy"), "shape": list(feats.shape),
              "baseline": baseline,
              "after_epoch": rss_parts_mib(),
              "epoch_seconds": epoch, "steps": steps, "batch_size": batch,
              "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
              "step_gflop": sum(flops) / len(flops) / 1e9,
              "target_tokens_per_image": tokens / len(data.splits["train"]),
              "vocab_size": int(model.decoder.vocab_size), "dim": int(cfg.decoder.dim),
              "backbone": f"{cfg.backbone.name} {cfg.backbone.image_size} px"}
    Path(args.json).write_text(json.dumps(result))
    return 0


@contextmanager
def memory_cgroup(limit_mib: int, root: Path = Path("/sys/fs/cgroup"),
                  proc_cgroup: Path = Path("/proc/self/cgroup")):
    """A new memory cgroup limited to ``limit_mib`` MiB (swap off), under this process's own
    (cgroup v1) or at the top of the unified hierarchy (v2); yields its folder (a process joins
    by writing its pid to ``cgroup.procs``) and removes it after. Needs root: otherwise one
    SystemExit line saying why."""
    own = memory_cgroup_folder(root, proc_cgroup)
    if own is None:
        raise SystemExit(f"--scaling-memory-mb: no memory cgroup under {root} (cgroup v1's "
                         f"memory controller or v2's unified hierarchy); run without it")
    v2 = (root / "cgroup.controllers").is_file()
    folder = (root if v2 else own) / f"captioning-bench-{os.getpid()}-{time.monotonic_ns()}"
    limit = str(limit_mib * 2 ** 20)
    files = ([("memory.max", limit), ("memory.swap.max", "0")] if v2 else
             [("memory.limit_in_bytes", limit), ("memory.memsw.limit_in_bytes", limit)])
    try:
        folder.mkdir()
        for name, value in files:
            if name == files[0][0] or (folder / name).exists():     # swap accounting: optional
                (folder / name).write_text(value)
    except OSError as e:
        if folder.is_dir():
            folder.rmdir()
        raise SystemExit(f"--scaling-memory-mb: cannot set up a memory cgroup at {folder} "
                         f"({e.strerror or e}); it needs root and a writable {root}") from None
    try:
        yield folder
    finally:
        for _ in range(50):                  # its last process may take a moment to leave
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def cgroup_peak_mib(folder: Path) -> float | None:
    """The cgroup's peak memory charge (process memory plus the page cache it read), MiB."""
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        try:
            return int((folder / name).read_text()) / 2 ** 20
        except (OSError, ValueError):
            continue
    return None


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so reads come from the disk again."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def cache_read_rate(path: Path, batch: int, cold: bool, to_float32: bool) -> dict:
    """Read a feature cache as training does, shuffled batches of rows through the memory map
    (``to_float32``: converted as ``CaptionData._gather_features`` does), after emptying the
    page cache when ``cold``: GB/s of cache bytes, batches/s, and whether it was cold."""
    feats = np.load(path, mmap_mode="r")
    order = np.random.default_rng(0).permutation(len(feats))
    dropped = drop_page_cache() if cold else False
    t0 = time.perf_counter()
    for i in range(0, len(order), batch):
        rows = feats[np.sort(order[i:i + batch])]
        if to_float32:
            np.asarray(rows, np.float32)
    seconds = time.perf_counter() - t0
    return {"cold": dropped, "float32": to_float32, "gb_per_second": feats.nbytes / seconds / 1e9,
            "batches_per_second": len(order) / batch / seconds}


def float32_conversion_rate(shape, repeat: int = 20) -> float:
    """GB/s (of float16 bytes) of numpy's float16 -> float32 conversion of a ``shape`` batch of
    values in [0, 4), the range of a pretrained CNN's pooled-free activations."""
    x = (np.random.default_rng(0).random(shape) * 4).astype(np.float16)
    x.astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(repeat):
        np.asarray(x, np.float32)
    return x.nbytes * repeat / (time.perf_counter() - t0) / 1e9


def _rss_cell(parts: dict) -> str:
    if not parts:
        return ""
    return f"{parts['rss']:.0f} ({parts['anon']:.0f} anon + {parts['file']:.0f} file)"


COCO_TRAIN_IMAGES = 113_287            # Karpathy train + restval


def projection(images: int, batch: int, replicas: int, step_seconds: float, params: int,
               feature_bytes: int, link_gb_per_second: float) -> dict:
    """One epoch of data-parallel training on paper: ``replicas`` each take ``batch`` images a
    step (global batch = batch x replicas) at ``step_seconds`` of compute, then all-reduce
    float32 gradients of ``params`` trainable weights over a ring at ``link_gb_per_second``
    (each replica sends and receives 2 (n - 1) / n of them; none alone), not overlapped.
    Also the feature-cache bytes each step reads and the rate it needs."""
    steps = -(-images // (batch * replicas))
    ring = 4 * params * 2 * (replicas - 1) / replicas
    allreduce = ring / (link_gb_per_second * 1e9)
    step = step_seconds + allreduce
    read = batch * replicas * feature_bytes
    return {"replicas": replicas, "steps": steps, "allreduce_bytes": ring,
            "allreduce_seconds": allreduce, "step_seconds": step, "epoch_seconds": steps * step,
            "cache_read_bytes_per_step": read, "cache_read_gb_per_second": read / step / 1e9}


def _run_scaling_child(args, n: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "captioning.bench", "--scaling-child", str(n), "--json",
           str(out), "--cache-dir", args.cache_dir]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if not args.scaling_memory_mb:
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())
    with memory_cgroup(args.scaling_memory_mb) as folder:
        dropped = drop_page_cache()     # the cache's pages are then read, and charged, inside
        join = folder / "cgroup.procs"
        proc = subprocess.run(cmd, preexec_fn=lambda: join.write_text(str(os.getpid())))
        peak = cgroup_peak_mib(folder)
    if proc.returncode != 0:
        why = " (killed: out of memory?)" if proc.returncode == -9 else ""
        raise SystemExit(f"scaling: the {n}-image child failed under --scaling-memory-mb "
                         f"{args.scaling_memory_mb}: exit {proc.returncode}{why}")
    return {**json.loads(out.read_text()), "cgroup_peak_mib": peak,
            "page_cache_dropped": dropped}


def scaling_table(args, sizes: list[int]) -> int:
    """Per size: the feature cache (bytes per image, size, build time), one training epoch
    (time, ms per image, step time) and the training process's peak RSS, at the real-data
    sizes; with ``--scaling-memory-mb`` each size runs in a memory cgroup of that limit. Then
    the read rate of the largest cache through its memory map, cold and warm."""
    from rich.console import Console
    from rich.table import Table

    console, rows = Console(width=200), []
    limit = f", in a {args.scaling_memory_mb} MiB memory cgroup" if args.scaling_memory_mb else ""
    for n in sizes:
        console.print(f"scaling: {n} synthetic images{limit} ...")
        out = scratch_dir("bench-scaling-") / "result.json"
        rows.append(_run_scaling_child(args, n, out))
    r0 = rows[0]
    table = Table(title=f"scaling at the real-data sizes: frozen {r0['backbone']} features "
                        f"({r0['feature_bytes']:,} B/image) via the feature cache, Transformer "
                        f"{r0['dim']}, vocabulary {r0['vocab_size']}, batch "
                        f"{r0['batch_size']}{limit}")
    for col in ("train images", "cache (MB)", "cache build (s)", "images/s", "epoch (s)",
                "ms / image", "step (s)", "baseline RSS (MiB)", "peak RSS (MiB)",
                "RSS after epoch (MiB)", "cgroup peak (MiB)"):
        table.add_column(col, justify="right")
    for r in rows:
        build = (f"{r['cache_seconds']:.1f}", f"{r['rows'] / r['cache_seconds']:.1f}"
                 ) if r["cache_built"] else (f"{r['cache_seconds']:.1f} (reused)", "")
        table.add_row(str(r["images"]), f"{r['cache_bytes'] / 1e6:.0f}", *build,
                      f"{r['epoch_seconds']:.1f}",
                      f"{r['epoch_seconds'] / r['images'] * 1000:.1f}",
                      f"{r['epoch_seconds'] / r['steps']:.3f}", _rss_cell(r["baseline"]),
                      f"{r['peak_mib']:.0f}", _rss_cell(r["after_epoch"]),
                      f"{r['cgroup_peak_mib']:.0f}" if r.get("cgroup_peak_mib") else "")
    console.print(table)
    console.print(f"trainable parameters (encoder + decoder): {r0['trainable_params']:,}; "
                  f"training step {r0['step_gflop']:.1f} GFLOP on average "
                  f"({r0['target_tokens_per_image']:.1f} target tokens per image)")
    scaling_extras(console, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def scaling_extras(console, rows: list[dict]) -> None:
    """After the scaling table: COCO epochs on paper from the largest size's step time
    (``projection``, nodes like this one), then the largest cache's read rates."""
    big = max(rows, key=lambda r: r["images"])
    for link in (1.25, 10.0):
        for n in (1, 2, 8):
            q = projection(COCO_TRAIN_IMAGES, big["batch_size"], n,
                           big["epoch_seconds"] / big["steps"], big["trainable_params"],
                           big["feature_bytes"], link)
            console.print(f"COCO on {n} node(s) like this one, {link:g} GB/s links: {q['steps']} "
                          f"steps x ({q['step_seconds'] - q['allreduce_seconds']:.3f} s compute "
                          f"+ {q['allreduce_seconds']:.3f} s all-reduce of "
                          f"{q['allreduce_bytes'] / 1e6:.0f} MB) = "
                          f"{q['epoch_seconds'] / 60:.1f} min per epoch")
    largest = max(rows, key=lambda r: r["cache_bytes"])
    largest["reads"] = [cache_read_rate(Path(largest["cache_path"]), largest["batch_size"], *how)
                        for how in ((True, False), (False, False), (False, True))]
    for rate in largest["reads"]:
        state = "cold (page cache emptied)" if rate["cold"] else "warm"
        what = "rows + float32 conversion" if rate["float32"] else "rows (float16)"
        console.print(f"reading the {largest['cache_bytes'] / 1e6:.0f} MB cache in shuffled "
                      f"batches of {largest['batch_size']}, {what}, {state}: "
                      f"{rate['gb_per_second']:.2f} GB/s, {rate['batches_per_second']:.0f} "
                      f"batches/s")
    convert = float32_conversion_rate((largest["batch_size"], *largest["shape"][1:]))
    console.print(f"float16 -> float32 of a batch of ImageNet-range values (a pretrained CNN's): "
                  f"{convert:.2f} GB/s; the cache's values from random weights are ~1e-5, mostly "
                  f"float16 subnormals, which numpy converts far more slowly (the line above)")
    largest["float32_conversion_gb_per_second"] = convert


if __name__ == "__main__":
    sys.exit(main())
