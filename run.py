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

from captioning import CaptioningError

# Quiet TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) unless asked for;
# TensorFlow is imported later, inside train().
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message=".*input ran out of data.*")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from captioning.console import print_config_tree
    from captioning.training import train

    print_config_tree(cfg)
    try:
        results = train(cfg)
    except CaptioningError as e:
        # A problem with the user's input: one clear line, no traceback.
        logging.getLogger("captioning").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return results["val"].get(cfg.monitor)


if __name__ == "__main__":
    main()
