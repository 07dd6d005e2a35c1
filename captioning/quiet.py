"""Start-up noise off: what TensorFlow, absl and Comet print that is no problem of the run.

Measured here (TensorFlow 2.21, a CPU-only machine): ``import tensorflow`` writes, twice (two
of its shared libraries start absl's C++ logging), ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR``, the oneDNN notice and ``Could not find
cuda drivers on your machine``; the first device query writes ``E0000 ... failed call to
cuInit: ... (303)``. They come from C++ static initialisers straight to file descriptor 2,
before TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``: that variable hides none of the import-time
lines (0, 2 or 3: the same six lines), and 3 hides the cuInit line but also every later C++
error. ``CUDA_VISIBLE_DEVICES=`` does not stop cuInit failing either.

So ``import_tensorflow()`` imports TensorFlow and queries the devices with descriptor 2 sent
to a temporary file, then writes back every line except those known lines; the CUDA ones are
dropped only on a machine without an NVIDIA driver (no ``/proc/driver/nvidia``), where they say
nothing a user can act on. On a GPU machine a failing driver still shows.

``CAPTIONING_VERBOSE=1`` (an environment variable, because the noise starts before Hydra
composes the config, and tools without Hydra, ``eval.py``, ``caption.py``, ``python -m
captioning.*``, and every sweep job's process inherit it) leaves all of it on. Light: no
TensorFlow at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

VERBOSE = "CAPTIONING_VERBOSE"

NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called",
    r"port\.cc:\d+\] oneDNN custom operations are on",
)
NO_GPU_NOISE = (                      # dropped only where no NVIDIA driver is installed
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
    r"failed call to cuInit",
)


def verbose() -> bool:
    return os.environ.get(VERBOSE, "").lower() not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """Log levels for the libraries (unless ``CAPTIONING_VERBOSE``); call before they are
    imported: Comet's INFO lines (its own ``comet upload`` hint repeats the run's); TensorFlow's
    C++ INFO/WARNING (``TF_CPP_MIN_LOG_LEVEL=2``; errors still show); tqdm's bars. A value the
    user exported wins."""
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Kangas draws a tqdm bar at every grid it builds and saves, on stderr, between the lines
    # of the score tables; the run reports its own progress. tqdm reads this at its import.
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("comet_ml").setLevel(logging.WARNING)


def _noise() -> re.Pattern:
    patterns = NOISE + (() if Path("/proc/driver/nvidia").exists() else NO_GPU_NOISE)
    return re.compile("|".join(patterns))


@contextlib.contextmanager
def filtered_stderr():
    """File descriptor 2 goes to a temporary file for the block; afterwards every line of it
    but the known noise is written back to stderr (all of it with ``CAPTIONING_VERBOSE``)."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            noise = _noise()
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not noise.search(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow():
    """``import tensorflow`` and its first device query, without the start-up noise."""
    quiet_libraries()
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()          # cuInit runs here
    return tf
