"""On a real SLURM cluster (the ``slurm_cluster`` fixture: scripts/slurm-cluster): a sweep's jobs
submitted with sbatch and ranked by compare, a job SLURM cannot run failing at once with the key
to change, and one run trained by the two tasks of one job as one process would train it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.training.test_distributed import TINY, _history

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


@pytest.fixture(autouse=True)
def one_at_a_time(tmp_path_factory):
    """These tests share one small cluster (and time its jobs): one runs at a time, whichever
    xdist worker has it (the group marker alone has been seen to split them)."""
    from captioning.io import PidLock

    lock = PidLock(tmp_path_factory.getbasetemp().parent / "captioning-slurm-tests.lock")
    lock.acquire(wait=True)
    yield
    lock.release()

# The CPU preset, sized to the test cluster's node (2 cores): two one-CPU jobs at once.
CPU_JOB = ["hydra/launcher=slurm_cpu", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
           "hydra.launcher.timeout_min=30"]


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _job_ids(sweep) -> list[str]:
    """The sweep's jobs: the elements of submitit's job array (``<array id>_<index>``), or the
    one job (submitit submits a single job without an array)."""
    ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit())
    return [i for i in ids if "_" in i] or ids


def _sacct_states(job_ids: list[str]) -> list[str]:
    """The jobs' final states in SLURM's accounting (a job whose result submitit has read may
    still be ending: waited for, up to a minute)."""
    for _ in range(60):
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=30)
        states = out.stdout.split()
        if not {"RUNNING", "COMPLETING", "PENDING"} & set(states):
            break
        time.sleep(1)
    return states


@pytest.mark.slow
def test_sweep_through_sbatch_then_compare(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    res = _run([*CPU_JOB, "debug=tiny", "logger=none", "trainer.max_epochs=1",
                "callbacks.kangas.enabled=false", "decoder=gru,transformer",
                f"hydra.sweep.dir={sweep}"])
    assert res.returncode == 0, res.stderr[-3000:]
    # sacct answers (the cluster keeps accounting): submitit polls it without a warning
    assert "Bypassing sacct error" not in res.stdout + res.stderr
    ids = _job_ids(sweep)                                  # one array job, two elements
    assert len(ids) == 2 and len({i.split("_")[0] for i in ids}) == 1, ids
    assert _sacct_states(ids) == ["COMPLETED", "COMPLETED"]
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1"]
    out = subprocess.run([sys.executable, "-m", "captioning.compare", str(sweep)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert sorted(r["overrides"].split()[-1] for r in rows) == ["decoder=gru",
                                                              "decoder=transformer"], rows
    # ranked best first: CIDEr as shown (3 decimals), ties by val loss (compare.TIE_RULE)
    ranked = [(-round(float(r["cider"]), 3), float(r["loss"])) for r in rows]
    assert ranked == sorted(ranked)


@pytest.mark.parametrize("ask, key, said", [
    ("hydra.launcher.mem_gb=10000", "hydra.launcher.mem_gb", "Memory specification"),
    ("hydra.launcher.gpus_per_node=1", "hydra.launcher.gpus_per_node", "generic resource"),
    # sbatch accepts it (EnforcePartLimits=NO) and it would pend for ever: PartitionTimeLimit
    ("hydra.launcher.timeout_min=100000", "hydra.launcher.timeout_min", "PartitionTimeLimit"),
])
def test_a_job_slurm_cannot_run_fails_at_once_naming_the_key(slurm_cluster, tmp_path, ask, key,
                                                            said):
    t = time.time()
    res = _run([*CPU_JOB, ask, "debug=tiny", "logger=none", "decoder=gru,transformer",
                f"hydra.sweep.dir={tmp_path / 'sweep'}"], timeout=120)
    assert time.time() - t < 60
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: SLURM ") and key in last and said in last, last
    assert "Traceback" not in res.stderr
    arrays = {p.name.split("_")[0] for p in (tmp_path / "sweep" / ".submitit").glob("[0-9]*")}
    left = subprocess.run(["squeue", "-h", "-j", ",".join(arrays) or "0"], capture_output=True,
                          text=True).stdout
    assert not left.strip(), left                          # nothing of ours left pending


@pytest.mark.slow
def test_two_slurm_tasks_train_one_run_as_one_process_would(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    one = subprocess.Popen([sys.executable, "run.py", *TINY, f"hydra.run.dir={tmp_path / 'one'}"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    res = _run([*CPU_JOB, "hydra.launcher.tasks_per_node=2", "trainer.strategy=multi_worker",
                *TINY, f"hydra.sweep.dir={sweep}"])
    single_out = one.communicate(timeout=900)[0]
    assert res.returncode == 0, res.stderr[-3000:]
    assert one.returncode == 0, single_out[-3000:]
    (job,) = _job_ids(sweep)
    logs = {i: (sweep / ".submitit" / job / f"{job}_{i}_log.out").read_text() for i in (0, 1)}
    assert "worker 0 of 2 (SLURM): the chief, writes the run" in logs[0], logs[0][-2000:]
    assert "worker 1 of 2 (SLURM): writes nothing in the run folder" in logs[1], logs[1][-2000:]
    run = sweep / "0"
    for name in ("metrics.json", "history.csv", "checkpoints/best.weights.h5",
                 "checkpoints/last.state.npz"):
        assert (run / name).is_file(), name
    assert not any(p.name.startswith("captioning-worker") for p in run.iterdir())
    # The same global batch of 32: the two tasks' all-reduced steps are one process's steps.
    two, single = _history(run), _history(tmp_path / "one")
    assert len(two) == len(single) == 2
    for a, b in zip(two, single, strict=True):
        for key in ("loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), (key, a, b)
        print(f"job {job} epoch {a['epoch']}: two tasks loss {a['loss']} val_loss "
              f"{a['val_loss']}; one process {b['loss']} / {b['val_loss']}")
    assert _sacct_states([job]) == ["COMPLETED"]


def _rows(run) -> int:
    try:
        return max(0, len((run / "history.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def _wait(what, check, timeout: float = 300.0, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _job_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                          text=True).stdout.strip()


def _requeued(job: str) -> None:
    """The job is back in the queue; SLURM starts it again once its old credential has expired
    (the test cluster's cred_expire: 15 s; 120 s is SLURM's default)."""
    _wait(f"job {job} requeued", lambda: _job_state(job) == "PENDING", timeout=120)


# Enough epochs for two signals to land mid-run; deterministic, to compare with the twin.
REQUEUE = ["debug=tiny", "logger=none", "trainer.max_epochs=16", "trainer.deterministic=true",
           "callbacks.kangas.enabled=false", "callbacks.early_stopping.patience=100"]


@pytest.mark.slow
def test_a_signalled_or_requeued_job_resumes_its_run_to_the_uninterrupted_result(
        slurm_cluster, tmp_path):
    """USR2 (submitit's time-limit warning) after epoch 2, then ``scontrol requeue`` (what a
    preemption or a node failure does) a few epochs later: each time the job stops after a
    batch, is requeued, and continues the same run folder from its last completed epoch; the
    run ends with an uninterrupted twin's history and metrics, two restarts recorded."""
    sweep = tmp_path / "sweep"
    run = sweep / "0"
    proc = subprocess.Popen([sys.executable, "run.py", "-m", *CPU_JOB, *REQUEUE,
                             f"hydra.sweep.dir={sweep}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait("epoch 2", lambda: _rows(run) >= 2)
        (job,) = _job_ids(sweep)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        _requeued(job)
        first = _rows(run)
        _wait("two more epochs after the requeue", lambda: _rows(run) >= first + 2)
        subprocess.run(["scontrol", "requeue", job], check=True)
        second = _rows(run)
        _requeued(job)
        out = proc.communicate(timeout=600)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert [p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != "."] == ["0"]
    log = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert "SIGUSR2 received (SLURM: the time limit is near)" in log
    assert log.count(f"SLURM job {job} restarted") == 2, log[-3000:]
    twin = tmp_path / "twin"
    res = subprocess.run([sys.executable, "run.py", *REQUEUE, f"hydra.run.dir={twin}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ours, theirs = _history(run), _history(twin)
    assert [int(r["epoch"]) for r in ours] == list(range(1, 17))      # no epoch twice
    for a, b in zip(ours, theirs, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == \
               {k: v for k, v in b.items() if k != "seconds"}
    metrics = json.loads((run / "metrics.json").read_text())
    twin_metrics = json.loads((twin / "metrics.json").read_text())
    assert metrics["val"] == twin_metrics["val"] and metrics["test"] == twin_metrics["test"]
    assert metrics["meta"]["restarts"] == 2
    assert json.loads((run / "slurm.json").read_text())["job_id"] == job
    print(f"job {job}: USR2 with {first} epochs done, requeue with {second}; 16 epochs, "
          f"val {metrics['val']['loss']:.6f} / CIDEr {metrics['val']['cider']:.4f}, twin "
          f"{twin_metrics['val']['loss']:.6f} / {twin_metrics['val']['cider']:.4f}")


@pytest.mark.slow
def test_an_optuna_study_on_the_cluster_resumes_after_its_sweep_is_killed(slurm_cluster,
                                                                          tmp_path):
    """Trials as parallel SLURM jobs (n_jobs=2) on a SQLite study that one sweep at a time
    drives (a second is refused at once); the sweep SIGKILLed after its first two trials, the
    same command finishes the study, and compare ranks every finished trial."""
    import optuna

    sweep, db = tmp_path / "sweep", tmp_path / "study.db"
    cmd = [sys.executable, "run.py", "-m", *CPU_JOB, "hparams_search=optuna",
           f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=cluster",
           "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "debug=tiny", "logger=none",
           "trainer.max_epochs=1", "dataset.max_images=24", "callbacks.kangas.enabled=false",
           f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait("the study lock", (tmp_path / "study.db.lock").exists, timeout=120)
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "is being run by another sweep" in second.stderr.strip().splitlines()[-1]
        _wait("two finished trials", lambda: len(list(sweep.glob("*/metrics.json"))) >= 2,
              timeout=600, every=0.5)
    finally:
        first.kill()                                      # the sweep itself dies, SIGKILL
        first.wait()
    # Its jobs still queued or running would finish unread; cancelled to keep the test short
    # (they are marked failed and run again either way).
    arrays = {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit()}
    subprocess.run(["scancel", *arrays], check=False)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "trials finished before" in res.stdout + res.stderr
    study = optuna.load_study(study_name="cluster", storage=f"sqlite:///{db}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4
    assert not (tmp_path / "study.db.lock").exists()
    out = subprocess.run([sys.executable, "-m", "captioning.compare", str(sweep)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [r for r in csv.DictReader(open(sweep / "comparison.csv")) if r["status"] == "ok"]
    assert len(rows) >= 4


FAULTS = ["debug=tiny", "logger=none", "dataset.max_images=160", "trainer.max_epochs=6",
          "trainer.deterministic=true", "callbacks.kangas.enabled=false",
          "callbacks.early_stopping.patience=100", "decoder=gru,transformer", "seed=1,2"]


@pytest.mark.slow
def test_sigkilled_jobs_of_a_sweep_finish_with_their_uninterrupted_twins_metrics(slurm_cluster,
                                                                                 tmp_path):
    """A four-job sweep whose running jobs are SIGKILLed (no handler runs) at seeded random
    moments; the same command plus resume=true finishes it: each job in its own folder (none
    lost or duplicated), with the metrics of its uninterrupted twin."""
    import random

    import yaml

    from captioning.training import train
    from tests.conftest import compose_config

    rng, sweep = random.Random(20261207), tmp_path / "sweep"
    cmd = [sys.executable, "run.py", "-m", *CPU_JOB, *FAULTS, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tried = []
    try:
        while proc.poll() is None and len(tried) < 4:
            time.sleep(rng.uniform(3.0, 12.0))
            arrays = ",".join({p.name.split("_")[0] for p in (sweep / ".submitit").glob("[0-9]*")})
            running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i", "-j", arrays or "0"],
                                     capture_output=True, text=True).stdout.split()
            if running:
                job = rng.choice(sorted(running))
                folder = sweep / job.split("_")[-1]
                subprocess.run(["scancel", "--signal=KILL", job], check=True)
                tried.append(f"{job} after {_rows(folder)} epoch(s)")
        proc.wait(timeout=900)
    finally:
        proc.kill()
    assert tried, "no job was running at any of the moments drawn"
    res = subprocess.run([*cmd, "resume=true"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".")
    assert folders == ["0", "1", "2", "3"]
    for job in folders:
        overrides = [o for o in yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml")
                                               .read_text()) if not o.startswith("resume=")]
        twin = train(compose_config(*overrides, f"paths.output_dir={tmp_path / ('twin' + job)}"))
        ours = json.loads((sweep / job / "metrics.json").read_text())
        assert (ours["val"], ours["test"]) == (twin["val"], twin["test"]), job
        assert [int(r["epoch"]) for r in _history(sweep / job)] == list(range(1, 7))
    print(f"kills survived / tried: {len(tried)} / {len(tried)} ({', '.join(tried)})")
