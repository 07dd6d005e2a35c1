"""Where and how the run computes: a fresh Keras session, seeds, op determinism, precision,
GPU memory growth, and the distribution strategy. Everything process-wide lives here."""

from __future__ import annotations

from pathlib import Path

from captioning import ConfigError
from captioning.config_rules import check_values
from captioning.console import console
from captioning.io import atomic_write_text
from captioning.provenance import cpu_info
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
    """``trainer.precision``: float32, a mixed policy, or ``auto`` (mixed_bfloat16 where this
    CPU runs TensorFlow's bfloat16 kernels, else float32; a GPU stays float32 under auto: not
    measured). Keras keeps the variables in float32 either way; only the computation is cast."""
    import keras
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if policy == "auto":
        why = "" if gpu else cpu_bfloat16()
        policy = "float32" if gpu or why else "mixed_bfloat16"
        if policy != "float32":
            console.print("  precision: mixed_bfloat16 (trainer.precision=auto: this CPU runs "
                          "bfloat16 matrix products; trainer.precision=float32 turns it off)")
        elif why and "no bfloat16 instructions" not in why:
            console.print(f"  precision: float32 (trainer.precision=auto: {why})")
    elif policy != "float32" and not gpu:
        why = cpu_bfloat16() if policy == "mixed_bfloat16" else "float16 is for GPUs only"
        if why:
            raise ConfigError(f"trainer.precision={policy} needs a GPU here: {why}. Use "
                              f"trainer.precision=float32 (or auto: bfloat16 only where it runs).")
    keras.mixed_precision.set_dtype_policy(policy)


# A bfloat16 matrix product, run in a child process: TensorFlow 2.21's oneDNN bfloat16 kernels
# die with SIGILL on some CPUs that advertise them (this project's AMX-BF16 CI machines), and
# that would kill the run without a word. A child's death costs nothing.
_PROBE = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'; import tensorflow as tf; "
          "a = tf.random.normal((256, 256)); b = tf.cast(a, tf.bfloat16); "
          "print(float(tf.reduce_sum(tf.cast(tf.matmul(b, b), tf.float32))), "
          "float(tf.reduce_sum(tf.einsum('bij,bjk->bik', b[None], b[None]))))")


def cpu_bfloat16() -> str:
    """'' when TensorFlow runs bfloat16 matrix products on this CPU, else why not. Answered
    once per CPU model, flags, TensorFlow version and oneDNN settings (a child process's test,
    ~4 s), then read from ``$CAPTIONING_CACHE`` (else ``~/.cache/captioning``). Only a pass or a
    SIGILL is kept; any other failure is said, and asked again next time."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys

    import tensorflow as tf

    cpu = cpu_info()
    flags = set(cpu.get("flags", "").split())
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return "this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16)"
    env = [os.environ.get(k, "") for k in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA",
                                          "DNNL_MAX_CPU_ISA")]
    key = hashlib.sha1(repr((tf.__version__, cpu.get("model name"), sorted(flags), env))
                       .encode()).hexdigest()[:16]
    folder = os.environ.get("CAPTIONING_CACHE") or str(Path.home() / ".cache" / "captioning")
    answer = Path(folder).expanduser().absolute() / f"bfloat16-{key}.txt"
    if answer.is_file():
        return answer.read_text().strip()
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=300)
    except subprocess.TimeoutExpired:
        return "TensorFlow's bfloat16 test product did not finish in 300 s on this CPU"
    if proc.returncode not in (0, -signal.SIGILL):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return (f"the bfloat16 test in a child process failed (exit {proc.returncode}: {tail}); "
                f"not kept, asked again next run")
    why = "" if proc.returncode == 0 else (
        "TensorFlow's bfloat16 kernels die with SIGILL on this CPU (a test matrix product in a "
        "child process)")
    try:
        atomic_write_text(answer, why + "\n")     # sweep jobs and workers may race here
    except OSError:                       # a read-only home: ask again next time
        pass
    return why


def _gpu_memory_growth() -> None:
    """Parallel sweep jobs share GPUs: allocate memory as needed instead of all at once."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:             # already initialised (a second run in one process)
            pass
