"""The names of a run folder's files and the plain-text ones read back (pure Python)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import yaml

from captioning import CaptioningError
from captioning.io import atomic_write_text

CHECKPOINTS = "checkpoints"
LAST_STATE = "last.state.npz"          # the resume state: weights, optimizer, RunState
PREVIOUS_STATE = "previous.state.npz"  # the epoch before, should the last write have died
VOCAB = "vocab.json"
LOCK = "run.lock"                      # held while a process trains in the run
TENSORBOARD = "tensorboard"            # logger=tensorboard's event files
SLURM_JOB = "slurm.json"               # the SLURM job that trains the run (a requeue finds it)
# Keys that locate things on disk (in any section): a resumed run may move them, and Comet's
# experiment names leave them out.
LOCATION_KEYS = ("root", "json", "images", "data_dir", "cache_dir", "output_dir")


def checkpoints(run_dir) -> Path:
    return Path(run_dir) / CHECKPOINTS


def weights_path(run_dir, name: str) -> Path:
    """``checkpoints/<name>.weights.h5`` (best, last, or an ``epoch_name``)."""
    return checkpoints(run_dir) / f"{name}.weights.h5"


def state_path(run_dir) -> Path:
    return checkpoints(run_dir) / LAST_STATE


def previous_state(path: Path) -> Path:
    """``previous.state.npz`` beside ``last.state.npz``: the epoch before, kept as a fallback."""
    return Path(path).with_name(PREVIOUS_STATE)


def has_state(run_dir) -> bool:
    last = state_path(run_dir)
    return last.is_file() or previous_state(last).is_file()


def slurm_job() -> str | None:
    """This process's SLURM job (``SLURM_JOB_ID``; an array task's own id), or None."""
    return os.environ.get("SLURM_JOB_ID") or None


def slurm_restarts() -> int:
    """How many times SLURM has restarted this job (requeue, preemption, node failure)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def record_slurm_job(run_dir) -> None:
    """``slurm.json`` in the run folder: the job that trains it, so that the same job, requeued,
    finds its run again (``runs.resume.requeued_run``). Nothing outside SLURM."""
    job = slurm_job()
    if job is None:
        return
    record = {"job_id": job, "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
              "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
              "restarts": slurm_restarts()}
    atomic_write_text(Path(run_dir) / SLURM_JOB, json.dumps(record))


def recorded_slurm_job(run_dir) -> str | None:
    try:
        return str(json.loads((Path(run_dir) / SLURM_JOB).read_text())["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def epoch_name(epoch: int) -> str:
    """The weights name of a 1-based epoch's own checkpoint: ``epoch_007``."""
    return f"epoch_{epoch:03d}"


def averaged_epochs(which: str) -> list[int]:
    """``mean:21-30`` -> [21, ..., 30] (``mean:21,25,30`` a list); [] for a plain name."""
    if not which.startswith("mean:"):
        return []
    try:
        epochs = []
        for part in which[len("mean:"):].split(","):
            lo, _, hi = part.partition("-")
            epochs += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise CaptioningError(f"which={which}: checkpoint averaging takes 1-based epochs, "
                              f"mean:FIRST-LAST or mean:E1,E2,... (e.g. which=mean:21-30).")
    return sorted(set(epochs))


def read_history(run_dir) -> list[dict]:
    """The rows of ``history.csv`` ([] when there is none yet)."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def started_with(run_dir) -> list[str] | None:
    """The command-line overrides ``run_dir`` was started with (Hydra's
    ``.hydra/overrides.yaml``, less ``resume=``), or None when Hydra did not record them."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(overrides, list):
        return None
    return [str(o) for o in overrides if not str(o).startswith(("resume=", "+resume="))]


def default_weights(run_dir) -> str:
    """The weights a run's own final scores used: its ``callbacks.checkpoints.select`` (best,
    or last for a fixed-schedule run), best for runs saved before that option existed."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return "best"
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    select = ((saved.get("callbacks") or {}).get("checkpoints") or {}).get("select")
    return str(select or "best")


def weights_epoch(run_dir, which: str) -> int | None:
    """The epoch the weights ``which`` stand for, as the run's own final grid counts it:
    ``epoch_NNN`` -> NNN, ``last`` -> the epochs run, ``mean:A-B`` -> the last averaged epoch
    the run reached, ``best`` -> the best epoch its state file records; None where unknown (a
    weights file from elsewhere, a run without history or state)."""
    import numpy as np

    run_dir = Path(run_dir)
    ran = len(read_history(run_dir))
    if which.startswith("epoch_") and which[len("epoch_"):].isdigit():
        return int(which[len("epoch_"):])
    if which == "last":
        return ran or None
    if which.startswith("mean:"):
        reached = [e for e in averaged_epochs(which) if e <= ran]
        return reached[-1] if reached else None
    if which == "best" and state_path(run_dir).is_file():
        try:
            with np.load(state_path(run_dir)) as z:
                best = json.loads(str(z["meta"])).get("best_epoch")
        except (OSError, ValueError, KeyError):      # unreadable: the grid says nothing
            return None
        return int(best) if best is not None else None
    return None
