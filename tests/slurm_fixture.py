"""``slurm_cluster``: a real SLURM cluster for the tests marked ``slurm``. One that answers
already (``sinfo``, this machine's node up, idle or busy) is used; else, as root with apt,
``scripts/slurm-cluster up`` starts a one-node cluster (left up for the next session; ``down``
stops it); else the tests skip with one line saying why."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-cluster"
LOGS = Path(os.environ.get("SLURM_CLUSTER_DIR", "/var/lib/captioning-slurm")) / "log"


def node_state() -> str:
    """This machine's node state from sinfo ('' when SLURM does not answer)."""
    if shutil.which("sinfo") is None:
        return ""
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-n", socket.gethostname().split(".")[0],
                              "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.split("\n")[0].strip() if out.returncode == 0 else ""


# States of a node that answers and takes jobs (busy ones included: another test's jobs may be
# running); "*" marks a node that does not respond, "drain"/"down" one that takes none.
USABLE = ("idle", "mix", "alloc", "completing")


def _ready() -> bool:
    state = node_state()
    return state.startswith(USABLE) and not state.endswith("*")


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The node's state once the cluster is usable, or a skip saying why it is not."""
    if _ready():
        return node_state()
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster answers (sinfo) and not root to start one "
                    "(scripts/slurm-cluster up)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("no SLURM cluster answers, slurm-wlm is not installed and there is no apt-get")
    res = subprocess.run([str(SCRIPT), "up"], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.skip(f"SLURM daemons failed to start ({why}); see {LOGS}")
    if not _ready():
        pytest.skip(f"SLURM answers but this node is {node_state() or 'unknown'}; see {LOGS}")
    return node_state()
