"""The sweeper of ``hparams_search=optuna``: Hydra's Optuna sweeper, with studies that resume.
(It lives here because Hydra loads sweepers only from the ``hydra_plugins`` package.)

Hydra's Optuna sweeper runs ``n_trials`` new trials on every invocation, even when the study
(``hydra.sweeper.storage=sqlite:///study.db`` + ``hydra.sweeper.study_name``) already holds
some. Here ``n_trials`` is the study's total: a sweep stopped after two trials of eight runs
the six left on the next invocation, numbering their job folders after the ones already there
(so ``hydra.sweep.dir`` may be the same, and ``captioning.compare`` ranks all of them). Trials
that a killed sweep left running are marked failed first: nothing will report them.

The study's storage. Optuna 2.10 (the version hydra-optuna-sweeper allows) stores studies in an
RDB: SQLite, or a PostgreSQL/MySQL server. The trials never write to it: the sweeper asks
Optuna for parameters and tells it the results, in this one process, while the trials (SLURM
jobs with ``hydra/launcher=slurm``) only return their score through submitit's result files.
So a SQLite file has one writer as long as one sweep drives the study, and that is what the
study lock guarantees: ``<db>.lock`` beside the file (the project's ``PidLock``, created with
``O_EXCL``, which holds on NFS and Lustre where SQLite's own ``fcntl`` locks do not), so a
second sweep on the same study stops at once with a message instead of two processes writing
one SQLite file over a shared disk. A killed sweep's lock is stale (its process is gone, or it
was not refreshed for 5 minutes on another host): the same command resumes the study. A
PostgreSQL or MySQL server needs no lock (the server orders its writers).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from captioning.io import PidLock

log = logging.getLogger(__name__)


class ResumableOptunaSweeper(OptunaSweeper):
    """``OptunaSweeper`` with ``n_trials`` counted over the stored study, not per invocation."""

    def sweep(self, arguments):
        impl = self.sweeper
        lock = study_lock(impl.storage)
        if lock is not None and not lock.acquire(wait=False):
            owner = lock.owner() or {}
            # One line and exit status 2, as run.py gives other input errors (an exception
            # here would reach the user as Hydra's traceback).
            print(f"error: study {impl.study_name} in {impl.storage} is being run by another "
                  f"sweep (pid {owner.get('pid')} on {owner.get('host')}): one sweep drives a "
                  f"SQLite study at a time. Wait for it, or stop it ({lock.path} is its lock).",
                  file=sys.stderr)
            sys.exit(2)
        try:
            return self._sweep(impl, arguments)
        finally:
            if lock is not None:
                lock.release()

    def _sweep(self, impl, arguments):
        if impl.storage:
            done = _finished_trials(impl.storage, impl.study_name)
            if done is not None:
                finished, numbered = done
                log.info(f"Study {impl.study_name}: {finished} trials finished before, "
                         f"{max(impl.n_trials - finished, 0)} of n_trials={impl.n_trials} left")
                impl.n_trials = max(impl.n_trials - finished, 0)
                impl.job_idx = max(impl.job_idx or 0, numbered)
        return super().sweep(arguments)


def study_lock(storage: str | None) -> PidLock | None:
    """The lock of a SQLite study (``sqlite:///path``), None for other storages or none."""
    if not storage or not str(storage).startswith("sqlite:///"):
        return None
    path = Path(str(storage)[len("sqlite:///"):]).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return PidLock(path.with_name(path.name + ".lock"))


def _finished_trials(storage: str, study_name: str) -> tuple[int, int] | None:
    """(trials that finished, trials ever started) of a stored study; None when it does not
    exist yet. Trials still marked running are marked failed (their sweep is gone)."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:                                  # optuna 2.10: no study of that name
        return None
    finished = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.RUNNING:
            study._storage.set_trial_state(trial._trial_id, optuna.trial.TrialState.FAIL)
        elif trial.state != optuna.trial.TrialState.WAITING:
            finished += 1
    return finished, len(study.trials)
