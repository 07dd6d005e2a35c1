"""Train, score and save an image captioner: `python run.py [group=option ...] [key=value ...]`.

`python run.py --help` lists the config groups; `python run.py --cfg job` prints the composed
config without importing TensorFlow.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import hydra
from omegaconf import DictConfig

from captioning import CaptioningError, TrainingInterrupted

# Quiet TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) unless asked for;
# TensorFlow is imported later, inside train().
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*input ran out of data.*")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    if cfg.logger.name == "comet":
        # No third-party error reports from Comet's import (see captioning/tracking/comet.py).
        os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
        import comet_ml  # noqa: F401 - before TensorFlow/Keras, so Comet's hooks attach

        _name_the_run(cfg)
    from captioning.console import print_config_tree
    from captioning.training import train

    print_config_tree(cfg)
    try:
        _locate_resume(cfg)
        results = train(cfg)
    except TrainingInterrupted as e:
        sys.exit(128 + e.signum)                 # the conventional exit status of a signalled job
    except CaptioningError as e:
        # A problem with the user's input: one clear line, no traceback.
        logging.getLogger("captioning").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        if _in_sweep():
            raise                                # Hydra marks this job failed; the others go on
        sys.exit(2)
    return results["val"].get(cfg.monitor)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _locate_resume(cfg: DictConfig) -> None:
    """resume=true: the newest unfinished run with the same overrides; resume=DIR: that run."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if not cfg.resume:
        return
    from captioning.training.resume import find_resumable

    if cfg.resume is True:
        run = find_resumable(Path("outputs"), list(HydraConfig.get().overrides.task))
        if run is None:
            raise CaptioningError("resume=true: no unfinished run under outputs/ "
                                  "was started with the same overrides. "
                                  "Give the run directory instead: resume=outputs/<date>/<time>")
    else:
        run = Path(str(cfg.resume))
    with open_dict(cfg):
        cfg.paths.output_dir = str(run)
    print(f"Resuming in {run}")


def _name_the_run(cfg: DictConfig) -> None:
    """Experiment name = the command-line overrides; a sweep's jobs share a sweep tag."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith(("hydra.", "paths."))]
    with open_dict(cfg):
        if not cfg.logger.experiment_name:
            cfg.logger.experiment_name = " ".join(overrides) or "defaults"
        tags = list(cfg.logger.tags or []) + [f"decoder:{cfg.decoder.name}",
                                              f"dataset:{cfg.dataset.name}"]
        if hc.mode == RunMode.MULTIRUN:
            sweep = hc.sweep.dir.replace("\\", "/").split("outputs/multirun/")[-1]
            tags += [f"sweep:{sweep}", f"job:{hc.job.num}"]
        cfg.logger.tags = tags


if __name__ == "__main__":
    main()
