"""Where and how the run computes: a fresh Keras session, seeds, op determinism, precision,
GPU memory growth, and the distribution strategy. Everything process-wide lives here."""

from __future__ import annotations

from captioning import ConfigError
from captioning.config_rules import check_values
from captioning.training.cluster import make_multi_worker_strategy


def prepare_runtime(cfg):
    """Process-wide settings, set afresh for every run (a sweep runs its jobs in one process);
    returns the distribution strategy. The strategy comes first, before any other TensorFlow
    work: ``MultiWorkerMirroredStrategy`` configures the collective ops when it is created."""
    import keras

    _gpu_memory_growth()                # reads the device list only; no op runs
    strategy = make_strategy(cfg.trainer)
    keras.backend.clear_session()       # a fresh graph per run
    keras.utils.set_random_seed(int(cfg.seed))
    op_determinism(bool(cfg.trainer.get("deterministic", False)))
    _precision(cfg.trainer.precision)
    return strategy


def make_strategy(t):
    """``trainer.strategy``: auto (mirrored over all GPUs when there are several, else the
    default device) | mirrored (over ``trainer.devices`` or all GPUs) | multi_worker (the
    workers of TF_CONFIG or of a SLURM job step: ``training/cluster.py``)."""
    import tensorflow as tf

    name = t.get("strategy", "auto")
    check_values({"trainer.strategy": name})
    devices = list(t.devices) if t.get("devices") else None
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    # multi_worker (the one name left: check_values passed it)

    return make_multi_worker_strategy(t)


def op_determinism(enabled: bool) -> None:
    """``trainer.deterministic``: TensorFlow's op determinism, on or off as each run says (a
    sweep runs its jobs in one process, so it is turned back off for a run that does not ask
    for it). Without it, parallel CPU kernels sum in varying orders, and two runs of one config
    and seed drift apart (by how much: docs/experiments/speed.md)."""
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config  # the off switch is not public

    if enabled:
        tf.config.experimental.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


def _precision(policy: str) -> None:
    import keras

    if policy == "float32":
        return
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        # TensorFlow's oneDNN bfloat16/float16 kernels kill the process with SIGILL on some CPUs
        # (seen on this project's 2-core CI machines), which would lose the run without a word.
        raise ConfigError(f"trainer.precision={policy} needs a GPU; no GPU is visible. "
                          f"Use trainer.precision=float32 on a CPU.")
    keras.mixed_precision.set_dtype_policy(policy)


def _gpu_memory_growth() -> None:
    """Parallel sweep jobs share GPUs: allocate memory as needed instead of all at once."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:             # already initialised (a second run in one process)
            pass
