"""The sweeper of ``hparams_search=optuna``: Hydra's Optuna sweeper, with studies that resume.
(It lives here because Hydra loads sweepers only from the ``hydra_plugins`` package.)

Hydra's Optuna sweeper runs ``n_trials`` new trials on every invocation, even when the study
(``hydra.sweeper.storage=sqlite:///study.db`` + ``hydra.sweeper.study_name``) already holds
some. Here ``n_trials`` is the study's total: a sweep stopped after two trials of eight runs
the six left on the next invocation, numbering their job folders after the ones already there
(so ``hydra.sweep.dir`` may be the same, and ``captioning.compare`` ranks all of them). Trials
that a killed sweep left running are marked failed first: nothing will report them.
"""

from __future__ import annotations

import logging

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)


class ResumableOptunaSweeper(OptunaSweeper):
    """``OptunaSweeper`` with ``n_trials`` counted over the stored study, not per invocation."""

    def sweep(self, arguments):
        impl = self.sweeper
        if impl.storage:
            done = _finished_trials(impl.storage, impl.study_name)
            if done is not None:
                finished, numbered = done
                log.info(f"Study {impl.study_name}: {finished} trials finished before, "
                         f"{max(impl.n_trials - finished, 0)} of n_trials={impl.n_trials} left")
                impl.n_trials = max(impl.n_trials - finished, 0)
                impl.job_idx = max(impl.job_idx or 0, numbered)
        return super().sweep(arguments)


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
