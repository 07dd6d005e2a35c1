"""No phoning home, no leaked Comet key, for real: ``run.py debug=tiny`` runs in a
subprocess with a clean environment and a network guard (a ``sitecustomize.py`` first on
PYTHONPATH) that records every resolve or connect to a host other than this one, and refuses it,
so nothing leaves the machine and nothing stalls on a dropped connection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from captioning.privacy import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
KEY = "abc123secretkey"
TINY = ["debug=tiny", "trainer.max_epochs=1", "dataset.max_images=24"]

GUARD = '''
import os
import socket

_LOG = os.environ["NETGUARD_LOG"]
_LOCAL = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "",
          socket.gethostname()}


def _check(what, host):
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or host in _LOCAL or str(host).startswith("127.") or host == "::1":
        return
    with open(_LOG, "a") as f:
        f.write(f"{what} {host}\\n")
    raise OSError(f"network guard: {what} {host} refused")


_getaddrinfo, _gethostbyname = socket.getaddrinfo, socket.gethostbyname
_create_connection = socket.create_connection
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def getaddrinfo(host, *args, **kwargs):
    _check("resolve", host)
    return _getaddrinfo(host, *args, **kwargs)


def gethostbyname(host):
    _check("resolve", host)
    return _gethostbyname(host)


def create_connection(address, *args, **kwargs):
    _check("connect", address[0])
    return _create_connection(address, *args, **kwargs)


def _inet(sock, address):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)


def connect(self, address):
    if _inet(self, address):
        _check("connect", address[0])
    return _connect(self, address)


def connect_ex(self, address):
    if _inet(self, address):
        _check("connect", address[0])
    return _connect_ex(self, address)


socket.getaddrinfo, socket.gethostbyname = getaddrinfo, gethostbyname
socket.create_connection = create_connection
socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
'''


def _clean_env(tmp: Path, **extra: str) -> tuple[dict, Path]:
    """What a user's shell would have, minus everything privacy.py sets: PATH (java for the
    metrics), an empty HOME (no ~/.comet.config with someone's key), the guard."""
    (tmp / "guard").mkdir(parents=True, exist_ok=True)
    (tmp / "guard" / "sitecustomize.py").write_text(GUARD)
    (tmp / "home").mkdir(exist_ok=True)
    record = tmp / "network.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp / "home"),
           "LANG": "C.UTF-8", "PYTHONPATH": str(tmp / "guard"), "NETGUARD_LOG": str(record),
           "CAPTIONING_CACHE": os.environ["CAPTIONING_CACHE"], **extra}
    assert not set(SETTINGS) & set(env)          # the code under test must set them itself
    return env, record


def _run(tmp: Path, env: dict, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    run_dir = tmp / "run"
    proc = subprocess.run([sys.executable, "run.py", *TINY, f"hydra.run.dir={run_dir}",
                           *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, run_dir


def _recorded(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def _all_bytes(run_dir: Path):
    """Every file under the run directory, zip archives opened."""
    for path in sorted(run_dir.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".zip":
                with zipfile.ZipFile(path) as z:
                    data += b"".join(z.read(n) for n in z.namelist())
            yield path, data


def test_network_guard_refuses_and_records_outside_hosts_only(tmp_path):
    """The guard itself: an outside host is recorded and refused, loopback is let through."""
    env, record = _clean_env(tmp_path)
    code = ("import socket\n"
            "try:\n    socket.create_connection(('example.org', 80), timeout=1)\n"
            "except OSError as e:\n    print('refused', e)\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "socket.create_connection(s.getsockname(), timeout=1).close()\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused network guard" in out.stdout
    assert _recorded(record) == ["connect example.org"]


@pytest.mark.slow
def test_default_run_contacts_no_other_host(tmp_path):
    """logger=comet with no key (an offline archive) and Kangas grids: no resolve, no connect
    beyond this machine (was: stats.comet.com from `import kangas`, 169.254.169.254 three
    times from Comet's environment logging)."""
    env, record = _clean_env(tmp_path)
    proc, run_dir = _run(tmp_path, env, "callbacks.kangas.every_n_epochs=1")
    recorded = _recorded(record)
    assert recorded == [], f"{recorded}\n{proc.stdout[-1500:]}"
    assert list((run_dir / "comet").glob("*.zip"))
    assert (run_dir / "predictions" / "final.datagrid").is_file()


@pytest.mark.slow
def test_rejected_or_unreachable_comet_key_never_leaks_and_falls_back(tmp_path):
    """A key in the environment, Comet's server out of reach: the online experiment does not
    start, the run says so in one warning and logs to an offline archive in the run directory,
    and the key is in no output and no file. Only Comet's own server was tried."""
    # Comet retries an unreachable server with backoff (~30 s when refused); no retries here,
    # to keep the test short. The code path is the same.
    env, record = _clean_env(tmp_path, COMET_API_KEY=KEY,
                             COMET_HTTP_SESSION_RETRY_TOTAL="0",
                             COMET_GET_OR_ADD_EXPERIMENT_RETRY_TOTAL="0",
                             COMET_GET_OR_ADD_EXPERIMENT_RETRY_CONNECT="0")
    start = time.monotonic()
    proc, run_dir = _run(tmp_path, env)
    assert time.monotonic() - start < 600
    assert KEY not in proc.stdout and KEY not in proc.stderr
    for path, data in _all_bytes(run_dir):
        assert KEY.encode() not in data, path
    archives = list((run_dir / "comet").glob("*.zip"))
    assert len(archives) == 1
    warnings = [line for line in proc.stdout.splitlines()
                if line.startswith("warning: Comet online logging did not start")]
    assert len(warnings) == 1 and str(archives[0]) in warnings[0], proc.stdout[-3000:]
    assert _recorded(record) and {line.split()[1] for line in _recorded(record)} == \
        {"www.comet.com"}


class _RejectingComet(BaseHTTPRequestHandler):
    """A Comet server that refuses every key, as comet.com answers an unknown one."""

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._send(404, {"msg": "not found"})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(403, {"msg": "Invalid API key", "sdk_error_code": 90212, "code": 403})

    def log_message(self, *args):
        pass


TRACKER = """
import sys
from tests.conftest import compose_config
from captioning.tracking.comet import CometLogger

run_dir = sys.argv[1]
cfg = compose_config("debug=tiny", "logger=comet", f"paths.output_dir={run_dir}")
tracker = CometLogger(cfg, run_dir)
tracker.log_epoch(1, {"loss": 1.0})
print("offline" if tracker.offline else "online", tracker.close_and_report())
"""


def test_key_rejected_by_the_server_is_masked(tmp_path):
    """comet_ml prints a key its server rejects ("The given API key '...' is invalid"), on
    purpose, unmasked; the tracker masks it and falls back to an offline archive."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RejectingComet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clientlib/"
        env, record = _clean_env(tmp_path, COMET_API_KEY=KEY, COMET_URL_OVERRIDE=url)
        env["PYTHONPATH"] += os.pathsep + str(ROOT)
        run_dir = tmp_path / "run"
        out = subprocess.run([sys.executable, "-c", TRACKER, str(run_dir)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "API key '***' is invalid" in out.stderr                 # Comet's message, masked
    assert KEY not in out.stdout and KEY not in out.stderr
    assert out.stdout.count("warning: Comet online logging did not start") == 1
    archives = list((run_dir / "comet").glob("*.zip"))
    assert len(archives) == 1 and f"offline {archives[0]}" in out.stdout
    for path, data in _all_bytes(run_dir):
        assert KEY.encode() not in data, path
    assert _recorded(record) == []
