"""The run's phases, and the one owner of where a run is in them.

A run trains in up to two phases: cross-entropy epochs 1..``trainer.max_epochs`` (early stopping
or the time budget may end them sooner), then, with ``trainer.scst_epochs`` > 0, that many
self-critical epochs from the best checkpoint. ``RunState`` records where the run is; it is
written into the state file after every epoch and read back on resume. Every change to it is
made by ``Phases``, here: after an epoch (``record_epoch``), when the self-critical phase begins
(``begin_self_critical``); the final report asks ``Phases`` why the run stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from captioning.console import console

# A self-critical epoch costs about 2.5 cross-entropy epochs (K samples per image, all
# references): the phase starts only if one such epoch fits in what is left of the budget.
SELF_CRITICAL_EPOCH_COST = 2.5


@dataclass
class RunState:
    """Where a run is; saved in the state file after every epoch, read back on resume."""

    epoch: int = 0                   # completed epochs, both phases counted
    best: float | None = None        # the best monitored value (the checkpoint selection's)
    best_epoch: int | None = None    # its epoch, 1-based
    es_wait: int = 0                 # early stopping: scored epochs without improvement
    es_best: float | None = None     # early stopping's best value
    es_best_epoch: int = 0           # early stopping's best epoch, 0-based as Keras counts
    es_stopped_epoch: int = 0        # > 0: patience ended the current phase at this epoch
    ema_in_model: bool = False       # trainer.ema: the weights saved are the average
    scst_from: int | None = None     # the self-critical phase began after this many epochs
    seconds: float = 0.0             # training time spent, summed over resumes
    restarts: int = 0                # times the run was continued from its state (resume=, requeue)

    @property
    def self_critical(self) -> bool:
        return self.scst_from is not None

    def to_meta(self) -> dict:
        """The JSON kept in ``last.state.npz`` (the same keys as before RunState existed)."""
        meta = asdict(self)
        es = {"wait": meta.pop("es_wait"), "best": meta.pop("es_best"),
              "best_epoch": meta.pop("es_best_epoch"),
              "stopped_epoch": meta.pop("es_stopped_epoch")}
        if meta["scst_from"] is None:
            meta.pop("scst_from")
        return {**meta, "es": es}

    @classmethod
    def from_meta(cls, meta: dict) -> RunState:
        es = meta.get("es", {})
        return cls(epoch=int(meta["epoch"]), best=meta.get("best"),
                   best_epoch=meta.get("best_epoch"),
                   es_wait=int(es.get("wait", 0)), es_best=es.get("best"),
                   es_best_epoch=int(es.get("best_epoch", 0)),
                   es_stopped_epoch=int(es.get("stopped_epoch", 0)),
                   ema_in_model=bool(meta.get("ema_in_model", False)),
                   scst_from=meta.get("scst_from"), seconds=float(meta.get("seconds", 0.0)),
                   restarts=int(meta.get("restarts", 0)))


class Phases:
    """The phase plan of one run (from ``trainer``) over its ``RunState``."""

    def __init__(self, trainer, state: RunState):
        self.state = state
        self.max_epochs = int(trainer.max_epochs)
        self.scst_epochs = int(trainer.get("scst_epochs", 0) or 0)

    @property
    def cross_entropy_done(self) -> bool:
        """Whether the cross-entropy phase has nothing left: all its epochs ran, patience ended
        it, or the self-critical phase has begun."""
        s = self.state
        return s.self_critical or s.epoch >= self.max_epochs or bool(s.es_stopped_epoch)

    def self_critical_epochs(self) -> tuple[int, int] | None:
        """(first epoch, end epoch) of the self-critical phase still to run, Keras-style
        (``initial_epoch``, ``epochs``), once it has begun; None when nothing is left."""
        s = self.state
        if not self.scst_epochs or s.scst_from is None:
            return None
        end = s.scst_from + self.scst_epochs
        start = max(s.epoch, s.scst_from)
        return (start, end) if start < end else None

    def planned_end(self) -> int:
        """The last epoch of the current phase, as planned."""
        s = self.state
        return s.scst_from + self.scst_epochs if s.self_critical else self.max_epochs

    def resumed(self) -> None:
        """The run continues from its state file in a new process."""
        self.state.restarts += 1

    def record_epoch(self, epoch: int, saver, early, ema_in_model: bool, seconds: float) -> None:
        """After ``epoch`` (1-based) ended: the checkpoint selection's best (``saver``), early
        stopping's counters (``early``), whether the averaged weights are in the model, and
        the training time spent over all resumes."""
        s = self.state
        s.epoch, s.best, s.best_epoch = epoch, saver.best, saver.best_epoch
        s.es_wait, s.es_best = int(early.wait), finite(early.best)
        s.es_best_epoch, s.es_stopped_epoch = int(early.best_epoch), int(early.stopped_epoch)
        s.ema_in_model, s.seconds = bool(ema_in_model), round(float(seconds), 1)

    def begin_self_critical(self, budget=None) -> bool:
        """Begin the self-critical phase after the epochs done, patience counted afresh (the
        best score carries over). False, with a message, when ``budget`` (the TimeBudget
        callback) has no room for one self-critical epoch."""
        s = self.state
        if budget is not None and (budget.stopped_epoch or budget.seconds_left()
                                   < SELF_CRITICAL_EPOCH_COST * budget.slowest):
            console.print(f"[yellow]Self-critical training skipped:[/] the time budget "
                          f"(trainer.max_minutes) has no room for it after epoch {s.epoch}. "
                          f"Raise trainer.max_minutes or lower trainer.max_epochs to leave "
                          f"it time.")
            return False
        s.scst_from, s.es_wait = s.epoch, 0                # only this phase's epochs count
        return True

    def stopped_early(self) -> bool:
        """Whether early stopping ended the last phase before its planned last epoch (patience
        can run out on that very epoch, which the phase's length ended anyway)."""
        s = self.state
        return bool(s.es_stopped_epoch) and s.es_stopped_epoch + 1 < self.planned_end()

    def stopped_by(self, budget=None) -> str:
        """metrics.json's ``stopped_by``."""
        if budget is not None and budget.stopped_epoch:
            return "time budget"
        if self.stopped_early():
            return "early stopping"
        return "scst_epochs" if self.state.self_critical else "max_epochs"


def finite(x) -> float | None:
    """A float, or None for None / inf / nan (Keras's "no best yet")."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
