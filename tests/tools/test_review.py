"""The Kangas review server (``captioning.review``, ``make kangas``) is safe to leave running:
it listens on loopback only, filters are compiled by RestrictedPython, downloads stay inside
the served folder, SIGTERM stops every server process, and the server's output goes to a log
file instead of a pipe nobody reads. Only 127.0.0.1 is ever contacted. ``chromium`` and
``serving`` are the real-browser helpers the grid tests use (tests/e2e/test_sweeps.py: the
comparison grid of a sweep, the final grid's attention layers)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "top-secret-row-outside-the-served-folder"
# open(...).write(...) reached through an object's class hierarchy: what a filter could do when
# kangas compiles it with plain compile() (RestrictedPython missing).
ESCAPE = ('[[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "_wrap_close"][0]'
          '.__init__.__globals__["sys"].modules["builtins"].open("{path}", "w").write("1")'
          ' for x in {{"caption"}}]')

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with _NO_PROXY.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_missing() -> str | None:
    if importlib.util.find_spec("kangas") is None:
        return "kangas is not installed"
    if importlib.util.find_spec("nodejs") is None and shutil.which("node") is None:
        return "no Node.js for Kangas's frontend (neither the nodejs-bin package nor `node`)"
    return None


def _family(pid: int):
    import psutil

    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _listening(pid: int) -> dict[int, list[tuple[str, int]]]:
    """{pid: [(ip, port), ...]} of the listening TCP sockets of ``pid`` and its descendants."""
    import psutil

    out = {}
    for p in _family(pid):
        try:
            conns = (p.net_connections if hasattr(p, "net_connections") else p.connections)("inet")
        except psutil.NoSuchProcess:
            continue
        out[p.pid] = [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def _alive(pids) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _group_members(pgids) -> list[int]:
    import psutil

    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in pgids and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _write_grid(path: Path, caption: str) -> Path:
    import kangas

    path.parent.mkdir(parents=True, exist_ok=True)
    dg = kangas.DataGrid(name=path.stem, columns=["id", "caption", "cider"])
    dg.append(["img_1", caption, 0.5])
    dg.append(["img_2", "two cats on a sofa", 0.2])
    dg.save(str(path))
    return path


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """A served folder with one grid, and a grid with a secret next to (outside) it."""
    reason = _node_missing()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("review")
    served = base / "served"
    _write_grid(served / "predictions" / "final.datagrid", "a dog runs on the grass")
    _write_grid(base / "outside" / "secret.datagrid", SECRET)
    return served


@pytest.fixture(scope="module")
def server(grids):
    """One server over ``grids``, started by captioning.review's own functions."""
    from captioning.review import start, stop, wait_until_up

    port = _free_port()
    proc, url, _ = start(grids, port=port, log=grids.parent / "kangas.log")
    try:
        up = wait_until_up(url, timeout=120, proc=proc)
        backend_ports = [p for _, p in _listening(proc.pid).get(proc.pid, [])]
        deadline = time.time() + 60
        while up and not backend_ports and time.time() < deadline:
            time.sleep(0.5)
            backend_ports = [p for _, p in _listening(proc.pid).get(proc.pid, [])]
        log = getattr(proc, "log_path", None)
        assert up and backend_ports, "kangas server did not come up" + (
            f":\n{Path(log).read_text()[-3000:]}" if log and Path(log).exists() else "")
        yield SimpleNamespace(proc=proc, url=url, port=port,
                              backend=f"http://127.0.0.1:{backend_ports[0]}",
                              backend_port=backend_ports[0], root=grids,
                              grid=grids / "predictions" / "final.datagrid")
    finally:
        stop(proc)


def _query_page(server, dgid, where=None) -> tuple[int, bytes]:
    args = {"dgid": str(dgid), "offset": 0, "limit": 10}
    if where is not None:
        args["whereExpr"] = where
    return _get(f"{server.backend}/datagrid/query-page?{urllib.parse.urlencode(args)}")


@pytest.mark.slow
def test_both_server_processes_listen_on_loopback_only(server):
    listening = _listening(server.proc.pid)
    assert len(listening) >= 2, listening                        # the backend and node
    sockets = [s for socks in listening.values() for s in socks]
    assert {server.port, server.backend_port} <= {p for ip, p in sockets if ip == "127.0.0.1"}
    exposed = [s for s in sockets if s[0] not in ("127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.mark.slow
@pytest.mark.parametrize("via", ["page", "query-page", "verify-where"])
def test_a_filter_cannot_run_code(server, tmp_path, via):
    """The page's ?filter= reaches the backend as whereExpr (query-page for the rows,
    verify-where through /api/filter); a filter that escapes to builtins must do nothing."""
    target = tmp_path / f"written-by-{via}"
    expr = ESCAPE.format(path=target)
    if via == "page":
        query = urllib.parse.urlencode({"datagrid": str(server.grid), "filter": expr})
        status, _ = _get(f"{server.url}?{query}")
    else:
        query = urllib.parse.urlencode({"dgid": str(server.grid), "whereExpr": expr})
        status, _ = _get(f"{server.backend}/datagrid/{via}?{query}")
    assert not target.exists(), f"the filter wrote {target} (HTTP {status})"
    status, body = _query_page(server, server.grid, "{'cider'} > 0.3")       # still serving
    assert status == 200 and json.loads(body)["nrows"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("dgid", ["/etc/passwd", "../outside/secret.datagrid", "ABS_SECRET",
                                  "predictions/../../outside/secret.datagrid"])
def test_downloads_stay_inside_the_served_folder(server, dgid):
    secret = server.root.parent / "outside" / "secret.datagrid"
    dgid = str(secret) if dgid == "ABS_SECRET" else dgid
    q = urllib.parse.urlencode({"dgid": dgid})
    for url in (f"{server.url}api/download?{q}", f"{server.backend}/datagrid/download?{q}"):
        status, body = _get(url)
        assert b"SQLite format 3" not in body and b"root:" not in body, (url, status)
    status, body = _query_page(server, dgid)
    assert SECRET.encode() not in body, status
    status, body = _get(f"{server.url}api/download?dgid={server.grid}")       # the served one
    assert status == 200 and body.startswith(b"SQLite format 3")


@pytest.mark.slow
def test_server_output_goes_to_a_log_file_not_a_pipe(server):
    assert server.proc.stdout is None and server.proc.stderr is None
    log = server.root.parent / "kangas.log"                          # start(log=...)
    assert Path(server.proc.log_path) == log and "Serving DataGrids" in log.read_text()


def test_help_says_where_the_log_goes(capsys):
    from captioning.review import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--log" in capsys.readouterr().out


def test_the_server_refuses_filters_without_restricted_python(tmp_path):
    """Without RestrictedPython kangas compiles filters with plain compile(): refuse to serve."""
    code = ("import sys; sys.modules['RestrictedPython'] = None\n"
            "from captioning.review import serve_kangas\n"
            "sys.exit(serve_kangas(['--open', 'no']))")
    env = {**os.environ, "KANGAS_ROOT": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "RestrictedPython" in r.stderr + r.stdout, r


@pytest.mark.slow
def test_sigterm_stops_every_server_process(grids, tmp_path):
    port = _free_port()
    review = subprocess.Popen([sys.executable, "-m", "captioning.review", str(grids),
                               "--port", str(port), "--log", str(tmp_path / "kangas.log")],
                              cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    groups: set[int] = {review.pid}
    try:
        from captioning.review import wait_until_up

        assert wait_until_up(f"http://127.0.0.1:{port}/", timeout=120), "not up"
        family = _family(review.pid)
        groups |= {os.getpgid(p.pid) for p in family}
        ports = {p for socks in _listening(review.pid).values() for _, p in socks}
        assert len(family) >= 3 and port in ports and len(ports) >= 2, (family, ports)
        review.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        while time.time() < deadline and (_alive(p.pid for p in family)
                                          or _group_members(groups)):
            time.sleep(0.2)
        assert not _alive(p.pid for p in family), "server processes outlived SIGTERM"
        assert not _group_members(groups), "processes of the server's groups remain"
        assert not [p for p in ports if _port_open(p)]
        # SIGTERM is a clean stop (main() turns it into Ctrl-C, stops the servers, returns 0),
        # not a death by the signal (-15) or a failed start (1).
        assert review.wait(timeout=5) == 0
    finally:
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        review.wait(timeout=10)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--virtual-time-budget=20000"]


def chromium_missing() -> str | None:
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed"
    return _node_missing()


def chromium(url: str, profile: Path, screenshot: Path | None = None,
             size: tuple[int, int] = (1600, 420)) -> str:
    """The page's DOM after its scripts ran (headless Debian chromium); with ``screenshot``, a
    PNG of the window (``size``) is saved there too."""
    assert url.startswith("http://127.0.0.1:"), url
    base = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=180).stdout
    if screenshot is not None:
        subprocess.run(base + [f"--screenshot={screenshot}", f"--window-size={size[0]},{size[1]}",
                               "--hide-scrollbars", url], capture_output=True, timeout=180)
    return dom


@contextlib.contextmanager
def serving(root: Path, datagrid: Path, log: Path):
    """captioning.review's servers over ``root``, opened at ``datagrid`` (default: the one review
    picks): yields (page url for the grid, backend url), stops them after."""
    from captioning.review import start, stop, wait_until_up

    proc, url, _ = start(root, datagrid=datagrid and str(datagrid), log=log)
    try:
        assert wait_until_up(url, timeout=120, proc=proc), _tail(log)
        assert wait_until_up(proc.backend_url + "datagrid/list", timeout=60, proc=proc), _tail(log)
        yield proc.open_url, proc.backend_url
    finally:
        stop(proc)


def _tail(log: Path) -> str:
    return Path(log).read_text(errors="replace")[-3000:] if Path(log).exists() else ""


def test_listing_puts_sweep_comparisons_first(tmp_path):
    """`make kangas` prints every comparison grid, even among many run grids."""
    from captioning.review import grid_listing

    runs = [_write_grid(tmp_path / f"2026-12-0{i}" / "predictions" / "final.datagrid", "a cat")
            for i in range(1, 5)]
    comparison = _write_grid(tmp_path / "multirun" / "x" / "comparison.datagrid", "a dog")
    grids = sorted(tmp_path.rglob("*.datagrid"))
    lines = grid_listing(grids, last=2)
    assert lines[0].startswith(str(comparison)) and "comparison" in lines[0]
    assert "2 more" in lines[1] and lines[2:] == [str(g) for g in runs[-2:]]


def test_listing_links_open_each_grid_and_the_newest_final_grid_first(tmp_path):
    """`make kangas` prints a link per grid (the page opened at it), and opens on the newest
    run's final grid, not on the newest grid of any kind."""
    from captioning.review import default_grid, grid_link, grid_listing

    final = _write_grid(tmp_path / "2026-12-07" / "10-00" / "predictions" / "final.datagrid", "a")
    for i, name in enumerate(["final", "epoch_001"]):              # older final, newer epoch
        grid = _write_grid(tmp_path / "2026-12-08" / "10-00" / "predictions" / f"{name}.datagrid",
                           "a")
        os.utime(grid, (2e9 + i, 2e9 + i))
    os.utime(final, (1e9, 1e9))
    grids = sorted(tmp_path.rglob("*.datagrid"))
    url = "http://127.0.0.1:4000/"
    lines = grid_listing(grids, link=lambda g: grid_link(url, tmp_path, g))
    assert lines == [f"{url}?datagrid=2026-12-07/10-00/predictions/final.datagrid",
                     f"{url}?datagrid=2026-12-08/10-00/predictions/epoch_001.datagrid",
                     f"{url}?datagrid=2026-12-08/10-00/predictions/final.datagrid"]
    assert default_grid(grids) == tmp_path / "2026-12-08/10-00/predictions/final.datagrid"
