"""The run a ``resume=`` continues: found, checked and locked (pure Python: ``run.py`` calls
this before Hydra starts, so a mistyped ``resume=`` leaves no stray folder)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from captioning import CaptioningError, ConfigError
from captioning.io import PidLock
from captioning.plugins import target_of
from captioning.runs.files import (
    LOCATION_KEYS,
    LOCK,
    has_state,
    recorded_slurm_job,
    slurm_job,
    slurm_restarts,
    started_with,
)

# Config sections a resumed run must keep: they define the model's shapes and its data.
RESUME_FIXED = ("dataset", "backbone", "decoder", "text", "seed")
# Keys added since some runs began, with the default that changes nothing: a run whose
# config.yaml lacks one resumes when the key keeps that default.
RESUME_ADDED = {"dataset.holdout": None, "dataset.holdout_seed": 0,
                "dataset.holdout_list": None, "dataset.classes": None, "trainer.class_loss": 0,
                "dataset.train_on_holdout": False}
# Outside those sections, keys whose being on or off adds weights (a head) to the model.
RESUME_HEADS = ("trainer.word_loss", "trainer.class_loss")


def running_pid(run_dir) -> int | None:
    """The pid of the live process that holds ``run_dir``'s lock (its host's), or None."""
    owner = PidLock(Path(run_dir) / LOCK).owner()
    return None if owner is None else int(owner.get("pid") or 0) or None


class RunLock:
    """``run.lock`` in a run directory for as long as a process trains in it: ``resume=``
    refuses a run that is still running, and ``resume=true`` skips it."""

    def __init__(self, run_dir: Path):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.lock = PidLock(Path(run_dir) / LOCK)

    def __enter__(self):
        if not self.lock.acquire(wait=False):
            owner = self.lock.owner() or {}
            raise CaptioningError(f"{self.lock.path.parent} is in use by another run (pid "
                                  f"{owner.get('pid')} on {owner.get('host')}). Wait for it to "
                                  f"end, or stop it first.")
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _same(o: str) -> bool:
    return not o.startswith(("resume=", "+resume=", "hydra."))


def find_resumable(outputs: Path, overrides: list[str]) -> Path | None:
    """The newest unfinished run under ``outputs`` started with the same overrides and not
    running now."""
    wanted = sorted(o for o in overrides if _same(o))
    states = [*outputs.glob("*/*/checkpoints/*.state.npz"),
              *outputs.glob("multirun/*/*/*/checkpoints/*.state.npz")]
    runs = sorted({p.parent.parent for p in states}, key=lambda r: r.stat().st_mtime,
                  reverse=True)
    for run in runs:
        ov = run / ".hydra" / "overrides.yaml"
        if (run / "metrics.json").exists() or not ov.exists() or running_pid(run) is not None:
            continue
        theirs = sorted(o for o in (yaml.safe_load(ov.read_text()) or []) if _same(o))
        if theirs == wanted:
            return run
    return None


def requeued_run(outputs: Path, run_dir: Path | None = None) -> Path | None:
    """The run this SLURM job trained before SLURM requeued it (a time limit's USR2, a
    preemption, ``scontrol requeue``, a node failure: the same job id, ``SLURM_RESTART_COUNT``
    > 0), when it left a resume state: ``run_dir`` (a sweep job's own folder, which the
    requeued job runs in again) if it holds one, else the folder under ``outputs`` whose
    ``slurm.json`` names this job. None outside such a job."""
    job = slurm_job()
    if job is None or slurm_restarts() < 1:
        return None
    candidates = [Path(run_dir)] if run_dir is not None else []
    candidates += [p.parent for p in (*outputs.glob("*/*/slurm.json"),
                                      *outputs.glob("multirun/*/*/*/slurm.json"))]
    for run in candidates:
        finished = (run / "metrics.json").exists()
        if recorded_slurm_job(run) == job and has_state(run) and not finished:
            return run
    return None


def locate(resume, overrides: list[str], named_dir: str | None = None,
           sweep_job: bool = False) -> Path | None:
    """Where ``resume=`` points: None for false; for true, ``named_dir`` when it holds a resume
    state, else the newest unfinished run under ``outputs/`` with the same ``overrides``; else
    the directory given. Without ``resume=``, a requeued SLURM job resumes its own run
    (``requeued_run``). A sweep's job (``sweep_job``) with ``resume=true`` and nothing to
    resume starts afresh instead of failing, so that the same sweep command plus
    ``resume=true`` finishes a sweep whose jobs were killed: finished jobs report their scores,
    interrupted ones continue, the others start. The one place ``resume=`` is resolved
    (run.py, before Hydra starts, for a single run; inside each job for a sweep's jobs)."""
    text = str(resume).lower()
    if text in ("false", "null", "none", ""):
        run = requeued_run(Path("outputs"), Path(named_dir) if named_dir else None)
        if run is not None:
            print(f"SLURM job {slurm_job()} restarted ({slurm_restarts()}): resuming {run}")
        return run
    if text == "true":
        run = (Path(named_dir) if named_dir and has_state(Path(named_dir))
               else find_resumable(Path("outputs"), overrides))
        if run is None and sweep_job:
            print(f"resume=true: nothing to resume for this job; starting it in {named_dir}")
            return None
        if run is None:
            raise CaptioningError("resume=true: no unfinished run under outputs/ "
                                  "was started with the same overrides. "
                                  "Give the run directory instead: resume=outputs/<date>/<time>")
    else:
        run = Path(str(resume))
    problem = resume_blocker(run)
    if problem:
        raise CaptioningError(f"resume={resume}: {problem}")
    return run


def resume_blocker(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be resumed (no resume state, or another live process trains in
    it), or None."""
    if not has_state(run_dir):
        return (f"{run_dir} has no checkpoints/last.state.npz to resume from. Point resume= at a "
                f"run directory that was interrupted (outputs/<date>/<time>), or drop resume.")
    pid = running_pid(run_dir)
    if pid is not None and pid != os.getpid():
        return f"{run_dir} is still running (pid {pid}). Wait for it to end."
    return None


def resume_changes(run_dir: Path, cfg) -> list[str]:
    """The model- and data-defining settings (``RESUME_FIXED``) that ``cfg`` changes from the
    run's own ``config.yaml``, as "key: old -> new" lines."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return []
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    new = OmegaConf.to_container(cfg, resolve=True)
    changes = []
    for section in RESUME_FIXED:
        a, b = _leaves(old.get(section), section), _leaves(new.get(section), section)
        for key in sorted(set(a) | set(b)):
            if key not in a and (key in RESUME_ADDED and b.get(key) == RESUME_ADDED[key]
                                 or key == f"{section}._target_"    # the code its name built
                                 and b.get(key) == target_of(section, old.get(section) or {})):
                continue
            if key.rsplit(".", 1)[-1] not in LOCATION_KEYS and a.get(key) != b.get(key):
                changes.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    a, b = _leaves(old.get("trainer"), "trainer"), _leaves(new.get("trainer"), "trainer")
    changes += [f"{key}: {a.get(key, 0)!r} -> {b.get(key, 0)!r} (a head on or off)"
                for key in RESUME_HEADS if bool(a.get(key, 0)) != bool(b.get(key, 0))]
    return changes


def added_defaults(changes: list[str]) -> list[str]:
    """For changed keys that a run's config.yaml lacks (added since it began): the override
    that gives them the value the run had, e.g. ``dataset.classes=null``."""
    keys = [c.split(":")[0] for c in changes]
    return [f"{k}={'null' if RESUME_ADDED[k] is None else RESUME_ADDED[k]}" for k, c in
            zip(keys, changes, strict=True)
            if k in RESUME_ADDED and c.startswith(f"{k}: {RESUME_ADDED[k]!r} -> ")]


def _leaves(node, prefix: str) -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}.{k}"))
    return out


def check_resume(cfg, run_dir: Path) -> bool:
    """``resume=``: whether this run continues ``run_dir`` (it must hold a resume state, not be
    running, and keep its model and data settings)."""
    if not cfg.get("resume"):
        return False
    problem = resume_blocker(run_dir)
    if problem:
        raise ConfigError(f"resume: {problem}")
    changes = [] if (run_dir / "metrics.json").is_file() else resume_changes(run_dir, cfg)
    if changes:
        started = started_with(run_dir)
        how = ("give it the overrides it was started with, or start a new run" if started is None
               else f"resume it with: python run.py "
                    f"{shlex.join([*started, *added_defaults(changes), f'resume={run_dir}'])}")
        raise ConfigError(f"resume: these settings differ from {run_dir / 'config.yaml'}: "
                          f"{'; '.join(changes)}. A resumed run keeps its model and data: {how}")
    return True
