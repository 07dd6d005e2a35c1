"""Training: ``train(cfg)`` builds data, model and callbacks, fits, evaluates, writes outputs."""

from captioning.training.train import train

__all__ = ["train"]
