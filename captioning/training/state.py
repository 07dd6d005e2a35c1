"""``RunState``: where a run is, in one object. The resume callback (``SaveState``) owns it:
it brings it up to date after every epoch and writes it into ``checkpoints/last.state.npz``
beside the weights; ``load_state`` reads it back. Early stopping, the checkpoint selection,
the self-critical phase and the final report read it instead of passing dicts around."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class RunState:
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

    @property
    def self_critical(self) -> bool:
        return self.scst_from is not None

    def cross_entropy_done(self, max_epochs: int) -> bool:
        """Whether the cross-entropy phase has nothing left: all its epochs ran, patience ended
        it, or the self-critical phase has begun."""
        return self.self_critical or self.epoch >= max_epochs or bool(self.es_stopped_epoch)

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
                   scst_from=meta.get("scst_from"), seconds=float(meta.get("seconds", 0.0)))


def finite(x) -> float | None:
    """A float, or None for None / inf / nan (Keras's "no best yet")."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
