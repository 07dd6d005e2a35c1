"""Tracking: the run's loggers (Comet experiments, online or offline archives; TensorBoard; a
user's own, by ``_target_``) and Kangas prediction grids."""
