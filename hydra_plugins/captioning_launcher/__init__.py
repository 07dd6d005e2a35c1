"""Launchers of this project: ``slurm.SlurmLauncher`` (hydra/launcher=slurm, slurm_cpu)."""
