"""run.py end to end in a subprocess: a mistyped resume= and a bad setting fail cleanly, and a
real SIGTERM mid-epoch is resumed to the end."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT


def test_a_mistyped_resume_fails_before_any_folder_is_written(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "resume=outputs/nope"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "resume=outputs/nope" in result.stderr and "last.state.npz" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []                     # no outputs/<date>/<time>/


def test_a_mistyped_override_key_leaves_no_empty_run_folder(tmp_path):
    # Hydra refuses the key before run.py's main runs: the folder claimed for it goes too
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "dataset.train_on_holdot=true"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "train_on_holdot" in result.stderr
    assert list(tmp_path.iterdir()) == []                     # no outputs/<date>/<time>/


def test_a_bad_setting_is_said_once_and_kept_in_the_run_log(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "trainer.learning_rate=-1",
                             "logger=none", f"hydra.run.dir={run_dir}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    said = (result.stdout + result.stderr).count("trainer.learning_rate must be > 0")
    assert said == 1, result.stdout[-2000:] + result.stderr    # not the logger's copy as well
    assert "error: trainer.learning_rate must be > 0" in result.stderr
    assert "error: trainer.learning_rate must be > 0" in (run_dir / "run.log").read_text()


def _epochs(run_dir):
    with open(run_dir / "history.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_to_the_end(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "run.py", "debug=tiny", "dataset.max_images=400",
            "trainer.max_epochs=3", "trainer.batch_size=4", "trainer.ema=0.9",
            "trainer.backbone_lr_multiplier=2", "logger=comet", "logger.online=false",
            "callbacks.early_stopping.patience=10",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "history.csv").exists():
        time.sleep(0.5)
    assert (run_dir / "history.csv").exists(), "the first epoch never finished"
    time.sleep(2)                                            # somewhere inside epoch 2
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "Interrupted" in out and f"resume={run_dir}" in out
    done = _epochs(run_dir)
    assert done == list(range(1, len(done) + 1)) and len(done) < 3
    assert list((run_dir / "comet").glob("*.zip"))           # the Comet experiment was closed
    assert not (run_dir / "metrics.json").exists()

    res = subprocess.run(args[:-1] + [f"hydra.run.dir={tmp_path}/second", f"resume={run_dir}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"after epoch {len(done)}" in res.stdout
    assert _epochs(run_dir) == [1, 2, 3]                      # no duplicate, no missing epoch
    assert (run_dir / "metrics.json").exists()
