"""Train, score and save an image captioner: `python run.py [group=option ...] [key=value ...]`.

`python run.py --help` lists the config groups; `python run.py --cfg job` prints the composed
config without importing TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import hydra
from omegaconf import DictConfig

from captioning import CaptioningError, TrainingInterrupted
from captioning.privacy import no_phone_home
from captioning.quiet import quiet_libraries
from captioning.tracking.names import logger_names

no_phone_home()   # before Kangas or Comet is imported: no usage pings, no cloud-metadata probes
quiet_libraries()  # library start-up noise off (captioning/quiet.py; CAPTIONING_VERBOSE=1: on)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from captioning.config_check import check_config
    from captioning.data.readers import check_location

    try:
        if _in_sweep():
            _locate_resume(cfg)        # a sweep's job resolves its own resume= (single runs:
        check_config(cfg)              # _prepare_run_dir, before Hydra); then every value rule
        check_location(cfg.dataset)    # and the dataset's folder, all before any output
        if "comet" in logger_names(cfg.logger):
            import comet_ml  # noqa: F401 - before TensorFlow/Keras, so Comet's hooks attach

            _name_the_run(cfg)
        _print_config(cfg)
        from captioning.training import train  # the boundary: TensorFlow loads here

        results = train(cfg)
    except TrainingInterrupted as e:
        from captioning.training.signals import requeue_on_time_limit

        requeue_on_time_limit(e.signum)          # SLURM's time-limit warning: requeue the job
        sys.exit(128 + e.signum)                 # the conventional exit status of a signalled job
    except CaptioningError as e:
        # A problem with the user's input: one clear line, no traceback. The run's log file
        # keeps it too; the console gets it once.
        _log_to_file(f"error: {e}")
        print(f"error: {e}", file=sys.stderr)
        if _in_sweep():
            raise                                # Hydra marks this job failed; the others go on
        _discard_failed_run(cfg)
        sys.exit(2)
    return results["val"].get(cfg.monitor)


def _print_config(cfg: DictConfig) -> None:
    """The config tree for a single run; a sweep's job prints one line, its overrides (the
    rest is the same for every job, and each job's tree is in its .hydra/config.yaml)."""
    from hydra.core.hydra_config import HydraConfig

    from captioning.console import console, print_config_tree

    if _in_sweep():
        hc = HydraConfig.get()
        console.print(f"[bold]Job {hc.job.num}[/]: {' '.join(hc.overrides.task) or '(defaults)'}"
                      f" -> {hc.runtime.output_dir}")
    else:
        print_config_tree(cfg)


# What a run's start writes before its first epoch is saved (a failed start's folder holds
# nothing else).
STARTED = {".hydra", "run.log", "config.yaml", "checkpoints", "data.json", "comet", "comet.json",
           "run.lock", "plots", "history.csv", "predictions"}


def _discard_failed_run(cfg: DictConfig) -> None:
    """A new run in a folder ``_claim`` made that failed before its first epoch was saved leaves
    no folder: it holds only what Hydra wrote (``.hydra/``, ``run.log``) and what the failed
    start made, nothing a resume or a comparison could use. A folder named with
    ``hydra.run.dir=`` keeps its ``run.log`` (the error is in it); a resumed run's folder, or
    one with a saved epoch or scores, is kept as it is."""
    import shutil
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from captioning.runs.files import has_state

    if cfg.get("resume") or not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    if (folder.resolve() not in CLAIMED or not folder.is_dir() or has_state(folder)
            or (folder / "metrics.json").exists()):
        return
    if any(p.name not in STARTED for p in folder.iterdir()):
        return                                   # e.g. hydra.run.dir= named a folder in use
    logging.shutdown()                           # Hydra's file handler holds run.log open
    shutil.rmtree(folder, ignore_errors=True)
    _remove_empty_claims()


def _log_to_file(message: str) -> None:
    """Write ``message`` to the run's log file (Hydra's file handler) and not to the console,
    where Hydra's console handler would repeat the ``error:`` line printed beside it."""
    log = logging.getLogger("captioning")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _locate_resume(cfg: DictConfig) -> None:
    """A sweep job's ``resume=`` (true: the newest unfinished run with the job's overrides; or
    a directory; or, for a requeued SLURM job, its own run) becomes its output directory."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from captioning.runs.resume import locate

    hc = HydraConfig.get()
    run = locate(cfg.resume, list(hc.overrides.task), named_dir=hc.runtime.output_dir,
                 sweep_job=True)
    if run is None:
        if cfg.resume:                           # resume=true with nothing to resume: start
            with open_dict(cfg):
                cfg.resume = False
        return
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
        cfg.resume = cfg.resume or str(run)     # a requeued job resumes its own run


def _name_the_run(cfg: DictConfig) -> None:
    """Experiment name = the command-line overrides that define the run (not the ones that
    locate files); a sweep's jobs share a sweep tag."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from captioning.tracking.comet import experiment_name

    hc = HydraConfig.get()
    with open_dict(cfg):
        if not cfg.logger.experiment_name:     # the overrides, without paths (dataset.root=...)
            cfg.logger.experiment_name = experiment_name(hc.overrides.task)
        tags = list(cfg.logger.tags or []) + [f"decoder:{cfg.decoder.name}",
                                              f"dataset:{cfg.dataset.name}"]
        if hc.mode == RunMode.MULTIRUN:
            sweep = hc.sweep.dir.replace("\\", "/").split("outputs/multirun/")[-1]
            tags += [f"sweep:{sweep}", f"job:{hc.job.num}"]
        cfg.logger.tags = tags


# Flags with which Hydra runs no job (and so must not get a run folder).
NO_JOB = ("-m", "--multirun", "-c", "--cfg", "-h", "--help", "--hydra-help", "-i", "--info",
          "--shell-completion", "-p", "--package")


def _prepare_run_dir(argv: list[str]) -> list[str]:
    """Before Hydra starts: a ``resume=`` is found and checked (a mistyped one leaves no stray
    folder) and its run becomes Hydra's run directory, whose ``.hydra/`` is left as the run
    wrote it; a new run gets a folder no other run has, even one started in the same second
    (``outputs/<date>/<time>``, else ``<time>-2``, ``-3``: claimed with an atomic mkdir)."""

    if any(a.split("=")[0] in NO_JOB for a in argv[1:]):
        return argv
    values = dict(a.split("=", 1) for a in argv[1:] if "=" in a and not a.startswith("-"))
    from captioning.runs.resume import locate

    run = locate(values.get("resume", "false"), [f"{k}={v}" for k, v in values.items()],
                 named_dir=values.get("hydra.run.dir"))
    if run is None:
        return argv if "hydra.run.dir" in values else [*argv, f"hydra.run.dir={_claim()}"]
    kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir=",
                                                  "resume="))]
    resume = values.get("resume", "false")
    resume = str(run) if resume.lower() in ("false", "null", "none", "") else resume
    return [*kept, f"resume={resume}", f"hydra.run.dir={run}", "hydra.output_subdir=null"]


CLAIMED: list = []       # the folder _claim made for this run, then the parents it made


def _remove_empty_claims() -> None:
    """The folders ``_claim`` made that are still empty (a start Hydra refused, such as a
    mistyped override, never reaches ``main``): removed; a folder with anything in it stays."""
    for folder in CLAIMED:                       # the run's, then outputs/<date>/, outputs/
        with contextlib.suppress(OSError):
            folder.rmdir()


def _claim() -> str:
    import time
    from pathlib import Path

    base = Path("outputs") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    made = [p.resolve() for p in (base.parent, base.parent.parent) if not p.exists()]
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
            CLAIMED.extend([folder.resolve(), *made])
            return str(folder)
        except FileExistsError:
            continue
    raise CaptioningError(f"Could not claim a new run folder next to {base}.")


if __name__ == "__main__":
    try:
        from captioning.config import check_group_names

        check_group_names(sys.argv[1:])          # decodr=gru: did you mean decoder=gru?
        sys.argv = _prepare_run_dir(sys.argv)
    except CaptioningError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        main()
    finally:
        _remove_empty_claims()
