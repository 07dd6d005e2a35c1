"""``train(cfg)``: the whole run, composed. config -> data -> model -> callbacks -> fit ->
self-critical phase -> evaluate -> outputs. Each step lives in the module named beside it.

A run directory explains itself: ``config.yaml`` (resolved), ``.hydra/`` (as composed, with
overrides), ``checkpoints/`` (best, last, vocabulary, resume state), ``history.csv``,
``plots/``, ``data.json`` (counts and what cleaning removed), ``metrics.json``,
``predictions.csv``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from captioning import TrainingInterrupted
from captioning.config_check import check_config
from captioning.io import atomic_write_text
from captioning.training.state import RunState


@dataclass
class Run:
    """What every step of one run shares: its folder, its state, its tracker and clock."""

    dir: Path
    state: RunState
    t0: float                      # time.perf_counter() at the start of this process's run
    tracker: object | None = None  # a CometLogger, or None (logger=none)
    clock: object | None = None    # trainer.lr_follows_clock: the fraction of max_minutes used


def train(cfg) -> dict:
    """Train, evaluate and write a run; returns ``{"val": {...}, "test": {...}, "meta": {...}}``."""
    check_config(cfg)                                   # before TensorFlow is imported
    from captioning.console import console
    from captioning.training.cluster import workspace
    from captioning.training.resume import stop_signals
    from captioning.training.run_dir import check_resume, report_interrupted

    run_dir = Path(cfg.paths.output_dir)
    resuming = check_resume(cfg, run_dir)               # before anything is written
    if resuming and (run_dir / "metrics.json").is_file():
        console.print(f"{run_dir} already finished; its scores are in metrics.json")
        return json.loads((run_dir / "metrics.json").read_text())
    with stop_signals(), workspace(cfg, run_dir, resuming) as out:   # another worker: a temp dir
        try:
            return _run(cfg, out, resuming)
        except TrainingInterrupted as e:
            report_interrupted(run_dir, e)
            raise


def _run(cfg, run_dir: Path, resuming: bool) -> dict:
    from captioning.console import console, print_data_report
    from captioning.data.datamodule import build_data
    from captioning.data.features import attach_feature_cache
    from captioning.tracking.comet import open_tracker
    from captioning.training.debug import limit_splits
    from captioning.training.resume import fault_point, load_state
    from captioning.training.runtime import prepare_runtime

    strategy = prepare_runtime(cfg)          # strategy first; session, seeds, precision
    t0 = time.perf_counter()
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    fault_point("index")
    data = build_data(cfg, vocab=_run_vocabulary(run_dir) if resuming else None)
    limit_splits(cfg, data)                             # trainer.overfit/limit_*_batches
    data.vocab.save(run_dir / "checkpoints" / "vocab.json")
    report = {**data.report.as_dict(), "vocab_size": data.vocab.size}
    atomic_write_text(run_dir / "data.json", json.dumps(report, indent=2))
    print_data_report(cfg, data)
    model, clock = _build_model(cfg, data, strategy)
    fault_point("features")
    attach_feature_cache(cfg, data, model)
    state = RunState()
    if resuming:
        state = load_state(run_dir / "checkpoints" / "last.state.npz", model)
        console.print(f"[bold]Resuming[/] {run_dir} after epoch {state.epoch}")
    run = Run(run_dir, state, t0, open_tracker(cfg, run_dir, data), clock)
    try:
        return _fit_and_evaluate(cfg, data, model, run)
    finally:
        if run.tracker is not None:
            run.tracker.close_and_report()


def _run_vocabulary(run_dir: Path):
    from captioning.data.text import Vocabulary

    return Vocabulary.load(run_dir / "checkpoints" / "vocab.json")    # the run's own vocabulary


def _build_model(cfg, data, strategy):
    """The Captioner and its optimizer, under the distribution strategy; returns (model, clock)."""
    import keras

    from captioning.console import console
    from captioning.models.build import build_model
    from captioning.training.debug import train_steps
    from captioning.training.optim import make_optimizer
    steps = train_steps(cfg, data)
    with strategy.scope():           # variables are mirrored when the strategy has several devices
        model = build_model(cfg, data.vocab.size)
        clock = None
        if cfg.trainer.get("max_minutes") and cfg.trainer.get("lr_follows_clock", False):
            clock = keras.Variable(0.0, trainable=False, name="time_used")
        optimizer = make_optimizer(cfg, steps, clock, model.backbone.trainable_variables)
        model.compile(optimizer=optimizer, jit_compile=bool(cfg.trainer.jit_compile))
        # The optimizer's slots now, not inside the first train step: a tf.function that
        # creates variables is traced twice, and each trace of the step takes seconds.
        optimizer.build(model.trainable_variables)
    if strategy.num_replicas_in_sync > 1:
        console.print(f"  training on {strategy.num_replicas_in_sync} replicas "
                      f"({type(strategy).__name__}); trainer.batch_size={cfg.trainer.batch_size} "
                      f"is the global batch")
    return model, clock


def _fit_and_evaluate(cfg, data, model, run: Run) -> dict:
    """Cross-entropy epochs, the self-critical phase, then the final evaluation and report."""
    from captioning.console import console, print_scores
    from captioning.evaluation.evaluate import final_evaluation
    from captioning.provenance import provenance
    from captioning.training.callbacks import make_callbacks
    from captioning.training.debug import limit_train, validation_freq
    from captioning.training.resume import fault_point
    from captioning.training.run_dir import load_selected
    from captioning.training.scst import self_critical

    t, state = cfg.trainer, run.state
    fault_point("datasets")
    sample = t.get("sample_captions")
    train_ds = data.train_dataset(int(t.batch_size), int(cfg.seed),
                                  sample=int(sample) if sample else None)
    val_ds = data.train_dataset(int(cfg.evaluation.batch_size), int(cfg.seed), split="val",
                                shuffle=False)
    cbs = make_callbacks(cfg, data, run.dir, state, run.tracker, run.t0, run.clock)
    train_ds, steps = limit_train(cfg, data, train_ds)  # limit_train_batches; repeated
    console.rule(f"Training ({len(data.splits['train'])} images, {steps} steps/epoch, up to "
                 f"{t.max_epochs} epochs)")
    if not state.cross_entropy_done(int(t.max_epochs)):
        model.fit(train_ds, validation_data=val_ds, epochs=int(t.max_epochs), callbacks=cbs.all,
                  verbose=cbs.verbose, shuffle=False, initial_epoch=state.epoch,  # seeded pipeline
                  steps_per_epoch=steps, validation_freq=validation_freq(cfg))
    fault_point("between_phases")
    self_critical(cfg, data, model, val_ds, cbs, state)
    train_seconds = time.perf_counter() - run.t0
    epoch, select = load_selected(model, run.dir, cfg, len(cbs.history.rows),
                                  cbs.saver.best_epoch)

    console.rule("Evaluation")
    fault_point("evaluation")
    results, notes = final_evaluation(model, data, cfg, run.dir, run.tracker, epoch)
    results["meta"] = _meta(cfg, cbs, state, train_seconds, notes + data.report.notes,
                            (epoch, select))
    results["provenance"] = provenance()                # git commit, versions, command line
    atomic_write_text(run.dir / "metrics.json", json.dumps(results, indent=2))
    print_scores(results, notes)
    if run.tracker is not None:
        run.tracker.log_outputs(run.dir, results, log_model=bool(cfg.logger.log_model))
    console.print(f"[bold]Run directory:[/] {run.dir}")
    return results


def _meta(cfg, cbs, state: RunState, train_seconds: float, notes: list[str],
          selected: tuple[int | None, str]) -> dict:
    """metrics.json's ``meta``: how the run was selected (``selected``: the scored epoch and
    what chose it, from ``load_selected``), stopped, decoded, and on what."""
    import keras
    import tensorflow as tf

    if cbs.budget is not None and cbs.budget.stopped_epoch:
        stopped_by = "time budget"
    elif stopped_early(state, cfg.trainer):
        stopped_by = "early stopping"
    else:
        stopped_by = "scst_epochs" if state.self_critical else "max_epochs"
    return {
        "best_epoch": selected[0], "epochs_run": len(cbs.history.rows),
        "train_seconds": round(train_seconds, 1),
        "decode": OmegaConf.to_container(cfg.decode, resolve=True),
        "selected_by": selected[1], "stopped_by": stopped_by,
        "self_critical_from_epoch": None if state.scst_from is None else state.scst_from + 1,
        "notes": notes, "tensorflow": tf.__version__, "keras": keras.__version__,
    }


def stopped_early(state: RunState, t) -> bool:
    """Whether early stopping ended the last phase before its planned last epoch (patience can
    run out on that very epoch, which the phase's length ended anyway)."""
    if state.self_critical:
        planned = state.scst_from + int(t.get("scst_epochs", 0))
    else:
        planned = int(t.max_epochs)
    return bool(state.es_stopped_epoch) and state.es_stopped_epoch + 1 < planned
