"""This project's Hydra plugin: the resumable Optuna sweeper (hparams_search=optuna)."""
