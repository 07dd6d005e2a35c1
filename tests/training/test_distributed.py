"""Scale-out, run for real on this machine: two TensorFlow workers on 127.0.0.1 (TF_CONFIG),
SLURM's environment resolved into the same cluster, an Optuna study on SQLite that resumes,
run through submitit's own executor, and the shared-disk build lock."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from captioning import ConfigError
from tests.conftest import ROOT, compose_config

# A frozen backbone: BatchNorm then uses its stored statistics, so a replica's half batch is
# normalised as the whole batch would be and the two-worker loss can match one process's.
TINY = ["debug=tiny", "logger=none", "backbone.trainable=false", "trainer.batch_size=32",
        "trainer.max_epochs=2", "decoder.dropout=0", "decoder.output_dropout=0",
        "callbacks.kangas.enabled=false"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _history(run) -> list[dict]:
    return list(csv.DictReader(open(run / "history.csv")))


@pytest.mark.slow
def test_two_workers_train_one_run_as_one_process_would(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    env = {**os.environ, "CAPTIONING_CACHE": str(tmp_path / "cache")}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen(
            [sys.executable, "run.py", *TINY, "trainer.strategy=multi_worker",
             f"hydra.run.dir={tmp_path / f'w{i}'}"], cwd=ROOT, env={**env, "TF_CONFIG": tf_config},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    one = subprocess.Popen([sys.executable, "run.py", *TINY, f"hydra.run.dir={tmp_path / 'one'}"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    outs = [p.communicate(timeout=1500)[0] for p in [*procs, one]]
    for p, out in zip([*procs, one], outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    chief, other = tmp_path / "w0", tmp_path / "w1"
    for name in ("config.yaml", "data.json", "history.csv", "metrics.json", "predictions.csv",
                 "checkpoints/best.weights.h5", "checkpoints/last.state.npz"):
        assert (chief / name).is_file(), name
    assert not (other / "metrics.json").exists()
    assert not (other / "checkpoints").exists() and not (other / "run.lock").exists()
    assert "worker 1 of 2 (TF_CONFIG): writes nothing" in outs[1]
    # One global batch of 32 images is one step: epoch 1's loss is the first step's (the initial
    # weights), epoch 2's the second's (after one update with the all-reduced gradient).
    two, single = _history(chief), _history(tmp_path / "one")
    for a, b in zip(two, single, strict=True):
        for key in ("loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), (key, a, b)
    # Both workers shared one feature cache (built under the lock by one of them).
    assert len([p for p in (tmp_path / "cache" / "features").iterdir() if p.is_dir()]) == 1


def test_slurm_environment_resolves_the_same_cluster(monkeypatch):
    from captioning.training.cluster import cluster_resolver, this_worker

    monkeypatch.delenv("TF_CONFIG", raising=False)
    for key, value in {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
                       "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2",
                       "CUDA_VISIBLE_DEVICES": ""}.items():
        monkeypatch.setenv(key, value)
    t = compose_config("trainer.strategy=multi_worker").trainer
    worker = this_worker(t)
    assert (worker.index, worker.count, worker.source, worker.is_chief) == (1, 2, "SLURM", False)
    resolver = cluster_resolver(t)
    assert resolver.cluster_spec().as_dict() == {"worker": ["localhost:20007", "localhost:20008"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert this_worker(t).is_chief
    assert not this_worker(compose_config().trainer).count > 1      # other strategies: alone


def test_tf_config_chief_and_a_bad_tf_config(monkeypatch):
    from captioning.training.cluster import this_worker

    t = compose_config("trainer.strategy=multi_worker").trainer
    spec = {"cluster": {"chief": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker",
                                                                       "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    assert not this_worker(t).is_chief and this_worker(t).count == 2
    monkeypatch.setenv("TF_CONFIG", '{"cluster": ')
    with pytest.raises(ConfigError, match="TF_CONFIG is not a cluster description"):
        this_worker(t)


@pytest.mark.slow
def test_optuna_study_through_submitit_resumes_then_compare(tmp_path):
    sweep, db = tmp_path / "sweep", tmp_path / "study.db"
    env = {**os.environ, "CAPTIONING_CACHE": str(tmp_path / "cache")}

    def invoke(n_trials: int):
        res = subprocess.run(
            [sys.executable, "run.py", "-m", "hydra/launcher=submitit_local",
             "hparams_search=optuna", f"hydra.sweeper.storage=sqlite:///{db}",
             "hydra.sweeper.study_name=resume", f"hydra.sweeper.n_trials={n_trials}",
             "hydra.sweeper.n_jobs=2", "debug=tiny", "logger=none", "trainer.max_epochs=1",
             "dataset.max_images=24", "callbacks.kangas.enabled=false",
             f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=1500)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    invoke(2)                                # two jobs, each a pickled submitit job
    logs = sorted(sweep.glob(".submitit/*/*_0_log.out"))
    assert len(logs) == 2 and all(p.stat().st_size for p in logs)
    out = subprocess.run([sys.executable, "-m", "captioning.compare", str(sweep)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert float(rows[0]["cider"]) >= float(rows[1]["cider"])
    res = invoke(3)                          # the same command, n_trials=3: one trial more
    assert "2 trials finished before, 1 of n_trials=3 left" in res.stderr + res.stdout
    import optuna

    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1", "2"]


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


def test_a_stale_lock_is_broken_and_a_live_one_is_not(tmp_path):
    from captioning.io import _lock_is_stale, build_lock

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
    assert not _lock_is_stale(lock, lock.read_text())         # refreshed recently: it stands
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    assert _lock_is_stale(lock, lock.read_text())             # not refreshed for an hour
    mine = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "id": "z"})
    lock.write_text(mine)
    assert not _lock_is_stale(lock, mine)                     # a live process on this host
