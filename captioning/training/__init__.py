"""Training: ``train(cfg)`` builds data, model and callbacks, fits, evaluates, writes outputs."""

from captioning.quiet import import_tensorflow

import_tensorflow()   # TensorFlow loads with this package: without its start-up noise (quiet.py)

from captioning.training.train import train  # noqa: E402

__all__ = ["train"]
