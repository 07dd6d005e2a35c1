"""What produced a run: the code's git commit (and whether the tree had changes), the versions
of the main packages and Python, and the full command line (with Hydra's overrides).

``provenance()`` goes into ``metrics.json`` (key ``"provenance"``) and into Comet
(``CometLogger`` logs it flattened as ``provenance.*`` "others"). Pure Python, no TensorFlow
import: the versions come from the installed distributions' metadata (``importlib.metadata``).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# The distributions whose versions decide a run's numbers and files (PyPI names).
PACKAGES = ("tensorflow", "keras", "keras-hub", "hydra-core", "omegaconf", "comet-ml", "kangas",
            "tensorflow-datasets", "numpy")
CODE = Path(__file__).resolve().parents[1]          # the checkout that holds this package


def provenance() -> dict:
    """``{"git": ..., "packages": ..., "python": ..., "command": ..., "argv": ...,
    "overrides": ..., "cwd": ...}`` for this process."""
    return {"git": git_state(), "packages": package_versions(),
            "python": platform.python_version(), **command_line()}


def cpu_info() -> dict:
    """This machine's first processor as ``/proc/cpuinfo`` lists it (``model name``, ``flags``,
    ...); {} where there is no such file (not Linux). One reader for what the decoding default
    (``xla_loop_helps``), the bfloat16 test (``training.runtime.cpu_bfloat16``) and the
    benchmark's machine line need to know."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                 text.splitlines())}


def git_state(folder: Path = CODE) -> dict:
    """``{"commit", "dirty", "changed_files", "reason"}`` of the git checkout holding the code.
    ``dirty``: tracked files changed or new files not ignored (``git status --porcelain``);
    outside a checkout (an installed package, no git) commit and dirty are null and ``reason``
    says why."""
    state = {"commit": None, "dirty": None, "changed_files": None, "reason": None}
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        changes = [line for line in _git(folder, "status", "--porcelain").splitlines() if line]
    except FileNotFoundError:
        state["reason"] = "git is not installed"
        return state
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = (getattr(e, "stderr", None) or "").strip().splitlines()
        state["reason"] = detail[0] if detail else f"git failed ({type(e).__name__})"
        return state
    state.update(commit=commit.strip(), dirty=bool(changes), changed_files=len(changes))
    return state


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                          check=True, timeout=20).stdout


def package_versions(names=PACKAGES) -> dict:
    """``{name: version}``; null for a package that is not installed."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def command_line() -> dict:
    """The command as typed (``python run.py ...``), ``sys.argv``, Hydra's overrides (null
    outside a Hydra run, e.g. ``train(cfg)`` called from Python) and the working directory.
    (Comet gets them with any API key masked: ``CometLogger`` redacts what it logs.)"""
    argv = list(sys.argv)
    overrides = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - provenance must never cost the run
        overrides = None
    command = shlex.join([Path(sys.executable).name, *argv])
    return {"command": command, "argv": argv, "overrides": overrides, "cwd": os.getcwd()}
