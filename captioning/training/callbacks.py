"""Callbacks that make a run directory explain itself: history.csv, checkpoints, plots."""

from __future__ import annotations

import csv
import io
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras

from captioning import ConfigError
from captioning.data.text import END, PAD, START, UNK
from captioning.evaluation.metrics import score
from captioning.io import atomic_path, atomic_write_text
from captioning.models.decoding import Generator, caption_records
from captioning.plugins import build as build_target
from captioning.runs.checkpoints import WeightsWriter
from captioning.runs.files import averaged_epochs, checkpoints, epoch_name, read_history, state_path
from captioning.tracking.kangas_grids import pick_rows, write_grid
from captioning.training.debug import profiler, validation_freq
from captioning.training.early_stopping import ResumableEarlyStopping
from captioning.training.phases import Phases
from captioning.training.signals import StopOnSignal, fault_point
from captioning.training.state_file import SaveState


class History(keras.callbacks.Callback):
    """``history.csv``: one row per epoch (epoch, wall-clock seconds, learning rate, every metric),
    rewritten atomically after each epoch; ``plots/loss.png`` and ``plots/accuracy.png``, and
    ``plots/scores.png`` once validation captions are scored (``monitor``/``mode``: the
    checkpoint selection's, to mark the selected epoch)."""

    # Redrawing the plots takes ~0.8 s: after epochs shorter than this, they are redrawn at
    # most this often, and when training ends (history.csv is rewritten every epoch).
    PLOT_EVERY_S = 20.0

    def __init__(self, run_dir: Path, rows: list[dict] | None = None, monitor: str = "val_loss",
                 mode: str = "auto"):
        super().__init__()
        self.run_dir, self.rows = Path(run_dir), list(rows or [])
        self.monitor, self.mode = monitor, mode
        self._plotted = None              # perf_counter of the last plot; None: not yet
        self.scored: tuple[int, str] | None = None   # (epoch, what chose it), once known

    def mark(self) -> tuple[int, str] | None:
        """The epoch the plots mark: the scored one at the end of the run, until then the best
        ``monitor`` epoch so far."""
        if self.scored is not None and self.scored[0] is not None:
            return self.scored[0], f"scored: epoch {self.scored[0]} ({self.scored[1]})"
        best = selected_epoch(self.rows, self.monitor, monitor_mode(self.monitor, self.mode))
        return None if best is None else (best, f"best so far: epoch {best} ({self.monitor})")

    def on_train_end(self, logs=None):
        self.write(plot=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        fault_point("epoch_end")
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._t0, 3)}
        lr = self.model.optimizer.learning_rate
        # float32 holds ~7 significant digits: 0.001, not 0.0010000000474974513
        row["learning_rate"] = float(f"{float(keras.ops.convert_to_numpy(lr)):.7g}")
        row.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        self.write()

    def write(self, plot: bool | None = None):
        """history.csv, and the plots when ``plot`` (None: unless drawn under PLOT_EVERY_S ago)."""
        if not self.rows:
            return
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())
        now = time.perf_counter()
        if plot is None:
            plot = self._plotted is None or now - self._plotted >= self.PLOT_EVERY_S
        if not plot:
            return
        self._plotted = now
        plot_history(self.rows, self.run_dir / "plots", self.mark())
        if any(k in r for r in self.rows for k in SCORE_CURVES):
            plot_scores(self.rows, self.run_dir / "plots", self.mark())


def plot_history(rows: list[dict], out_dir: Path, mark: tuple[int, str] | None = None) -> None:
    """Train vs validation curves per epoch, like recipe A's; ``mark``: (epoch, label), a
    dashed line at the epoch whose weights are scored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for metric in ("loss", "accuracy"):
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            # val_* only on validated epochs (trainer.check_val_every_n_epoch)
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        if mark is not None:
            ax.axvline(mark[0], color="grey", linestyle="--", label=mark[1])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"masked token {metric}" if metric == "accuracy" else "masked cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(out_dir / f"{metric}.png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)


SCORE_CURVES = {"val_bleu_4": "val BLEU-4", "val_cider": "val CIDEr",
                "reward": "self-critical reward (CIDEr-D of samples)"}


def selected_epoch(rows: list[dict], monitor: str, mode: str) -> int | None:
    """The epoch the best checkpoint holds: the first best ``monitor`` value (SaveWeights keeps
    a new best only on a strict improvement)."""
    scored = [r for r in rows if r.get(monitor) is not None]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r[monitor])["epoch"]


def plot_scores(rows: list[dict], out_dir: Path, mark: tuple[int, str] | None = None) -> None:
    """``scores.png``: val BLEU-4 and CIDEr per scored epoch, the self-critical reward when it
    was logged, and ``mark`` (epoch, label: the scored epoch) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for key, label in SCORE_CURVES.items():
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    if mark is not None:
        ax.axvline(mark[0], color="grey", linestyle="--", label=mark[1])
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(out_dir / "scores.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


class EMAWeights(keras.callbacks.SwapEMAWeights):
    """``trainer.ema``: Polyak averaging of the weights, kept by the optimizer (``use_ema``).
    Between epochs the model holds the averaged weights, so the validation loss, the validation
    captions, both checkpoints and the resume state all see them; each epoch trains on the raw
    weights. Must come before every epoch-end callback that reads the weights. A resume state is
    written with the average in the model (``in_model``); a resumed run swaps back first."""

    def __init__(self, restored_in_model: bool = False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = bool(restored_in_model)

    @property
    def in_model(self) -> bool:
        return bool(self._ema_weights_in_model)


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """'max' for scores (accuracy, BLEU, CIDEr, ...), 'min' for losses, unless set explicitly."""
    if mode != "auto":
        return mode
    scores = ("acc", "bleu", "cider", "meteor", "rouge", "spice")
    return "max" if any(s in monitor for s in scores) else "min"


class SaveWeights(keras.callbacks.Callback):
    """``checkpoints/last.weights.h5`` every epoch and ``best.weights.h5`` when ``monitor``
    improves, each written atomically (a kill mid-write leaves the previous file); with
    ``every_epoch`` also ``epoch_NNN.weights.h5`` (1-based), which checkpoint averaging reads
    (``eval.py which=mean:21-30``), and those of the ``keep`` epochs whatever ``every_epoch``
    says (``callbacks.checkpoints.select=mean:28-30``)."""

    def __init__(self, ckpt_dir: Path, monitor: str, mode: str = "auto", best: float | None = None,
                 best_epoch: int | None = None, every_epoch: bool = False,
                 keep: tuple[int, ...] = ()):
        super().__init__()
        self.dir, self.monitor, self.every_epoch = Path(ckpt_dir), monitor, every_epoch
        self.keep = set(keep)        # 1-based epochs kept anyway (select=mean:A-B averages them)
        self.mode = monitor_mode(monitor, mode)
        self.best, self.best_epoch = best, best_epoch    # resumed from the RunState
        self.writer = None           # a WeightsWriter for the model, made at the first save

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        self._save("last")
        if self.every_epoch or epoch + 1 in self.keep:
            self._copy_last(epoch_name(epoch + 1))
        value = (logs or {}).get(self.monitor)
        if value is not None and self.improved(float(value)):
            self.best, self.best_epoch = float(value), epoch + 1
            self._copy_last("best")

    def _save(self, name):
        if self.writer is None or self.writer.model is not self.model:
            self.writer = WeightsWriter(self.model)
        with atomic_path(self.dir / f"{name}.weights.h5") as tmp:
            self.writer.save(tmp)

    def _copy_last(self, name):
        """The same weights under another name: a file copy, not a second serialisation."""
        with atomic_path(self.dir / f"{name}.weights.h5") as tmp:
            shutil.copyfile(self.dir / "last.weights.h5", tmp)


DISTINCT_WARNING = 0.10     # warn when fewer validation captions than this share are distinct


def caption_diversity(captions: list[str], vocab) -> tuple[float, float]:
    """(share of distinct captions, share of the vocabulary used). The vocabulary's share is
    the distinct words of the captions that are vocabulary words, over the vocabulary's words
    without the four special tokens (padding, [UNK], <start>, <end>)."""
    if not captions:
        return 0.0, 0.0
    special = {PAD, UNK, START, END}
    words = {w for c in captions for w in c.split()} & set(vocab.tokens)
    size = len(set(vocab.tokens) - special)
    return len(set(captions)) / len(captions), len(words - special) / max(1, size)


class ValidationCaptions(keras.callbacks.Callback):
    """Every N epochs: caption a fixed validation subset with the configured decoding, score it
    (BLEU-4 and CIDEr go into the epoch logs as ``val_bleu_4`` / ``val_cider``, so early
    stopping and the best checkpoint can follow CIDEr), and write a Kangas grid. Whenever it
    captions, the captions' diversity goes into the logs too (``val_distinct``,
    ``val_vocab_used``: see caption_diversity), with one warning under 10% distinct.

    Must come before EarlyStopping / SaveWeights in the callback list: they read the logs
    this callback adds.
    """

    def __init__(self, data, cfg, run_dir: Path, tracker=None):
        super().__init__()

        self.data, self.cfg, self.run_dir, self.tracker = data, cfg, Path(run_dir), tracker
        cb = cfg.callbacks
        self.score_every = int(cb.val_captions.every_n_epochs)
        self.grid_every = int(cb.kangas.every_n_epochs) if cb.kangas.enabled else 0
        self.records = pick_rows(data.splits["val"], int(cb.val_captions.max_images), int(cfg.seed))
        self.grid_rows = int(cb.kangas.max_rows)
        self.generator = None          # built once: a new one each epoch would retrace its graph
        self.warned_distinct = False   # the low-diversity warning is printed once

    def on_epoch_end(self, epoch, logs=None):
        e = epoch + 1
        due_score = self.score_every and e % self.score_every == 0
        due_grid = self.grid_every and e % self.grid_every == 0
        if not (due_score or due_grid):
            return

        if self.generator is None:
            from omegaconf import OmegaConf

            # val_captions.method / .tta override decode.* while training (e.g. greedy without
            # views per epoch, the configured beam and views for the final scores); null keeps it.
            val = self.cfg.callbacks.val_captions
            over = {k: str(val[k]) for k in ("method", "tta") if val.get(k)}
            decode = OmegaConf.merge(self.cfg.decode, over)
            self.generator = Generator.from_config(self.model, self.data.vocab, decode,
                                                   seed=int(self.cfg.seed))
        preds = caption_records(self.generator, self.data, self.records,
                                int(self.cfg.evaluation.batch_size))
        scores = score({r.id: list(r.captions) for r in self.records},
                       {r.id: p for r, p in zip(self.records, preds, strict=True)}, meteor=False)
        if logs is not None and due_score:
            logs["val_bleu_4"], logs["val_cider"] = scores.corpus["bleu_4"], scores.corpus["cider"]
        self._diversity(e, preds, logs)
        if self.tracker is not None:
            self.tracker.log_captions(e, self.records, preds)
        if due_grid:
            n = self.grid_rows
            write_grid(self.run_dir, f"epoch_{e:03d}", self.records[:n], preds[:n],
                       scores.per_image, e, self.cfg, self.tracker)

    def _diversity(self, epoch: int, preds: list[str], logs) -> None:
        """``val_distinct`` / ``val_vocab_used`` into the epoch logs (so history.csv and Comet
        get them), and one warning per run when under 10% of the captions are distinct."""
        distinct, used = caption_diversity(preds, self.data.vocab)
        if logs is not None:
            logs["val_distinct"], logs["val_vocab_used"] = distinct, used
        if distinct < DISTINCT_WARNING and not self.warned_distinct:
            self.warned_distinct = True
            print(f"warning: epoch {epoch}: only {distinct:.0%} of {len(preds)} validation "
                  f"captions are distinct (under {DISTINCT_WARNING:.0%}): the model writes "
                  f"nearly the same caption for every image. Train longer, check the "
                  f"learning rate, or look at the images in predictions/*.datagrid.")


class TimeBudget(keras.callbacks.Callback):
    """``trainer.max_minutes``: end training after the epoch that the next one would carry past
    the budget (counted from ``t0``, the start of the run; the final evaluation comes after).
    Like Lightning's ``max_time``, but it never cuts an epoch in half: the estimate is the
    slowest epoch so far. ``clock``, when given, is kept at the fraction of the budget used
    (after every batch), for a learning-rate schedule that follows the time."""

    def __init__(self, minutes: float, t0: float, clock=None):
        super().__init__()
        self.budget, self.t0, self.clock = 60.0 * float(minutes), t0, clock
        self.slowest, self.started, self.stopped_epoch = 0.0, None, None

    def on_train_batch_end(self, batch, logs=None):
        if self.clock is not None:
            self.clock.assign(min(1.0, (time.perf_counter() - self.t0) / self.budget))

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def seconds_left(self) -> float:
        """What is left of the budget now."""
        return self.budget - (time.perf_counter() - self.t0)

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.slowest = max(self.slowest, now - self.started)
        if now - self.t0 + self.slowest > self.budget:
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
            print(f"Time budget: stopping after epoch {epoch + 1} ({(now - self.t0) / 60:.1f} of "
                  f"trainer.max_minutes={self.budget / 60:g} minutes used; an epoch takes up to "
                  f"{self.slowest:.0f} s).")


class LoggerEpochs(keras.callbacks.Callback):
    """Per-epoch metrics to the run's loggers (``tracking/loggers.py``), with the epoch (1-based)
    as the step."""

    def __init__(self, tracker):
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_epoch(epoch + 1, logs or {})


@dataclass
class CallbackSet:
    """The run's callbacks, in the order Keras must call them, with handles on the ones the
    phases and the final report read."""

    all: list
    history: History
    saver: SaveWeights
    early: keras.callbacks.EarlyStopping
    budget: TimeBudget | None
    verbose: int = field(default_factory=lambda: 1 if sys.stdout.isatty() else 2)  # bar or lines


def make_callbacks(cfg, data, run_dir: Path, phases: Phases, tracker=None, t0=None,
                   clock=None) -> CallbackSet:
    """Signals, EMA swap, validation captions, history, checkpoints, early stopping, the resume
    state (after the two it records), NaN guard, time budget, the loggers; resumed from the run's
    state (``phases.state``)."""
    state, es = phases.state, cfg.callbacks.early_stopping
    ckpts = cfg.callbacks.get("checkpoints", {})
    saver = SaveWeights(checkpoints(run_dir), es.monitor, es.mode, best=state.best,
                        best_epoch=state.best_epoch, every_epoch=bool(ckpts.get("every_epoch")),
                        keep=tuple(averaged_epochs(str(ckpts.get("select", "best")))))
    history = History(run_dir, rows=[r for r in read_history(run_dir) if r["epoch"] <= state.epoch],
                      monitor=es.monitor, mode=es.mode)
    early = ResumableEarlyStopping(monitor=es.monitor, patience=int(es.patience),
                                   mode=monitor_mode(es.monitor, es.mode),
                                   min_delta=float(es.min_delta),
                                   restore_best_weights=False,   # the best checkpoint is reloaded
                                   state=state, validation_freq=validation_freq(cfg))
    ema = EMAWeights(restored_in_model=state.ema_in_model) if cfg.trainer.get("ema") else None
    callbacks = [
        StopOnSignal(),                                       # Ctrl-C / SIGTERM: after the batch
        *([ema] if ema is not None else []),                  # averaged weights in for all below
        ValidationCaptions(data, cfg, run_dir, tracker),      # adds val_cider for the ones below
        history,
        saver,
        early,
        SaveState(state_path(run_dir), phases, saver, early, ema, t0),
        keras.callbacks.TerminateOnNaN(),
    ]
    minutes = cfg.trainer.get("max_minutes")
    # The budget counts the time earlier processes of a resumed run spent, too.
    budget = TimeBudget(minutes, t0 - state.seconds, clock) if minutes else None
    callbacks += [budget] if budget is not None else []
    # after ValidationCaptions: the loggers see its scores in the logs
    callbacks += [LoggerEpochs(tracker), *tracker.callbacks()] if tracker is not None else []
    callbacks += profiler(cfg, run_dir)                       # trainer.profile_batches
    callbacks += extra_callbacks(cfg)                         # callbacks.extra: the user's
    return CallbackSet(callbacks, history, saver, early, budget)


def extra_callbacks(cfg) -> list:
    """``callbacks.extra``: Keras callbacks of the user's own, each a ``_target_`` dict (its
    other keys are its arguments), after the built-in ones (they see val_cider in the logs)."""
    out = []
    for i, item in enumerate(cfg.callbacks.get("extra") or []):
        callback = build_target(f"callbacks.extra[{i}]", item)
        if not isinstance(callback, keras.callbacks.Callback):
            raise ConfigError(f"callbacks.extra[{i}]._target_={item._target_} built a "
                              f"{type(callback).__name__}, not a keras.callbacks.Callback.")
        out.append(callback)
    return out
