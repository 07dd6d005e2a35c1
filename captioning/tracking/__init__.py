"""Tracking: Comet experiments (online or offline archives) and Kangas prediction grids."""
