"""Serve every Kangas DataGrid under a folder (default: outputs/) with ``kangas server``: the runs'
predictions/*.datagrid and the sweeps' comparison.datagrid (``python -m captioning.compare``).

    python -m captioning.review [DIR] [--host 127.0.0.1] [--port 4000] [--log FILE]

Binds both Kangas servers (the Python backend and the Node frontend) to 127.0.0.1 unless told
otherwise, switches Kangas's version check off (no phoning home), prints a link per grid and
the address to open (the newest run's final grid; the bare address redirects there), and runs
until Ctrl-C or SIGTERM, which stop both servers. Grid thumbnails are drawn without their
attention heat maps (the expanded view has them as layers). Hardening, applied in the server
process, so a page's filter or a crafted URL cannot run code or read files outside DIR: filters
are compiled by RestrictedPython (it refuses to serve without it), and a DataGrid is only
served from inside DIR (no absolute or ../ paths out of it). The servers' output goes to a
log file (--log; by default a new captioning-review-*.log in the system temp
folder, printed at start), never to a pipe.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

__import__("captioning.privacy").privacy.no_phone_home()   # no phoning home (privacy.py)
__import__("captioning.quiet").quiet.quiet_libraries()     # start-up noise off (quiet.py)

# Kangas's Node frontend (kangas/frontend/standalone/server.js) calls `server.listen(PORT)` with
# no host, which listens on every interface; `kangas server --host` only names the host in the
# URLs, and HOSTNAME only reaches Next, not listen(). So the frontend is started with this
# script preloaded (NODE_OPTIONS=--require): every listen() that names no host (or a wildcard
# one) gets CAPTIONING_REVIEW_BIND (review's --host, 127.0.0.1 by default).
_NODE_PRELOAD = r"""'use strict';
const net = require('net');
const host = process.env.CAPTIONING_REVIEW_BIND || '127.0.0.1';
const wildcard = (h) => h === undefined || h === null || h === '' || h === '0.0.0.0' || h === '::';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first === undefined || first === null || typeof first === 'function') {
    args.unshift(0, host);                                      // listen([cb]): a random port
  } else if (typeof first === 'number' || /^\d+$/.test(String(first))) {
    if (typeof args[1] === 'number' || typeof args[1] === 'function') {
      args.splice(1, 0, host);                                  // listen(port, backlog?, cb?)
    } else if (wildcard(args[1])) {
      args[1] = host;                                           // listen(port[, host], ...)
    }
  } else if (typeof first === 'object' && first.path === undefined && first.fd === undefined
             && first.handle === undefined && first._handle === undefined
             && wildcard(first.host)) {
    args[0] = Object.assign({}, first, { host });               // listen({port, ...})
  }
  return listen.apply(this, args);
};
// The bare address opens on a grid: Kangas's page at "/" with no ?datagrid= shows an empty
// table ("Showing 1 - null of null rows"), so a browser's plain GET of "/" (not Next's own
// RSC requests) is redirected to CAPTIONING_REVIEW_OPEN ("/?datagrid=...", review's choice).
const http = require('http');
const open = process.env.CAPTIONING_REVIEW_OPEN;
const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (event, req, res) {
  if (open && event === 'request' && req.method === 'GET' && req.url === '/'
      && !req.headers['rsc'] && !req.headers['next-router-state-tree']) {
    res.writeHead(302, { Location: open });
    res.end();
    return true;
  }
  return emit.apply(this, arguments);
};
"""
_SERVE = ("import sys; from captioning.review import serve_kangas; "
          "sys.exit(serve_kangas(sys.argv[1:]))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grid_id(root: Path | str, grid: Path | str) -> str:
    """A grid's id on the page (Kangas's ``?datagrid=``, its selector's values): its path
    relative to the served folder, with forward slashes."""
    return Path(grid).resolve().relative_to(Path(root).resolve()).as_posix()


def grid_link(url: str, root: Path | str, grid: Path | str) -> str:
    """The page's address opened at ``grid``: ``http://host:port/?datagrid=<grid_id>``."""
    return f"{url}?datagrid={urllib.parse.quote(grid_id(root, grid), safe='/')}"


def default_grid(grids: list[Path]) -> Path:
    """The grid the page opens on: the newest run's final grid, else the newest sweep
    comparison, else the newest grid (newest: last modified)."""
    for name in ("final.datagrid", "comparison.datagrid", None):
        pick = [g for g in grids if name is None or g.name == name]
        if pick:
            return max(pick, key=lambda g: g.stat().st_mtime)
    raise ValueError("no grids")


def start(root: Path, host: str = "127.0.0.1", port: int | None = None,
          datagrid: str | None = None, log: Path | str | None = None):
    """Start the Kangas servers over ``root`` (``kangas server`` run by serve_kangas, hardened);
    returns (process, url, grids). The caller stops it with stop(). Both servers write to
    ``process.log_path`` (``log``, or a new captioning-review-*.log in the temp folder). The
    page opens on ``datagrid`` (default: default_grid): ``process.open_url`` is its address, and
    the bare ``url`` redirects there."""
    root = Path(root).resolve()
    grids = sorted(root.rglob("*.datagrid"))
    if not grids:
        raise SystemExit(f"No .datagrid files under {root}. Train a run first (`make train`), "
                         f"or point at a folder that has predictions/*.datagrid.")
    opened = Path(datagrid) if datagrid else default_grid(grids)
    opened = opened if opened.is_absolute() else root / opened
    port = port or free_port()
    backend_port = free_port()
    if log is None:
        fd, log = tempfile.mkstemp(prefix="captioning-review-", suffix=".log")
        os.close(fd)
    log = Path(log).resolve()
    log.parent.mkdir(parents=True, exist_ok=True)
    fd, preload = tempfile.mkstemp(prefix="captioning-review-", suffix=".js")   # private, 0600
    with os.fdopen(fd, "w") as f:
        f.write(_NODE_PRELOAD)
    node_options = " ".join(filter(None, [os.environ.get("NODE_OPTIONS"),
                                          f'--require "{preload}"']))
    python_path = [os.environ.get("PYTHONPATH"), str(Path(__file__).resolve().parents[1])]
    env = {**os.environ, "KANGAS_VERSION_CHECK": "0", "KANGAS_ROOT": str(root),
           "CAPTIONING_REVIEW_BIND": host, "NODE_OPTIONS": node_options,
           "CAPTIONING_REVIEW_OPEN": grid_link("/", root, opened),
           "PYTHONPATH": os.pathsep.join(filter(None, python_path))}
    cmd = [sys.executable, "-c", _SERVE, "--backend", "flask", "--host", host,
           "--backend-host", host, "--frontend-port", str(port),
           "--backend-port", str(backend_port), "--open", "no"]
    cmd.append(str(opened))
    with open(log, "wb") as out:          # a file, not a pipe: nobody has to keep reading it
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path, proc.preload_path = log, Path(preload)
    proc.backend_url = f"http://{host}:{backend_port}/"
    url = f"http://{host}:{port}/"
    proc.open_url = grid_link(url, root, opened)
    return proc, url, grids


def harden_kangas(root: Path | str) -> None:
    """Patch the Kangas backend in this process before it serves (serve_kangas).

    * Filters: the page's ?filter= (and computed columns) reach the backend as Python that
      kangas.server.utils compiles with RestrictedPython when it is installed, else with plain
      compile(), which lets a filter reach any object (and so os, open, ...) through
      ``().__class__``. Refuse to serve without RestrictedPython; also give the restricted code
      RestrictedPython's safer_getattr instead of kangas's plain getattr (which lets
      ``"{0.__class__}".format(x)`` read attributes by name).
    * Paths: kangas joins the request's ``dgid`` to KANGAS_ROOT as given, so an absolute or
      ../ dgid serves any .datagrid on the machine (/datagrid/download sends the whole file).
      get_dg_path is confined to ``root`` in every module that holds it, and any request whose
      dgid is outside gets a 404 before a handler runs.
    """
    from kangas.server import utils

    if not hasattr(utils, "RestrictedPython"):
        raise RuntimeError(
            "RestrictedPython is not installed, so Kangas would compile the page's filters with "
            "plain compile() (any Python, run by the server). `pip install RestrictedPython` "
            "(a dependency of captioning).")
    from flask import request
    from kangas.server import flask_server, queries, tasks
    from RestrictedPython.Guards import safer_getattr

    kangas_env = utils.safe_env

    def safe_env(**kwargs):
        return {**kangas_env(**kwargs), "_getattr_": safer_getattr}

    utils.safe_env = queries.safe_env = safe_env

    served = os.path.realpath(root)
    kangas_path = queries.get_dg_path

    def get_dg_path(dgid):
        path = kangas_path(dgid)
        if os.path.commonpath([served, os.path.realpath(path)]) != served:
            raise PermissionError(f"{dgid!r} is not inside the served folder")
        return path

    for module in (queries, flask_server, tasks):
        module.get_dg_path = get_dg_path
    tasks.list_datagrids = queries.list_datagrids = lambda: list_grids(served)
    queries.generate_thumbnail = thumbnails_without_heatmaps(queries.generate_thumbnail)

    @flask_server.application.before_request
    def _served_datagrids_only():
        dgid = request.args.get("dgid")
        if dgid is not None:
            try:
                get_dg_path(dgid)
            except Exception:
                return flask_server.error(404)
        return None


def list_grids(root: str) -> list[dict]:
    """The page's grid selector: every .datagrid under ``root``, newest first, as Kangas's
    list_datagrids gives them (value, label, timestamp) but with value and label = grid_id.
    Kangas's own walks 3 folders deep, so a run's predictions/*.datagrid (4 below outputs/) and
    a sweep's comparison.datagrid were missing and the selector was empty."""
    grids = sorted(Path(root).rglob("*.datagrid"), key=lambda g: -g.stat().st_mtime)
    return [{"value": grid_id(root, g), "label": grid_id(root, g),
             "timestamp": g.stat().st_mtime} for g in grids]


def without_heatmaps(annotations):
    """An image's annotation layers less their metric masks (heat maps)."""
    layers = []
    for layer in annotations or []:
        data = [a for a in layer.get("data", [])
                if not (isinstance(a.get("mask"), dict) and a["mask"].get("type") == "metric")]
        if data:
            layers.append({**layer, "data": data})
    return layers or None


def thumbnails_without_heatmaps(generate_thumbnail):
    """Kangas's thumbnail maker, drawing an image's boxes and labels but not its heat maps.
    Kangas blends every metric mask into the grid's thumbnail at once (there is no per-layer
    "hidden" flag), so a final grid with a layer per word showed a purple/yellow blob for every
    image; the layers stay on the image and are drawn in the expanded view."""

    def generate(asset_data, *args, annotations=None, **kwargs):
        return generate_thumbnail(asset_data, *args, annotations=without_heatmaps(annotations),
                                  **kwargs)

    return generate


def serve_kangas(argv: list[str]) -> int:
    """``kangas server ARGV`` in this process after harden_kangas (start() runs this as the
    server process: the backend serves from it, the Node frontend is its child)."""
    try:
        harden_kangas(os.environ.get("KANGAS_ROOT", "."))
    except RuntimeError as e:
        print(f"captioning.review: {e}", file=sys.stderr)
        return 2
    from kangas.cli.server import main as kangas_server

    kangas_server(argv)
    return 0


def wait_until_up(url: str, timeout: float = 120.0, proc=None) -> bool:
    """Whether ``url`` answers 200 within ``timeout`` (False at once if ``proc`` has exited)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # local: no proxy
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with opener.open(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(1)
    return False


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in process group ``pgid``."""
    import psutil

    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            pass
    return False


def stop(proc, timeout: float = 15.0) -> None:
    """Stop the servers start() began: SIGTERM to their whole process group (the backend and
    the Node frontend, its child), SIGKILL to what is left after ``timeout`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(proc.pid):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    preload = getattr(proc, "preload_path", None)
    if preload is not None:
        Path(preload).unlink(missing_ok=True)


def grid_listing(grids: list[Path], last: int = 10, link=str) -> list[str]:
    """What review prints at start: every sweep's comparison grid (``captioning.compare``
    writes <sweep>/comparison.datagrid), then the ``last`` other grids, and how many more; each
    as ``link(grid)`` (main: the page's address opened at the grid)."""
    comparisons = [g for g in grids if g.name == "comparison.datagrid"]
    others = [g for g in grids if g.name != "comparison.datagrid"]
    lines = [f"{link(g)}   (sweep comparison: one row per image, a column per job)"
             for g in comparisons]
    if len(others) > last:
        lines.append(f"... and {len(others) - last} more; the newest {last}:")
    return lines + [link(g) for g in others[-last:]]


def _tail(path, n: int = 4000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="outputs",
                   help="folder searched recursively for .datagrid files")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=4000,
                   help="frontend port (the backend uses a free one)")
    p.add_argument("--log", type=Path, default=None,
                   help="file the servers' output goes to (default: a new "
                        "captioning-review-*.log in the system temp folder, printed at start)")
    args = p.parse_args(argv)

    def interrupt(signum, frame):              # SIGTERM/SIGHUP stop the servers like Ctrl-C
        raise KeyboardInterrupt

    stop_signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.getsignal(sig) for sig in [signal.SIGINT, *stop_signals]}
    for sig in stop_signals:
        signal.signal(sig, interrupt)
    proc = None
    try:
        proc, url, grids = start(Path(args.root), args.host, args.port, log=args.log)
        root = Path(args.root).resolve()
        print(f"Serving {len(grids)} DataGrid(s) from {root}")
        for line in grid_listing(grids, link=lambda g: grid_link(url, root, g)):
            print(f"  {line}")
        print(f"Server log: {proc.log_path}", flush=True)
        if not wait_until_up(url, proc=proc):
            print(f"kangas server did not come up at {url}\n{_tail(proc.log_path)}",
                  file=sys.stderr)
            return 1
        print(f"Open {proc.open_url} in a browser (Ctrl-C to stop).", flush=True)
        if proc.wait():
            print(f"kangas server exited ({proc.returncode}):\n{_tail(proc.log_path)}",
                  file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        pass
    finally:
        if proc is not None:
            for sig in previous:                           # let stop() finish
                signal.signal(sig, signal.SIG_IGN)
            stop(proc)
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
