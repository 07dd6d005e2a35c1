"""captioning.io: atomic writes, the free-space check, and the shared-disk build lock."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from captioning import CaptioningError
from captioning.io import atomic_write_text
from tests.conftest import ROOT


def test_free_space_check_names_size_free_folder_and_key(tmp_path):
    from captioning.io import ensure_free_space

    free = shutil.disk_usage(tmp_path).free
    ensure_free_space(tmp_path / "new" / "folder", 1000, "a small thing", "set x")
    with pytest.raises(CaptioningError, match=rf"the feature cache needs about .* in "
                                              rf"{tmp_path}/f, but only .* is free there\. "
                                              rf"Free some space, or point paths.cache_dir"):
        ensure_free_space(tmp_path / "f", free + 10**12, "the feature cache",
                          "point paths.cache_dir elsewhere")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from captioning.io import atomic_path

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


RACER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from captioning.io import build_lock
    folder, log = Path(sys.argv[1]), Path(sys.argv[2])
    start = time.time()
    with build_lock(folder):
        if (folder / "done").exists():
            what = "read"
        else:
            tmp = folder.with_name("." + folder.name + ".tmp")
            tmp.mkdir()
            time.sleep(1.5)                                   # a build that takes a while
            (tmp / "done").write_text("built")
            tmp.rename(folder)
            what = "built"
    log.write_text(json.dumps({"what": what, "start": start, "end": time.time()}))
""")


def test_two_processes_build_once_and_the_loser_waits_then_reads(tmp_path):
    folder = tmp_path / "shared" / "features"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(folder), str(tmp_path / f"{i}")],
                              cwd=ROOT) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    runs = sorted((json.loads((tmp_path / f"{i}").read_text()) for i in range(2)),
                  key=lambda r: r["what"])
    assert [r["what"] for r in runs] == ["built", "read"]
    built, read = runs
    assert read["end"] >= built["end"] - 0.5 and read["end"] - read["start"] > 1.0   # it waited
    assert (folder / "done").read_text() == "built"
    assert not (folder.parent / "features.lock").exists()


def test_a_stale_lock_is_broken_and_a_live_one_is_not(tmp_path, monkeypatch):
    from captioning.io import PidLock, build_lock

    folder = tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held = json.dumps({"host": socket.gethostname(), "pid": dead.pid, "id": "x"})
    (tmp_path / "cache.lock").write_text(held)
    t = time.time()
    with build_lock(folder):                                  # its process is gone: broken
        pass
    assert time.time() - t < 5
    lock = tmp_path / "other.lock"
    lock.write_text(json.dumps({"host": "another-node", "pid": 1, "id": "y"}))
    assert PidLock(lock).owner()["host"] == "another-node"    # refreshed recently: it stands
    assert not PidLock(lock).acquire(wait=False)
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    assert PidLock(lock).owner() is None                      # not refreshed for an hour
    mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "id": "z"})
    lock.write_text(mine)
    assert PidLock(lock).owner()["pid"] == os.getpid()        # a live process on this host
    # A requeued SLURM job's previous run (same job id, another process or node) is gone.
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    lock.write_text(json.dumps({"host": "node-a", "pid": 12, "job": "77", "id": "w"}))
    assert PidLock(lock).owner() is None
    taker = PidLock(lock)
    assert taker.acquire(wait=False)
    assert json.loads(lock.read_text())["job"] == "77"
    taker.release()
    assert not lock.exists()


def test_a_scratch_dir_is_gone_when_its_process_exits(tmp_path):
    # the bench's runs and caches (a GB each) once piled up in /tmp until the disk was full
    code = ("import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
            "from captioning.io import scratch_dir\n"
            "d = scratch_dir('bench-x-'); (d / 'f').write_text('x'); print(d)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(out).parent == tmp_path and Path(out).name.startswith("bench-x-")
    assert not Path(out).exists() and list(tmp_path.iterdir()) == []
