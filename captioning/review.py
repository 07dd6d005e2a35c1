"""Serve every Kangas DataGrid under a folder (default: outputs/) with ``kangas server``.

    python -m captioning.review [DIR] [--host 127.0.0.1] [--port 4000]

Binds to 127.0.0.1 unless told otherwise, switches Kangas's version check off (no phoning
home), prints the address, and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kangas_command() -> list[str]:
    exe = shutil.which("kangas") or str(Path(sys.executable).with_name("kangas"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "kangas.cli"]


def start(root: Path, host: str = "127.0.0.1", port: int | None = None,
          datagrid: str | None = None):
    """Start ``kangas server`` over ``root``; returns (process, url). The caller stops it."""
    root = Path(root).resolve()
    grids = sorted(root.rglob("*.datagrid"))
    if not grids:
        raise SystemExit(f"No .datagrid files under {root}. Train a run first (`make train`), "
                         f"or point at a folder that has predictions/*.datagrid.")
    port = port or free_port()
    env = {**os.environ, "KANGAS_VERSION_CHECK": "0", "KANGAS_ROOT": str(root)}
    cmd = kangas_command() + ["server", "--host", host, "--backend-host", host,
                              "--frontend-port", str(port), "--backend-port", str(free_port()),
                              "--open", "no"]
    if datagrid:
        cmd.append(str(datagrid))
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://{host}:{port}/", grids


def wait_until_up(url: str, timeout: float = 120.0) -> bool:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(1)
    return False


def stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="outputs",
                   help="folder searched recursively for .datagrid files")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=4000,
                   help="frontend port (the backend uses a free one)")
    args = p.parse_args(argv)
    proc, url, grids = start(Path(args.root), args.host, args.port)
    print(f"Serving {len(grids)} DataGrid(s) from {Path(args.root).resolve()}")
    for g in grids[-10:]:
        print(f"  {g}")
    if not wait_until_up(url):
        out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
        stop(proc)
        print(f"kangas server did not come up at {url}\n{out}", file=sys.stderr)
        return 1
    print(f"Open {url} in a browser (Ctrl-C to stop).")
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
