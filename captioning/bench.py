"""Speed benchmark: this framework vs the published recipe A's way, measured side by side in
one process, on the same data and model sizes. Prints a table of ratios and absolute figures.

    python -m captioning.bench [--images 256] [--image-size 299] [--vocab-size 10000] [--quick]

It ends with the speed goals, each with its measured value on this machine: the training epoch
against recipe A's (>= 5x), the training step's achieved GFLOP/s against this CPU's own float32
GEMM (>= 50%), a self-critical step against a cross-entropy one and validation captioning
against the epoch on the UCM preset's shapes (<= 1.5x, <= 10%), and greedy generation against
recipe A's (>= 100x) and against its arithmetic bound. ``--quick`` skips the end-to-end,
per-backbone extraction and peak-memory sections.

What the recipe-A way does (``../shared/RECIPES.md``): the frozen CNN runs on every batch of
every epoch; each batch takes five optimizer steps, one per caption, each re-running the
encoder; generation re-runs the whole decoder over the padded sequence for every new token,
one image at a time, re-tokenising the partial caption string at each step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captioning.config import compose
from captioning.data.datamodule import build_data
from captioning.data.features import attach_feature_cache, ensure_features
from captioning.flops import Sizes, caption_flops, training_step_flops
from captioning.models.backbones import build_backbone
from captioning.models.build import build_model
from captioning.models.captioner import masked_loss_and_accuracy
from captioning.models.decoding import Generator
from captioning.training.callbacks import ValidationCaptions
from captioning.training.compile import compile_captioner
from captioning.training.scst import enable_self_critical

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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


def recipe_a_train_step(model):
    """Recipe A's train_step: CNN once per batch, then per caption an encoder pass, a decoder
    pass and an optimizer step (five per batch)."""
    import tensorflow as tf

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
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gen-images", type=int, default=8,
                   help="images for the (slow) recipe-A generation timing")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/captioning"))
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--quick", action="store_true",
                   help="skip end to end, per-backbone extraction and peak memory (sections 3-5)")
    p.add_argument("--preset-images", type=int, default=1470,
                   help="train images of the UCM-shaped measurement (UCM with its holdout: 1,470)")
    p.add_argument("--scaling", metavar="N,N,...",
                   help="only the scaling table: epoch time and peak memory on synthetic sets "
                        "of these sizes (e.g. 2000,8000,32000), a frozen backbone via the cache")
    p.add_argument("--scaling-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scaling_child:
        return scaling_child(args)
    if args.scaling:
        return scaling_table(args, [int(n) for n in args.scaling.split(",")])

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
        cfg, {"paths": {"cache_dir": tempfile.mkdtemp(prefix="bench-features-")}})
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
    # No bfloat16 row: TensorFlow 2.21's oneDNN bfloat16 kernels die with SIGILL on this
    # project's CPU machines (they advertise AMX-BF16); trainer.precision=mixed_* is for GPUs.
    results["epoch_seconds"] = {"recipe_a": t_recipe, "ours": t_ours, "cache_build": t_cache_build}
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
    greedy = Generator(model, data.vocab.start_id, -1, max_len, "greedy")
    beam = Generator(model, data.vocab.start_id, -1, max_len, "beam", beam_size=5)
    t_g = timed(lambda: greedy(all_feats), repeat=3) / len(all_feats)
    t_b = timed(lambda: beam(all_feats), repeat=1) / len(all_feats)
    rows.append(("captions/s from features, greedy", 1 / t_a, 1 / t_g,
                 "recipe A: batch 1, full re-run per token"))
    console.print("    greedy with XLA ...")
    try:                                 # XLA for the generation loop (decode.jit_compile=true)
        xla = Generator(model, data.vocab.start_id, -1, max_len, "greedy", jit_compile=True)
        t_x = timed(lambda: xla(all_feats), repeat=3) / len(all_feats)
        rows.append(("captions/s from features, greedy + XLA", 1 / t_a, 1 / t_x,
                     "decode.jit_compile=true"))
        results["captions_per_second"] = {"greedy_xla": 1 / t_x}
    except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
        console.print(f"XLA generation not measured: {type(e).__name__}: {str(e)[:200]}")
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
        ("training step GFLOP/s vs float32 GEMM",
         f"{achieved:.0f} / {gemm:.0f} = {achieved / gemm:.0%}", ">= 50%", achieved / gemm >= 0.5),
        (f"self-critical step vs cross-entropy step (UCM preset; samples "
         f"{preset['sampled_length_mean']:.1f} tokens, longest {preset['sampled_length_max']})",
         f"{preset['scst_step'] / preset['ce_step']:.2f}x", "<= 1.5x",
         preset["scst_step"] / preset["ce_step"] <= 1.5),
        ("validation captioning, share of the epoch (UCM preset)",
         f"{preset['val_share']:.1%}", "<= 10%", preset["val_share"] <= 0.10),
        ("greedy captions/s from features vs recipe A", f"{t_a / t_g:.0f}x", ">= 100x",
         t_a / t_g >= 100),
        ("greedy captions/s vs its arithmetic bound",
         f"{1 / t_g:.0f} / {bound:.0f} = {1 / t_g / bound:.0%}", "(reported)", None),
    ]
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
                             f"hydra.run.dir={tempfile.mkdtemp(prefix='bench-run-')}",
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
        "experiment=ucm_scratch", "dataset=synthetic", "logger=none",
        f"dataset.num_images={n_train + n_val}", f"dataset.max_images={n_train + n_val}",
        f"dataset.val_fraction={n_val / (n_train + n_val)}", "dataset.test_fraction=0.0",
        "dataset.split=random", "dataset.holdout=null", "dataset.holdout_list=null",
        # a tuning run's shapes: train alone, val scored every epoch (the final fit does neither)
        "dataset.train_on_val=false", "callbacks.val_captions.every_n_epochs=1",
        f"paths.cache_dir={args.cache_dir}", "callbacks.kangas.enabled=false",
        # The warm-up steps teach the captions' length (sampled captions end as a trained
        # model's do, not at max_len); the schedule's own warm-up would keep them random.
        "trainer.warmup_steps=0"])
    keras.utils.set_random_seed(0)
    data = build_data(cfg, progress=False)
    model, _ = compile_captioner(cfg, data, tf.distribute.get_strategy())
    t = cfg.trainer
    per_epoch = math.ceil(len(data.splits["train"]) / int(t.batch_size))
    ce = data.train_dataset(int(t.batch_size), 0, sample=int(t.sample_captions)).take(steps)
    ce = ce.cache()
    model.fit(ce, epochs=4, verbose=0)                                     # warm-up, learning
    ce_step = timed(lambda: model.fit(ce, epochs=1, verbose=0)) / steps
    val = ValidationCaptions(data, cfg, Path(tempfile.mkdtemp(prefix="bench-val-")))
    val.set_model(model)
    val.on_epoch_end(0, {})                                                # builds its generator
    t0 = time.perf_counter()
    val.on_epoch_end(0, {})
    val_seconds = time.perf_counter() - t0
    enable_self_critical(cfg, data, model)
    sc = data.train_dataset(int(t.batch_size), 1).take(steps).cache()
    model.fit(sc.take(2), epochs=1, verbose=0)                             # trace
    t0 = time.perf_counter()
    model.fit(sc, epochs=1, verbose=0)
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


SCALING = ["dataset.image_size=32", "backbone.image_size=32", "backbone.trainable=false",
           "backbone.weights=null", "decoder.dim=128", "logger=none", "dataset.val_fraction=0.05",
           "dataset.test_fraction=0.0", "trainer.feature_cache=true"]


def scaling_child(args) -> int:
    """One size of the scaling table, in its own process (so its peak memory is its own):
    build (or load) the feature cache, then time the second of two training epochs."""
    import resource

    import keras

    n = args.scaling_child
    cfg = compose([*SCALING, f"dataset.num_images={n}", f"dataset.max_images={n}",
                   f"paths.cache_dir={args.cache_dir}"])
    keras.utils.set_random_seed(0)
    data = build_data(cfg, progress=False)
    model = build_model(cfg, data.vocab.size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    t0 = time.perf_counter()
    attach_feature_cache(cfg, data, model)
    cache_seconds = time.perf_counter() - t0
    ds = data.train_dataset(args.batch_size, 0)
    ends = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: ends.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: ends.append(time.perf_counter()))
    model.fit(ds, epochs=2, verbose=0, callbacks=[timer])     # epoch 1 includes tracing
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024        # KiB -> MiB
    result = {"images": len(data.splits["train"]), "cache_seconds": cache_seconds,
              "epoch_seconds": ends[3] - ends[2], "peak_mib": peak}
    Path(args.json).write_text(json.dumps(result))
    return 0


def scaling_table(args, sizes: list[int]) -> int:
    """Epoch time and the training process's peak memory as the image set grows. With the
    cache memory-mapped, time should grow with the images and memory stay nearly flat."""

    from rich.console import Console
    from rich.table import Table

    console, rows = Console(), []
    for n in sizes:
        console.print(f"scaling: {n} synthetic images ...")
        out = Path(tempfile.mkdtemp(prefix="bench-scaling-")) / "result.json"
        subprocess.run([sys.executable, "-m", "captioning.bench", "--scaling-child", str(n),
                        "--json", str(out), "--cache-dir", args.cache_dir,
                        "--batch-size", str(args.batch_size)], check=True)
        rows.append(json.loads(out.read_text()))
    table = Table(title="scaling: frozen small_cnn at 32 px via the feature cache, "
                        f"Transformer 128, batch {args.batch_size}")
    for col in ("train images", "cache build (s)", "epoch (s)", "ms / image", "peak RSS (MiB)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["images"]), f"{r['cache_seconds']:.1f}", f"{r['epoch_seconds']:.1f}",
                      f"{r['epoch_seconds'] / r['images'] * 1000:.2f}", f"{r['peak_mib']:.0f}")
    console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
