"""``train(cfg)``: the whole run. config -> data -> model -> fit -> evaluate -> outputs.

A run directory explains itself: ``config.yaml`` (resolved), ``.hydra/`` (as composed, with
overrides), ``checkpoints/`` (best, last, vocabulary), ``history.csv``, ``plots/``,
``data.json`` (counts and what cleaning removed), ``metrics.json``, ``predictions.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from omegaconf import OmegaConf

from captioning import ConfigError, TrainingInterrupted
from captioning.io import atomic_write_text

log = logging.getLogger("captioning")


# The epoch scores ValidationCaptions adds to the logs (only on the epochs it runs).
CAPTION_SCORES = ("val_cider", "val_bleu_4")

# Keys whose type YAML cannot pin down: checked before anything is imported or read.
TYPES = {
    "seed": int, "trainer.max_epochs": int, "trainer.batch_size": int, "trainer.learning_rate": float,
    "trainer.warmup_steps": int, "trainer.weight_decay": float, "trainer.label_smoothing": float,
    "trainer.word_loss": float, "trainer.ema": float, "trainer.backbone_lr_multiplier": float,
    "augment.mixup": float, "trainer.scst_epochs": int, "trainer.scst_samples": int, "trainer.scst_learning_rate": float,
    "text.vocab_size": int, "text.seq_len": int, "text.min_tokens": int, "decoder.dim": int,
    "backbone.image_size": int, "dataset.captions_per_image": int, "evaluation.batch_size": int,
    "decode.beam_size": int, "decode.k": int, "decode.p": float, "decode.temperature": float,
    "decode.length_penalty": float, "callbacks.early_stopping.patience": int,
}


def _reward_rule(weights) -> tuple[bool, str]:
    """``trainer.scst_reward``: weights >= 0 of known scores, at least one > 0."""
    from captioning.evaluation.rewards import SCORES  # pure Python, no TF import

    example = "e.g. trainer.scst_reward={cider:1,bleu_4:2}"
    if not isinstance(weights, Mapping) or not weights:
        return False, f"trainer.scst_reward must map scores to weights, {example}. Received: {weights!r}"
    unknown = sorted(set(weights) - set(SCORES))
    if unknown:
        return False, f"trainer.scst_reward has unknown score(s) {unknown}: use {list(SCORES)}. Received: {dict(weights)}"
    numbers = all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights.values())
    if not numbers or min(weights.values()) < 0 or max(weights.values()) <= 0:
        return False, (f"trainer.scst_reward weights must be numbers >= 0, at least one > 0, {example}. "
                       f"Received: {dict(weights)}")
    return True, ""


def check_config(cfg) -> None:
    """Wrong types and nonsense hyperparameters fail here, before any data is read."""
    for key, kind in TYPES.items():
        value = OmegaConf.select(cfg, key)
        ok = isinstance(value, int) and not isinstance(value, bool) if kind is int else \
            isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}. "
                              f"Received: {key}={value!r}")
    t, monitor = cfg.trainer, cfg.callbacks.early_stopping.monitor
    rules = [
        (t.batch_size >= 1, f"trainer.batch_size must be >= 1. Received: {t.batch_size}"),
        (t.max_epochs >= 1, f"trainer.max_epochs must be >= 1. Received: {t.max_epochs}"),
        (t.learning_rate > 0, f"trainer.learning_rate must be > 0. Received: {t.learning_rate}"),
        (t.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0. Received: {t.warmup_steps}"),
        (0 <= t.label_smoothing < 1, f"trainer.label_smoothing must be in [0, 1). Received: {t.label_smoothing}"),
        (t.weight_decay >= 0, f"trainer.weight_decay must be >= 0. Received: {t.weight_decay}"),
        (t.word_loss >= 0, f"trainer.word_loss must be >= 0 (0 turns it off). Received: {t.word_loss}"),
        (isinstance(t.get("deterministic", False), bool),
         f"trainer.deterministic must be true or false. Received: {t.get('deterministic')!r}"),
        (t.get("sample_captions") is None or (isinstance(t.sample_captions, int) and t.sample_captions >= 1),
         f"trainer.sample_captions must be null (all of an image's captions every step) or an integer >= 1. "
         f"Received: {t.get('sample_captions')!r}"),
        (cfg.augment.mixup >= 0, f"augment.mixup must be >= 0: the Beta(alpha, alpha) parameter, e.g. 0.2 "
                                 f"(0 turns it off). Received: {cfg.augment.mixup}"),
        (t.scst_epochs >= 0, f"trainer.scst_epochs must be >= 0 (0 turns self-critical training off). "
                             f"Received: {t.scst_epochs}"),
        (t.scst_samples >= 2, f"trainer.scst_samples must be >= 2: each sample's baseline is the mean reward of "
                              f"the image's other samples. Received: {t.scst_samples}"),
        (t.scst_learning_rate > 0, f"trainer.scst_learning_rate must be > 0. Received: {t.scst_learning_rate}"),
        _reward_rule(t.get("scst_reward")),
        (t.backbone_lr_multiplier > 0, f"trainer.backbone_lr_multiplier must be > 0 (1 = the same learning rate "
                                       f"as the rest). Received: {t.backbone_lr_multiplier}"),
        (0 <= t.ema < 1, f"trainer.ema must be in [0, 1): the averaging momentum, e.g. 0.99 (0 turns it off). "
                         f"Received: {t.ema}"),
        (t.get("max_minutes") is None or (isinstance(t.max_minutes, int | float) and t.max_minutes > 0),
         f"trainer.max_minutes must be a number of minutes > 0, or null. Received: {t.get('max_minutes')!r}"),
        (t.lr_schedule in ("constant", "cosine"),
         f"trainer.lr_schedule must be constant or cosine. Received: {t.lr_schedule!r}"),
        (t.precision in ("float32", "mixed_float16", "mixed_bfloat16"),
         f"trainer.precision must be float32, mixed_float16 or mixed_bfloat16. Received: {t.precision!r}"),
        (cfg.callbacks.early_stopping.patience >= 0,
         f"callbacks.early_stopping.patience must be >= 0. Received: {cfg.callbacks.early_stopping.patience}"),
        (cfg.dataset.captions_per_image >= 1,
         f"dataset.captions_per_image must be >= 1. Received: {cfg.dataset.captions_per_image}"),
        (cfg.text.vocab_size >= 4, f"text.vocab_size must be >= 4. Received: {cfg.text.vocab_size}"),
        (cfg.text.seq_len >= 3, f"text.seq_len must be >= 3 (it counts <start> and <end>). Received: {cfg.text.seq_len}"),
        (cfg.evaluation.batch_size >= 1, f"evaluation.batch_size must be >= 1. Received: {cfg.evaluation.batch_size}"),
        (str(monitor) not in CAPTION_SCORES or int(cfg.callbacks.val_captions.every_n_epochs) >= 1,
         f"callbacks.early_stopping.monitor={monitor} is computed by captioning the validation images during "
         f"training: set callbacks.val_captions.every_n_epochs=1 (or N), or monitor val_loss."),
    ]
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    for key, value in (("decode.tta", cfg.decode.get("tta", "none")), ("callbacks.val_captions.tta",
                                                                      cfg.callbacks.val_captions.get("tta"))):
        if value is not None and value not in ("none", "flip", "dihedral"):   # decoding.TTA
            raise ConfigError(f"{key} must be none, flip (each image and its mirror image) or dihedral (its 8 "
                              f"flips and 90-degree rotations, for overhead imagery)"
                              f"{' or null (use decode.tta)' if key.startswith('callbacks') else ''}. "
                              f"Received: {value!r}")
    method = cfg.callbacks.val_captions.get("method")
    if method is not None and method not in ("greedy", "beam", "top_k", "top_p"):   # decoding.METHODS (no TF import here)
        raise ConfigError(f"callbacks.val_captions.method must be null (use decode.method) or one of "
                          f"['greedy', 'beam', 'top_k', 'top_p']. Received: {method!r}")
    d = cfg.dataset
    if d.get("split") == "random" and not (0 < d.val_fraction < 1 and 0 <= d.test_fraction < 1
                                           and d.val_fraction + d.test_fraction < 1):
        raise ConfigError(f"dataset.val_fraction and test_fraction must be in (0, 1) with a sum below 1. "
                          f"Received: val_fraction={d.val_fraction}, test_fraction={d.test_fraction}")


def make_strategy(t):
    """``trainer.strategy``: auto (mirrored over all GPUs when there are several, else the default
    device) | mirrored (over ``trainer.devices`` or all GPUs) | multi_worker (TF_CONFIG cluster)."""
    import tensorflow as tf

    name = t.get("strategy", "auto")
    devices = list(t.devices) if t.get("devices") else None
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"trainer.strategy must be auto, mirrored or multi_worker. Received: {name!r}")


def make_optimizer(cfg, steps_per_epoch: int, clock=None, backbone_variables=()):
    """Adam(W) with the configured learning-rate schedule; ``trainer.ema`` > 0 makes it keep a
    moving average of the weights (the EMAWeights callback puts it in the model between epochs);
    ``trainer.backbone_lr_multiplier`` scales the step of ``backbone_variables``."""
    import keras

    t = cfg.trainer
    schedule = make_schedule(cfg, steps_per_epoch, clock)
    ema = float(t.get("ema", 0.0))
    common = {"clipnorm": t.get("clipnorm"), "use_ema": ema > 0, "ema_momentum": ema or 0.99}
    base, extra = (keras.optimizers.AdamW, {"weight_decay": float(t.weight_decay)}) if t.weight_decay else \
        (keras.optimizers.Adam, {})
    factor = float(t.get("backbone_lr_multiplier", 1.0))
    if factor != 1.0 and backbone_variables:
        return _lr_multiplied(base)(schedule, multiplied=backbone_variables, factor=factor, **extra, **common)
    return base(schedule, **extra, **common)


def _lr_multiplied(base):
    """``base`` optimizer whose step is ``factor`` x the learning rate for some variables.
    Keras 3 optimizers have no parameter groups; this is the smallest override that gives one
    (the per-variable ``update_step``), and it keeps use_ema, weight decay and clipping as they
    are. (Scaling gradients would not do it: Adam's step ignores the gradient's scale.)"""
    import keras

    class LRMultiplied(base):
        def __init__(self, *args, multiplied=(), factor=1.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.factor = float(factor)
            self._multiplied = {self._var_key(v) for v in multiplied}

        def update_step(self, gradient, variable, learning_rate):
            if self._var_key(variable) in self._multiplied:        # decided while tracing, once
                learning_rate = keras.ops.multiply(learning_rate, self.factor)
            return super().update_step(gradient, variable, learning_rate)

    LRMultiplied.__name__ = f"{base.__name__}LRMultiplied"
    return LRMultiplied


def make_schedule(cfg, steps_per_epoch: int, clock=None):
    """``trainer.lr_schedule`` / ``warmup_steps`` -> a float or a Keras schedule. ``clock``: a
    scalar variable holding the fraction of ``trainer.max_minutes`` used (the TimeBudget
    callback keeps it up to date); a cosine schedule then follows whichever runs out first,
    the steps or the time."""
    import keras

    t = cfg.trainer
    lr = float(t.learning_rate)
    total = max(1, steps_per_epoch * int(t.max_epochs))
    if t.lr_schedule == "cosine":
        warm = min(int(t.warmup_steps), total - 1)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warm else lr, decay_steps=max(1, total - warm), alpha=0.01,
            warmup_target=lr if warm else None, warmup_steps=warm)
        if clock is not None:
            schedule = _clock_aware(schedule, total, clock)
    elif t.warmup_steps:
        schedule = _Warmup(lr, int(t.warmup_steps))
    else:
        schedule = lr
    return schedule


def _clock_aware(inner, total_steps, clock):
    """A schedule evaluated at max(step, time used / time budget x total steps): on a machine
    slower than planned the decay still ends when the budget does, instead of training being
    cut at a high learning rate ("budgeted training", Li et al., ICLR 2020). Keras has none."""
    import keras

    class ClockAware(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            return inner(keras.ops.maximum(step, keras.ops.cast(clock, "float32") * float(total_steps)))

        def get_config(self):
            return {"inner": keras.optimizers.schedules.serialize(inner), "total_steps": total_steps}

    return ClockAware()


def _Warmup(lr, steps):
    """Linear warm-up to ``lr`` over ``steps`` optimizer steps, then constant (recipe A on
    keras.io; counted in optimizer steps, which here are batches, not captions)."""
    import keras

    @keras.saving.register_keras_serializable("captioning")
    class Warmup(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, lr, steps):
            self.lr, self.steps = lr, steps

        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            return self.lr * keras.ops.minimum(1.0, (step + 1.0) / self.steps)

        def get_config(self):
            return {"lr": self.lr, "steps": self.steps}

    return Warmup(lr, steps)


def _write_predictions(path: Path, records, predictions: list[str], per_image: dict) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "references", "prediction", "bleu_4", "cider"])
    for r, p in zip(records, predictions, strict=True):
        s = per_image.get(r.id, {})
        w.writerow([r.id, " | ".join(r.captions), p, f"{s.get('bleu_4', 0):.4f}", f"{s.get('cider', 0):.4f}"])
    atomic_write_text(path, buf.getvalue())


def evaluate_split(model, data, records, cfg, seed: int | None = None, generator=None):
    """Caption ``records`` with the configured decoding and score them; returns (scores,
    predictions). Pass one ``generator`` for several splits: its compiled graph is reused."""
    from captioning.evaluation.metrics import score
    from captioning.models.decoding import Generator, caption_records

    generator = generator or Generator.from_config(model, data.vocab, cfg.decode, seed=seed)
    preds = caption_records(generator, data, records, int(cfg.evaluation.batch_size))
    scores = score({r.id: list(r.captions) for r in records}, {r.id: p for r, p in zip(records, preds, strict=True)},
                   spice=bool(cfg.evaluation.spice))
    return scores, preds


def _gpu_memory_growth() -> None:
    """Parallel sweep jobs share GPUs: allocate memory as needed instead of all at once."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:             # already initialised (a second run in one process)
            pass


def _maybe_cache_features(cfg, data, model) -> None:
    """Frozen backbone: compute each image's tokens once (shared across runs), train on them."""
    from captioning.console import console
    from captioning.data.features import bypass_reason, ensure_features

    reason = bypass_reason(cfg)
    if reason is not None:
        if cfg.backbone.get("trainable", False) is False:      # only worth saying for frozen backbones
            console.print(f"  feature cache bypassed: {reason}")
        return
    records = [r for split in ("train", "val", "test") for r in data.splits[split]]
    feats, row_of, folder = ensure_features(cfg, model.backbone, data, records, int(cfg.evaluation.batch_size))
    data.use_features(feats, row_of)
    console.print(f"  feature cache: {folder} ({feats.shape[0]} images x {feats.shape[1]} tokens x "
                  f"{feats.shape[2]}, float16, {feats.nbytes / feats.shape[0] / 1024:.1f} KiB/image)")


def train(cfg) -> dict:
    """Train, evaluate and write a run; returns ``{"val": {...}, "test": {...}}`` scores."""
    check_config(cfg)
    import keras

    keras.backend.clear_session()       # a fresh graph per run: sweeps run jobs in one process
    _gpu_memory_growth()

    from captioning.console import console, print_data_report
    from captioning.data.datamodule import build_data
    from captioning.models.build import build_model

    run_dir = Path(cfg.paths.output_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    keras.utils.set_random_seed(int(cfg.seed))
    _op_determinism(bool(cfg.trainer.get("deterministic", False)))
    if cfg.trainer.precision != "float32":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            # TensorFlow's oneDNN bfloat16/float16 kernels kill the process with SIGILL on some CPUs
            # (seen on this project's 2-core CI machines), which would lose the run without a word.
            raise ConfigError(f"trainer.precision={cfg.trainer.precision} needs a GPU; no GPU is visible. "
                              f"Use trainer.precision=float32 on a CPU.")
        keras.mixed_precision.set_dtype_policy(cfg.trainer.precision)

    t0 = time.perf_counter()
    state_path = run_dir / "checkpoints" / "last.state.npz"
    resuming = bool(cfg.get("resume")) and state_path.is_file()
    if cfg.get("resume") and not resuming:
        raise ConfigError(f"resume: {run_dir} has no checkpoints/last.state.npz to resume from. Point "
                          f"resume= at a run directory that was interrupted, or drop resume.")
    if resuming and (run_dir / "metrics.json").is_file():
        console.print(f"{run_dir} already finished; its scores are in metrics.json")
        return json.loads((run_dir / "metrics.json").read_text())
    vocab = None
    if resuming:
        from captioning.data.text import Vocabulary

        vocab = Vocabulary.load(run_dir / "checkpoints" / "vocab.json")    # the run's own vocabulary
    data = build_data(cfg, vocab=vocab)
    data.vocab.save(run_dir / "checkpoints" / "vocab.json")
    atomic_write_text(run_dir / "data.json", json.dumps({**data.report.as_dict(), "vocab_size": data.vocab.size},
                                                        indent=2))
    print_data_report(cfg, data)

    strategy = make_strategy(cfg.trainer)
    steps = math.ceil(len(data.splits["train"]) / int(cfg.trainer.batch_size))
    with strategy.scope():                 # variables are mirrored when the strategy has several devices
        model = build_model(cfg, data.vocab.size)
        clock = keras.Variable(0.0, trainable=False, name="time_used") if cfg.trainer.get("max_minutes") else None
        model.compile(optimizer=make_optimizer(cfg, steps, clock, model.backbone.trainable_variables),
                      jit_compile=bool(cfg.trainer.jit_compile))
    if strategy.num_replicas_in_sync > 1:
        console.print(f"  training on {strategy.num_replicas_in_sync} replicas ({type(strategy).__name__}); "
                      f"trainer.batch_size={cfg.trainer.batch_size} is the global batch")
    _maybe_cache_features(cfg, data, model)
    sample = cfg.trainer.get("sample_captions")
    train_ds = data.train_dataset(int(cfg.trainer.batch_size), int(cfg.seed), sample=int(sample) if sample else None)
    val_ds = data.train_dataset(int(cfg.evaluation.batch_size), int(cfg.seed), split="val", shuffle=False)
    state = None
    if resuming:
        from captioning.training.resume import load_state

        state = load_state(state_path, model)
        console.print(f"[bold]Resuming[/] {run_dir} after epoch {state['epoch']}")

    tracker = None
    if cfg.logger.name == "comet":
        from captioning.tracking.comet import CometLogger

        tracker = CometLogger(cfg, run_dir)
        tracker.call("log_others", {"vocab_size": data.vocab.size,
                                    **{f"images_{k}": v for k, v in data.report.counts.items()}})
    try:
        results = _fit_and_evaluate(cfg, data, model, train_ds, val_ds, steps, run_dir, tracker, t0, state, clock)
    except TrainingInterrupted as e:
        done = len(_read_history(run_dir))
        console.print(f"[bold yellow]Interrupted[/] ({e}) after {done} completed epoch(s); everything up to "
                      f"epoch {done} is saved in {run_dir}.\nResume with the same command plus: "
                      f"resume={run_dir}")
        raise
    finally:
        if tracker is not None:
            archive = tracker.end()
            if archive is not None:
                console.print(f"[bold]Comet offline archive:[/] {archive}\n  upload it with: comet upload {archive}")
    return results


def _read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def _fit_and_evaluate(cfg, data, model, train_ds, val_ds, steps, run_dir, tracker, t0, state=None,
                      clock=None) -> dict:
    import keras
    import tensorflow as tf

    from captioning.console import console, print_samples, print_scores
    from captioning.tracking.kangas_grids import pick_rows
    from captioning.training.callbacks import (
        CometEpochs,
        EMAWeights,
        History,
        SaveWeights,
        TimeBudget,
        ValidationCaptions,
        monitor_mode,
        write_grid,
    )
    from captioning.training.resume import ResumableEarlyStopping, SaveState, StopOnSignal

    ckpt_dir = run_dir / "checkpoints"
    es = cfg.callbacks.early_stopping
    initial_epoch = state["epoch"] if state else 0
    saver = SaveWeights(ckpt_dir, es.monitor, es.mode, best=state["best"] if state else None)
    saver.best_epoch = state["best_epoch"] if state else None
    history = History(run_dir, rows=[r for r in _read_history(run_dir) if r["epoch"] <= initial_epoch])
    early = ResumableEarlyStopping(monitor=es.monitor, patience=int(es.patience),
                                   mode=monitor_mode(es.monitor, es.mode), min_delta=float(es.min_delta),
                                   restore_best_weights=False,   # the best checkpoint is reloaded below
                                   restored=state["es"] if state else None)
    ema = EMAWeights(restored_in_model=bool(state and state.get("ema_in_model"))) if cfg.trainer.get("ema") else None
    callbacks = [
        StopOnSignal(),                                       # Ctrl-C / SIGTERM: stop after the batch
        *([ema] if ema is not None else []),                  # averaged weights in for everything below
        ValidationCaptions(data, cfg, run_dir, tracker),      # adds val_cider for the ones below
        history,
        saver,
        early,
        SaveState(ckpt_dir / "last.state.npz", saver, early, ema),  # after the two it snapshots
        keras.callbacks.TerminateOnNaN(),
    ]
    budget = TimeBudget(cfg.trainer.max_minutes, t0, clock) if cfg.trainer.get("max_minutes") else None
    if budget is not None:
        callbacks.append(budget)
    if tracker is not None:
        callbacks.append(CometEpochs(tracker))
    console.rule(f"Training ({len(data.splits['train'])} images, {steps} steps/epoch, up to "
                 f"{cfg.trainer.max_epochs} epochs)")
    verbose = 1 if sys.stdout.isatty() else 2      # a live bar in a terminal, a line per epoch in logs
    scst_from = state.get("scst_from") if state else None          # resumed inside the self-critical epochs
    if scst_from is None and initial_epoch < int(cfg.trainer.max_epochs) and \
            not (state and early.wait >= early.patience):
        model.fit(train_ds, validation_data=val_ds, epochs=int(cfg.trainer.max_epochs), callbacks=callbacks,
                  verbose=verbose, shuffle=False, initial_epoch=initial_epoch)   # the pipeline shuffles, seeded
    scst_from = _self_critical(cfg, data, model, val_ds, callbacks, history, early, budget, state, scst_from, verbose)
    train_seconds = time.perf_counter() - t0
    if (ckpt_dir / "best.weights.h5").exists():
        model.load_weights(str(ckpt_dir / "best.weights.h5"))   # the selected epoch, whatever stopped the run

    console.rule("Evaluation")
    from captioning.models.decoding import Generator

    generator = Generator.from_config(model, data.vocab, cfg.decode, seed=int(cfg.seed))
    results: dict = {}
    notes: list[str] = []
    for split in ("val", "test"):
        records = data.splits[split]
        if not records:
            continue
        ds = data.train_dataset(int(cfg.evaluation.batch_size), int(cfg.seed), split=split, shuffle=False)
        loss = model.evaluate(ds, verbose=0, return_dict=True)
        scores, preds = evaluate_split(model, data, records, cfg, generator=generator)
        results[split] = {"loss": float(loss["loss"]), "accuracy": float(loss["accuracy"]), **scores.corpus}
        notes += [n for n in scores.notes if n not in notes]
        name = "predictions.csv" if split == "val" else f"predictions_{split}.csv"
        _write_predictions(run_dir / name, records, preds, scores.per_image)
        if split == "val":
            print_samples(records, preds, n=int(cfg.evaluation.show))
            if cfg.callbacks.kangas.enabled:
                rows = set(r.id for r in pick_rows(records, int(cfg.callbacks.kangas.max_rows), int(cfg.seed)))
                keep = [i for i, r in enumerate(records) if r.id in rows]
                write_grid(run_dir, "final", [records[i] for i in keep], [preds[i] for i in keep],
                           scores.per_image, saver.best_epoch, cfg, tracker)
            if tracker is not None:
                _log_samples(tracker, records, preds, int(cfg.logger.sample_images))
    results["meta"] = {
        "best_epoch": saver.best_epoch, "epochs_run": len(history.rows),
        "train_seconds": round(train_seconds, 1), "decode": OmegaConf.to_container(cfg.decode, resolve=True),
        "selected_by": es.monitor,
        "stopped_by": ("time budget" if budget is not None and budget.stopped_epoch
                       else "early stopping" if _stopped_early(early, cfg.trainer, scst_from)
                       else "scst_epochs" if scst_from is not None else "max_epochs"),
        "self_critical_from_epoch": None if scst_from is None else scst_from + 1,
        "notes": notes + data.report.notes,
        "tensorflow": tf.__version__, "keras": keras.__version__,
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(results, indent=2))
    print_scores(results, notes)
    if tracker is not None:
        for split in ("val", "test"):
            for k, v in results.get(split, {}).items():
                tracker.call("log_metric", f"{split}_{k}" if split == "test" else f"final_val_{k}", v)
        for f in ("metrics.json", "history.csv", "predictions.csv", "data.json", "config.yaml"):
            if (run_dir / f).exists():
                tracker.call("log_asset", str(run_dir / f), file_name=f)
        for png in sorted((run_dir / "plots").glob("*.png")):
            tracker.call("log_image", str(png), name=f"plots/{png.stem}")
        if cfg.logger.log_model and (ckpt_dir / "best.weights.h5").exists():
            tracker.call("log_model", "captioner", str(ckpt_dir / "best.weights.h5"))
    console.print(f"[bold]Run directory:[/] {run_dir}")
    return results


def _self_critical(cfg, data, model, val_ds, callbacks, history, early, budget, state, scst_from, verbose):
    """``trainer.scst_epochs``: after the cross-entropy epochs, continue from the best checkpoint
    with self-critical training on the CIDEr-D of sampled captions (Rennie et al., 2017; the
    mean of the other samples as baseline, Luo, 2020), at a constant learning rate, with the
    same callbacks (validation captions, checkpoint selection, resume state, time budget).
    Returns the epoch (0-based count of epochs before it) the phase started at, or None."""
    from captioning.console import console
    from captioning.evaluation.rewards import Reward, references
    from captioning.training.resume import SaveState, _num

    t = cfg.trainer
    epochs = int(t.get("scst_epochs", 0))
    if not epochs:
        return None
    fresh = scst_from is None
    if fresh:
        done = len(history.rows)
        # A self-critical epoch costs about 2.5 cross-entropy epochs (K samples per image, all
        # references): start the phase only if one fits in what is left of the budget.
        left = None if budget is None else budget.budget - (time.perf_counter() - budget.t0)
        if budget is not None and (budget.stopped_epoch or left < 2.5 * budget.slowest):
            console.print(f"[yellow]Self-critical training skipped:[/] the time budget (trainer.max_minutes) has "
                          f"no room for it after epoch {done}. Raise trainer.max_minutes or lower "
                          f"trainer.max_epochs to leave it time.")
            return None
        scst_from = done
        best = Path(cfg.paths.output_dir) / "checkpoints" / "best.weights.h5"
        if best.exists():
            model.load_weights(str(best))                      # start from the selected epoch
            _reset_ema(model.optimizer)
        # Only the epochs of this phase count towards patience; the best score carries over (from
        # this process's cross-entropy fit, or from the resume state when that fit had no epochs left).
        ran = hasattr(early, "best_epoch")
        prior = {"best": _num(early.best), "best_epoch": int(early.best_epoch)} if ran else dict(early.restored)
        early.restored = {**prior, "wait": 0}
    end = scst_from + epochs
    start = scst_from if fresh else int(state["epoch"])
    if start >= end:
        return scst_from
    vocab = data.vocab
    refs = data.encode(data.splits["train"])
    reward = Reward(OmegaConf.to_container(t.scst_reward),
                    [references(image, vocab.start_id, vocab.end_id) for image in refs])
    k = int(t.scst_samples)
    model.enable_self_critical(lambda samples, captions: reward.batch(samples, captions, vocab.start_id, vocab.end_id),
                               k, vocab.start_id, vocab.end_id, vocab.seq_len, seed=int(cfg.seed))
    try:
        model.optimizer.learning_rate = float(t.scst_learning_rate)     # a constant rate is a variable: set it
    except TypeError:                                                    # built with a schedule: swap it
        model.optimizer.learning_rate = _constant(float(t.scst_learning_rate))
    for cb in callbacks:
        if isinstance(cb, SaveState):
            cb.extra = {"scst_from": scst_from}
    console.rule(f"Self-critical training (reward {reward}, {k} samples per image, epochs {start + 1}-{end}, "
                 f"learning rate {float(t.scst_learning_rate):g})")
    train_all = data.train_dataset(int(t.batch_size), int(cfg.seed) + 1)   # every reference caption, for the reward
    model.fit(train_all, validation_data=val_ds, epochs=end, callbacks=callbacks, verbose=verbose, shuffle=False,
              initial_epoch=start)
    return scst_from


def _op_determinism(enabled: bool) -> None:
    """``trainer.deterministic``: TensorFlow's op determinism, on or off as each run says (a sweep
    runs its jobs in one process, so it is turned back off for a run that does not ask for it).
    Without it, parallel CPU kernels sum in varying orders, and two runs of one config and seed
    drift apart (six UCM-Captions runs of the preset's recipe: 0.585-0.646 val BLEU-4)."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # the off switch is not public

    if enabled:
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


def _stopped_early(early, t, scst_from) -> bool:
    """Whether early stopping ended the last phase before its planned last epoch (patience can
    run out on that very epoch, which the phase's length ended anyway)."""
    planned = int(t.max_epochs) if scst_from is None else scst_from + int(t.get("scst_epochs", 0))
    return bool(early.stopped_epoch) and early.stopped_epoch + 1 < planned


def _reset_ema(optimizer) -> None:
    """With ``trainer.ema``, the optimizer's average still holds the last epoch's weights, and
    EMAWeights swaps it into the model when the next epoch begins: set it to the weights just
    loaded, so the self-critical epochs start from (and average from) the selected checkpoint.
    Keras has no public setter for the average; its variables are aligned with the optimizer's
    trainable variables."""
    averages = getattr(optimizer, "_model_variables_moving_average", None)
    if getattr(optimizer, "use_ema", False) and averages:
        for variable, average in zip(optimizer._trainable_variables, averages, strict=True):
            average.assign(variable)


def _constant(lr: float):
    """A LearningRateSchedule that returns ``lr``: an optimizer built with a schedule only accepts
    another schedule as its new learning rate."""
    import keras

    class Constant(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.convert_to_tensor(lr, "float32")

        def get_config(self):
            return {"lr": lr}

    return Constant()


def _log_samples(tracker, records, preds, n: int) -> None:
    """A few validation images with their generated and reference captions."""
    from captioning.tracking.kangas_grids import pick_rows

    chosen = {r.id for r in pick_rows(records, n)}
    for r, p in zip(records, preds, strict=True):
        if r.id in chosen:
            tracker.call("log_image", r.image, name=f"val/{Path(r.id).stem}",
                         metadata={"prediction": p, "references": list(r.captions)})
            tracker.call("log_text", f"{r.id}: {p}", metadata={"references": list(r.captions)})
