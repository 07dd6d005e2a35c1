"""Multi-worker training (``trainer.strategy=multi_worker``): who this process is in the
cluster, the strategy that joins the workers, and where each worker may write.

Workers are configured the TensorFlow way: ``TF_CONFIG`` when it is set, else SLURM's
environment when the process is a task of a SLURM job step with several tasks (TensorFlow's
``SlurmClusterResolver``), else the process trains alone. Worker 0 (or the ``chief`` task when
``TF_CONFIG`` names one) is the chief: it alone writes the run folder, checkpoints, metrics,
grids and the Comet experiment. The other workers run every step with it (the collective ops
need them all) and write into a temporary folder, removed at the end, as TensorFlow's
multi-worker guide does for their checkpoint copies.

Everything here before ``make_multi_worker_strategy`` is pure Python: no TensorFlow op may run
before ``MultiWorkerMirroredStrategy`` is created.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from captioning import ConfigError
from captioning.console import console
from captioning.runs.resume import RunLock
from captioning.tracking.names import disable_loggers


@dataclass(frozen=True)
class Worker:
    """This process's place in the cluster: task type and index, and the number of workers."""

    task_type: str = "worker"
    index: int = 0
    count: int = 1
    source: str = "single"          # single | TF_CONFIG | SLURM
    has_chief: bool = False         # TF_CONFIG names a "chief" task (else worker 0 is the chief)

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0
                                             and not self.has_chief)


def _tf_config() -> dict | None:
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        cluster, task = spec["cluster"], spec["task"]
        str(task["type"]), int(task["index"]), dict(cluster)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"TF_CONFIG is not a cluster description ({e}). Set it as TensorFlow documents: "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}') from None
    return spec


def _slurm_tasks() -> int:
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        return 1


def this_worker(t) -> Worker:
    """``trainer`` node -> this process's Worker. Reads the environment only."""
    if t.get("strategy") != "multi_worker":
        return Worker()
    spec = _tf_config()
    if spec is not None:
        cluster, task = spec["cluster"], spec["task"]
        count = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
        return Worker(str(task["type"]), int(task["index"]), count, "TF_CONFIG",
                      "chief" in cluster)
    if _slurm_tasks() > 1 and "SLURM_PROCID" in os.environ:
        return Worker("worker", int(os.environ["SLURM_PROCID"]), _slurm_tasks(), "SLURM")
    return Worker()


PORT_BLOCK = 16          # ports a job may use on each node (its tasks there) when derived


def cluster_port(t) -> int:
    """``trainer.cluster_port``: the first port of a SLURM step's workers on each node; task i
    of a node listens on that port + i. null derives it from the job id: a block of 16 ports
    per job, 15000 + (job id % 1000) * 16, below Linux's ephemeral ports (32768-), so jobs whose
    ids differ by less than 1000 never share a port on a node (job id + 20000's one-port stride
    made job 7's second task and job 8's first both take 20008)."""
    port = t.get("cluster_port")
    if port is not None:
        return int(port)
    job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
    per_node = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0]
    if int(per_node or 1) > PORT_BLOCK:
        raise ConfigError(f"trainer.strategy=multi_worker: {per_node} tasks on a node need more "
                          f"than the {PORT_BLOCK} ports a job gets by default; set "
                          f"trainer.cluster_port to the first of {per_node} free ports")
    return 15000 + job % 1000 * PORT_BLOCK


def cluster_resolver(t):
    """TensorFlow's cluster resolver for this process (TF_CONFIG, else SLURM), or None."""
    import tensorflow as tf

    resolvers = tf.distribute.cluster_resolver
    worker = this_worker(t)
    if worker.source == "TF_CONFIG":
        return resolvers.TFConfigClusterResolver()
    if worker.source != "SLURM":
        return None
    gpus = _visible_gpus()
    if gpus:
        per_node = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0].split(",")[0]
        if gpus < int(per_node or 1):
            raise ConfigError(f"trainer.strategy=multi_worker: {per_node} tasks per node share "
                              f"{gpus} GPU(s); give each task one: hydra.launcher.gpus_per_node "
                              f"a multiple of hydra.launcher.tasks_per_node")
        # GPUs are shared out among the node's tasks (CUDA_VISIBLE_DEVICES set per task).
        return resolvers.SlurmClusterResolver(port_base=cluster_port(t))
    # CPU nodes: SlurmClusterResolver divides GPUs among tasks and fails with none (a range
    # with step 0), so resolve the hosts and ports with a dummy GPU count and hand them to a
    # resolver that reports no accelerators.
    slurm = resolvers.SlurmClusterResolver(port_base=cluster_port(t), gpus_per_node=1024,
                                 gpus_per_task=1, auto_set_gpu=False)
    spec = slurm.cluster_spec()
    return resolvers.SimpleClusterResolver(spec, task_type=slurm.task_type, task_id=slurm.task_id,
                                 num_accelerators={}, rpc_layer="grpc")


def _visible_gpus() -> int:
    """GPUs this task may use, without starting TensorFlow (which would fix the devices)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    import subprocess

    out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True)
    return out.stdout.count("GPU ") if out.returncode == 0 else 0


def make_multi_worker_strategy(t):
    """``MultiWorkerMirroredStrategy`` over this process's cluster. Call it before any other
    TensorFlow work: collective ops are configured when the strategy is created."""
    import tensorflow as tf

    class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """Two Keras 3 calls that this strategy refuses (keras-team/keras#20585), mended:
        ``fit`` builds the model from the first batch, a tuple of per-replica values, with one
        ``reduce`` ("PerReplica ... to a Tensor" in every worker): reduce each value of the
        structure; and it averages the scalar metrics with ``axis=0``, which a scalar lacks:
        average them across replicas only."""

        def reduce(self, reduce_op, value, axis):
            if tf.nest.is_nested(value) and not isinstance(value, tf.distribute.DistributedValues):
                one = super().reduce
                return tf.nest.map_structure(lambda v: one(reduce_op, v, axis), value)
            if axis is not None and self.experimental_local_results(value)[0].shape.rank == 0:
                axis = None
            return super().reduce(reduce_op, value, axis)

    resolver = cluster_resolver(t)
    if resolver is None:
        return MultiWorkerStrategy()
    return MultiWorkerStrategy(cluster_resolver=resolver)


@contextmanager
def workspace(cfg, run_dir: Path, resuming: bool):
    """The folder this process writes its run into. The chief: ``run_dir``, held with
    ``run.lock``. Another worker: a temporary folder (with a copy of the run's checkpoints when
    resuming, so it loads the same state), removed afterwards; it opens no Comet experiment."""
    from omegaconf import open_dict

    worker = this_worker(cfg.trainer)
    if worker.count > 1:
        console.print(f"  worker {worker.index} of {worker.count} ({worker.source})"
                      + (": the chief, writes the run" if worker.is_chief else
                         ": writes nothing in the run folder"))
    if worker.is_chief:
        with RunLock(run_dir):
            yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"captioning-worker{worker.index}-"))
    try:
        if resuming and (run_dir / "checkpoints").is_dir():
            shutil.copytree(run_dir / "checkpoints", scratch / "checkpoints")
        with open_dict(cfg):
            disable_loggers(cfg.logger)         # one set of logs (Comet, TensorBoard): the chief's
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
