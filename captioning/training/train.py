"""``train(cfg)``: the whole run, composed. config -> data -> model -> callbacks -> fit ->
self-critical phase -> evaluate -> outputs. Each step lives in the module named beside it.

A run directory explains itself: ``config.yaml`` (resolved), ``.hydra/`` (as composed, with
overrides), ``checkpoints/`` (best, last, vocabulary, resume state), ``history.csv``,
``plots/``, ``data.json`` (counts and what cleaning removed), ``metrics.json``,
``predictions.csv``. The names are ``captioning.runs``'.

Importing this module loads TensorFlow: the entry points check the config first
(``config_check``), and so does ``train``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf
from omegaconf import OmegaConf

from captioning import TrainingInterrupted
from captioning.config_check import check_config
from captioning.console import console, print_data_report, print_scored, print_scores
from captioning.data.datamodule import build_data
from captioning.data.features import attach_feature_cache
from captioning.data.text import Vocabulary
from captioning.evaluation.evaluate import final_evaluation
from captioning.io import atomic_write_text
from captioning.provenance import provenance
from captioning.runs.checkpoints import load_selected
from captioning.runs.files import VOCAB, checkpoints, record_slurm_job, state_path
from captioning.runs.resume import check_resume
from captioning.tracking.loggers import open_loggers
from captioning.training.callbacks import make_callbacks
from captioning.training.cluster import workspace
from captioning.training.compile import compile_captioner
from captioning.training.debug import limit_splits, limit_train, validation_freq
from captioning.training.phases import Phases, RunState
from captioning.training.runtime import prepare_runtime
from captioning.training.scst import self_critical
from captioning.training.signals import fault_point, report_interrupted, stop_signals
from captioning.training.state_file import load_state


@dataclass
class Run:
    """What every step of one run shares: its folder, its phases, its tracker and clock."""

    dir: Path
    phases: Phases
    t0: float                      # time.perf_counter() at the start of this process's run
    tracker: object | None = None  # a LoggerSet (tracking/loggers.py), or None (no logger)
    clock: object | None = None    # trainer.lr_follows_clock: the fraction of max_minutes used


def train(cfg) -> dict:
    """Train, evaluate and write a run; returns ``{"val": {...}, "test": {...}, "meta": {...}}``."""
    check_config(cfg)
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
    strategy = prepare_runtime(cfg)          # strategy first; session, seeds, precision
    t0 = time.perf_counter()
    checkpoints(run_dir).mkdir(parents=True, exist_ok=True)
    record_slurm_job(run_dir)                           # a requeued job finds its run again
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    fault_point("index")
    vocab = Vocabulary.load(checkpoints(run_dir) / VOCAB) if resuming else None  # the run's own
    data = build_data(cfg, vocab=vocab)
    limit_splits(cfg, data)                             # trainer.overfit/limit_*_batches
    data.vocab.save(checkpoints(run_dir) / VOCAB)
    report = {**data.report.as_dict(), "vocab_size": data.vocab.size}
    atomic_write_text(run_dir / "data.json", json.dumps(report, indent=2))
    print_data_report(cfg, data)
    model, clock = compile_captioner(cfg, data, strategy)
    fault_point("features")
    attach_feature_cache(cfg, data, model)
    phases = Phases(cfg.trainer,
                    load_state(state_path(run_dir), model) if resuming else RunState())
    if resuming:
        phases.resumed()
        console.print(f"[bold]Resuming[/] {run_dir} after epoch {phases.state.epoch}")
    run = Run(run_dir, phases, t0, open_loggers(cfg, run_dir, data), clock)
    try:
        return _fit_and_evaluate(cfg, data, model, run)
    finally:
        if run.tracker is not None:
            run.tracker.close_and_report()


def _fit_and_evaluate(cfg, data, model, run: Run) -> dict:
    """Cross-entropy epochs, the self-critical phase, then the final evaluation and report."""
    t, phases = cfg.trainer, run.phases
    fault_point("datasets")
    sample = t.get("sample_captions")
    train_ds = data.train_dataset(int(t.batch_size), int(cfg.seed),
                                  sample=int(sample) if sample else None)
    val_ds = data.train_dataset(int(cfg.evaluation.batch_size), int(cfg.seed), split="val",
                                shuffle=False)
    cbs = make_callbacks(cfg, data, run.dir, phases, run.tracker, run.t0, run.clock)
    train_ds, steps = limit_train(cfg, data, train_ds,  # limit_train_batches; repeated
                                  passes_done=min(phases.state.epoch, int(t.max_epochs)))
    console.rule(f"Training ({len(data.splits['train'])} images, {steps} steps/epoch, up to "
                 f"{t.max_epochs} epochs)")
    if not phases.cross_entropy_done:
        model.fit(train_ds, validation_data=val_ds, epochs=int(t.max_epochs), callbacks=cbs.all,
                  verbose=cbs.verbose, shuffle=False, initial_epoch=phases.state.epoch,
                  steps_per_epoch=steps, validation_freq=validation_freq(cfg),  # seeded pipeline
                  validation_steps=data.steps("val", int(cfg.evaluation.batch_size)))
    fault_point("between_phases")
    self_critical(cfg, data, model, val_ds, cbs, phases, run.dir)
    train_seconds = time.perf_counter() - run.t0
    epoch, select = load_selected(model, run.dir, cfg, len(cbs.history.rows),
                                  cbs.saver.best_epoch)
    cbs.history.scored = (epoch, select)
    cbs.history.write(plot=True)                        # the plots mark the scored epoch

    console.rule("Evaluation")
    fault_point("evaluation")
    results, notes = final_evaluation(model, data, cfg, run.dir, run.tracker, epoch)
    results["meta"] = _meta(cfg, cbs, phases, train_seconds, notes + data.report.notes,
                            (epoch, select))
    results["provenance"] = provenance()                # git commit, versions, command line
    atomic_write_text(run.dir / "metrics.json", json.dumps(results, indent=2))
    print_scores(results, notes)
    print_scored(epoch, select, str(cfg.callbacks.get("checkpoints", {}).get("select", "best")),
                 phases.state.best)
    if run.tracker is not None:
        run.tracker.log_outputs(run.dir, results, log_model=bool(cfg.logger.get("log_model")))
    console.print(f"[bold]Run directory:[/] {run.dir}")
    return results


def _meta(cfg, cbs, phases: Phases, train_seconds: float, notes: list[str],
          selected: tuple[int | None, str]) -> dict:
    """metrics.json's ``meta``: how the run was selected (``selected``: the scored epoch and
    what chose it, from ``load_selected``), stopped, decoded, and on what."""
    scst_from = phases.state.scst_from
    return {
        "best_epoch": selected[0], "epochs_run": len(cbs.history.rows),
        "train_seconds": round(train_seconds, 1),
        "decode": OmegaConf.to_container(cfg.decode, resolve=True),
        "selected_by": selected[1], "stopped_by": phases.stopped_by(cbs.budget),
        "self_critical_from_epoch": None if scst_from is None else scst_from + 1,
        "restarts": phases.state.restarts,
        "notes": notes, "tensorflow": tf.__version__, "keras": keras.__version__,
        "precision": keras.mixed_precision.dtype_policy().name,   # what auto resolved to
    }
