"""``hydra/launcher=slurm``'s launcher: hydra-submitit-launcher's, with a job that SLURM cannot
run reported as one clear line instead of a traceback or a wait without end.

SLURM refuses such a job in one of two ways. ``sbatch`` itself refuses it when no node could
ever hold it ("Memory specification can not be satisfied", "Invalid generic resource (gres)
specification", ...): submitit raises ``FailedJobError`` with sbatch's words. Or, on a cluster
that does not enforce partition and QOS limits at submission (``EnforcePartLimits=NO``, the
default), sbatch accepts it and it stays pending for ever with a reason such as
``PartitionTimeLimit``: submitit would wait on it for ever. Both become ``error: ...`` naming
the resource and the ``hydra.launcher.*`` key to change (the pending jobs are cancelled), and the
command exits with status 2, as run.py does for other input errors.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf

# sbatch's refusals: (words in its message, the resource, the hydra.launcher keys)
SBATCH_REFUSALS = [
    ("memory specification", "memory", "mem_gb"),
    ("generic resource", "GPUs", "gpus_per_node"),
    ("gres", "GPUs", "gpus_per_node"),
    ("more processors requested", "CPUs", "cpus_per_task (times tasks_per_node)"),
    ("node count", "nodes", "nodes"),
    ("invalid partition", "partition", "partition"),
    ("time limit", "time limit", "timeout_min"),
    ("invalid account", "account", "account"),
    ("invalid qos", "QOS", "qos"),
]

# Pending reasons no wait can end: a per-job limit of the partition, QOS or association.
NEVER_REASONS = {"PartitionTimeLimit", "PartitionNodeLimit", "BadConstraints", "InvalidAccount",
                 "InvalidQOS", "DependencyNeverSatisfied"}
REASON_KEYS = [("WallDuration", "time limit", "timeout_min"),
               ("TimeLimit", "time limit", "timeout_min"),
               ("Node", "nodes", "nodes"),
               ("Cpu", "CPUs", "cpus_per_task (times tasks_per_node)"),
               ("Mem", "memory", "mem_gb"),
               ("GRES", "GPUs", "gpus_per_node"),
               ("Constraints", "node features", "constraint"),
               ("Account", "account", "account"),
               ("QOS", "QOS", "qos")]
POLL_S = 3.0


def never_runs(reason: str) -> bool:
    """A pending reason that no amount of waiting ends (the job asks past a per-job limit)."""
    return reason in NEVER_REASONS or (reason.startswith(("QOSMax", "AssocMax", "AssocGrp"))
                                       and "PerJob" in reason)


def _asked(params: dict) -> str:
    keys = ["partition", "nodes", "tasks_per_node", "cpus_per_task", "gpus_per_node", "mem_gb",
            "timeout_min"]
    return " ".join(f"{k}={params.get(k)}" for k in keys if k in params)


def _offered() -> str:
    """What the cluster's partitions offer, one clause each (best effort)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    parts = []
    for line in out.splitlines():
        p, n, c, m, g, t = (line.split("|") + [""] * 6)[:6]
        gpus = "no GPUs" if g in ("(null)", "") else f"gres {g}"
        parts.append(f"{p}: {n} node(s) of {c} CPUs, {m} MB, {gpus}, time limit {t}")
    return "; ".join(parts)


def refusal_message(what: str, params: dict, table) -> str:
    """One line: what SLURM said, the resource and key it concerns, what was asked and what
    the cluster has."""
    low = what.lower()
    resource, key = next(((r, k) for words, r, k in table if words.lower() in low),
                         ("resources", "nodes, tasks_per_node, cpus_per_task, gpus_per_node, "
                                       "mem_gb or partition"))
    offered = _offered()
    return (f"SLURM cannot run this job ({what}): it asks for more {resource} than the "
            f"cluster gives; change hydra.launcher.{key} (asked: {_asked(params)})"
            + (f"; the cluster has {offered}" if offered else "") + "."
            + (" A CPU partition: hydra/launcher=slurm_cpu." if resource == "GPUs" else ""))


def _sbatch_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln.removeprefix("sbatch: error: ") for ln in lines if "error" in ln.lower()]
    return "; ".join(errors or lines[-1:]) or "sbatch failed"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _pending_reasons(job_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(job id, reason) of these jobs' pending records, from squeue."""
    mains = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(mains), "-t", "PD", "-o", "%i|%r"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]


def wait_or_refuse(jobs: list, params: dict, poll_s: float = POLL_S) -> None:
    """Wait for the jobs to finish; a job pending for a reason that never ends cancels them
    all and fails with one line."""
    while not all(j.done() for j in jobs):
        for job_id, reason in _pending_reasons([j.job_id for j in jobs]):
            if never_runs(reason):
                subprocess.run(["scancel", *sorted({j.job_id.split("_")[0] for j in jobs})],
                               capture_output=True)
                _fail(refusal_message(f"job {job_id} pending ({reason})", params, REASON_KEYS)
                      .replace("SLURM cannot run this job", "SLURM will never start this job")
                      + " The jobs are cancelled.")
        time.sleep(poll_s)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher; ``launch`` is its own (1.2.0) with the
    submission's refusal and the never-ending wait turned into one clear error."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        params = self.params
        init_params = {"folder": params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items()
                              if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(submitit_launcher.BaseQueueConf).keys())
        executor.update_parameters(**{x if x in baseparams else f"{self._EXECUTOR}_{x}": y
                                      for x, y in params.items() if x not in init_keys})
        submitit_launcher.log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : "
                                   f"{self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            submitit_launcher.log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                               Singleton.get_state()))
        try:
            jobs = executor.map_array(self, *zip(*job_params, strict=True))
        except submitit.core.utils.FailedJobError as e:
            _fail(refusal_message(_sbatch_error(str(e)), params, SBATCH_REFUSALS))
        wait_or_refuse(jobs, params)
        return [j.results()[0] for j in jobs]
