"""Stopping safely: Ctrl-C / SIGTERM end the run after the current batch, with everything up to
the last completed epoch saved (the state file, ``state_file.py``), and ``resume=`` continues
from there. ``fault_point`` lets the tests send a real signal at a named moment of a run.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from contextlib import contextmanager

import keras

from captioning import TrainingInterrupted
from captioning.console import console
from captioning.runs.files import has_state, read_history, slurm_job, started_with

SIGUSR2 = getattr(signal, "SIGUSR2", None)
# Ctrl-C; SIGTERM (kill, SLURM's preemption and scancel); SIGUSR2 (SLURM's warning before the
# time limit, which submitit asks for): each ends the run cleanly after the current batch.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, SIGUSR2) if s is not None)


@contextmanager
def stop_signals():
    """For a whole run: the first of the ``STOP_SIGNALS`` raises TrainingInterrupted wherever
    the run is (indexing, feature cache, between phases, final evaluation); inside ``fit``
    StopOnSignal defers it to the end of the batch. Every write is atomic, so what is complete
    stays. The handlers in place before are back afterwards, however the run ends."""
    def handle(signum, frame):
        raise TrainingInterrupted(signum)

    previous = {}
    for s in STOP_SIGNALS:
        try:
            previous[s] = signal.signal(s, handle)
        except ValueError:           # not the main thread (e.g. a launcher's worker): no handlers
            pass
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def fault_point(phase: str) -> None:
    """Fault injection for the tests: ``CAPTIONING_SIGNAL_AT=<phase>[:SIGINT]`` sends this
    process a real SIGTERM (or SIGINT) as the run enters ``phase`` (index, datasets, features,
    epoch_end, between_phases, evaluation). Without the variable it does nothing."""
    where, _, name = os.environ.get("CAPTIONING_SIGNAL_AT", "").partition(":")
    if where == phase:
        os.kill(os.getpid(), getattr(signal, name or "SIGTERM"))


class StopOnSignal(keras.callbacks.Callback):
    """Inside ``fit``, the first SIGINT/SIGTERM stops after the current batch (nothing of the
    partial epoch is recorded), or, when it comes during the end-of-epoch callbacks, once they
    have saved the epoch. A second Ctrl-C stops at once."""

    def __init__(self):
        super().__init__()
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        why = " (SLURM: the time limit is near)" if signum == SIGUSR2 else ""
        print(f"\n{signal.Signals(signum).name} received{why}: stopping after this batch "
              f"(Ctrl-C again to stop at once)", flush=True)

    def on_train_begin(self, logs=None):
        self.signum = None
        for s in STOP_SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:       # not the main thread (e.g. a launcher's worker): no handlers
                pass

    def on_train_end(self, logs=None):
        self.restore()
        self._stop_if_signalled()

    def restore(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def on_train_batch_end(self, batch, logs=None):
        self._stop_if_signalled()

    def on_epoch_begin(self, epoch, logs=None):
        self._stop_if_signalled()

    def _stop_if_signalled(self):
        if self.signum is not None:
            self.restore()
            raise TrainingInterrupted(self.signum)


def report_interrupted(run_dir, e) -> None:
    """What an interrupted run has saved, and the command that resumes it."""
    done = len(read_history(run_dir))
    if not has_state(run_dir):
        console.print(f"[bold yellow]Interrupted[/] ({e}) before the first epoch ended; nothing "
                      f"to resume: run the same command again.")
        return
    console.print(f"[bold yellow]Interrupted[/] ({e}) after {done} completed epoch(s); "
                  f"everything up to epoch {done} is saved in {run_dir}.\nResume with:\n"
                  f"  {resume_command(run_dir)}")


def resume_command(run_dir) -> str:
    """``python run.py <the run's overrides> resume=<run_dir>``, ready to paste (the overrides
    from its ``.hydra/overrides.yaml``)."""
    overrides = [o for o in started_with(run_dir) or [] if not o.startswith("hydra.")]
    return shlex.join(["python", "run.py", *overrides, f"resume={run_dir}"])


def requeue_on_time_limit(signum: int) -> None:
    """After a clean stop on SLURM's time-limit warning (SIGUSR2), requeue the job; the
    requeued job (the same id) resumes this run by itself (``runs.resume.requeued_run``).

    Who does what: while the run trains, this module's handlers own SIGINT, SIGTERM and
    SIGUSR2, so every signal ends the run at the end of a batch, with all completed epochs
    saved (each epoch's state is written atomically when it ends). Afterwards the handlers in
    place before are back: under submitit (``hydra/launcher=slurm``) its USR2 handler, which is
    then called to pickle the job again, ``scontrol requeue`` it and exit; in a plain ``sbatch``
    job, ``scontrol requeue`` here. SIGTERM needs nothing more: SLURM sends it when it preempts
    or requeues a job, and requeues the job itself."""
    job = slurm_job()
    if signum != SIGUSR2 or job is None:
        return
    handler = signal.getsignal(SIGUSR2)
    if callable(handler):
        handler(SIGUSR2, None)           # submitit's: checkpoint, requeue, exit
        return
    console.print(f"Requeuing SLURM job {job}: it resumes this run when it starts again")
    subprocess.run(["scontrol", "requeue", job], check=False)
