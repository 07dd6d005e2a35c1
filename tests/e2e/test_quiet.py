"""What the commands print: no library start-up noise, errors first, the scored epoch and the
resume command named, what a model was trained on.

One tiny run is trained for the module (stopped by a real SIGTERM as it enters the evaluation,
then resumed with the command it printed); eval.py and caption.py reuse it. The failed checks
run as subprocesses that exit before TensorFlow is imported (each reports whether it was)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

NOISE = ("cuInit", "absl::InitializeLog", "Could not find cuda drivers", "COMET WARNING",
         "COMET INFO", "ran out of data", "is deprecated")
TQDM_BAR = re.compile(r"\d+%\|")                   # tqdm's "  0%|    | 0/4 [00:00<?, ?it/s]"
# Runs run.py and says, on exit, whether TensorFlow was imported.
PROBE = ("import atexit, runpy, sys\n"
         "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules,"
         " file=sys.stderr))\n"
         "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
         "sys.path.insert(0, sys.argv[0].rsplit('/', 1)[0])   # as python run.py would\n"
         "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CAPTIONING_VERBOSE"}
    return {**env, **extra}


def _run(args, cwd=ROOT, timeout=600, **env):
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=_env(**env))
    return res, res.stdout + res.stderr


def _quiet(out: str) -> None:
    for noise in NOISE:
        assert noise not in out, f"{noise!r} in the output:\n{out[-3000:]}"
    assert not TQDM_BAR.search(out), out[-3000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run folder, the interrupted start's output, the resumed end's output)."""
    run_dir = tmp_path_factory.mktemp("quiet") / "run"
    first, out1 = _run([sys.executable, "run.py", "debug=tiny", "logger=comet",
                        "logger.online=false", f"hydra.run.dir={run_dir}"],
                       CAPTIONING_SIGNAL_AT="evaluation")
    assert first.returncode == 143, out1[-3000:]
    lines = out1.splitlines()
    command = lines[lines.index("Resume with:") + 1].strip()        # the line to paste
    second, out2 = _run([sys.executable, *shlex.split(command)[1:]])
    assert second.returncode == 0, out2[-3000:]
    return run_dir, out1, out2, command


def test_a_run_and_its_resume_print_no_library_noise_and_name_the_scored_epoch(tiny_run):
    run_dir, out1, out2, command = tiny_run
    _quiet(out1)
    _quiet(out2)                                   # the resume: Comet continues, no warning
    assert command == f"python run.py debug=tiny logger=comet logger.online=false resume={run_dir}"
    assert out1.count("Resume with:") == 1 and out2.count("Resuming") == 1
    assert re.search(r"Scored: epoch \d+'s weights \(best val_loss \d+\.\d{4}; "
                     r"callbacks\.checkpoints\.select=best\)", out2), out2[-2000:]
    assert out2.count("comet upload") == 1
    rates = [line.split(",")[2] for line in (run_dir / "history.csv").read_text().splitlines()[1:]]
    assert all(len(r) <= 12 for r in rates), rates          # float32's digits, not 0.00100000004


def test_eval_and_caption_say_what_the_run_was_trained_on(tiny_run, tmp_path):
    run_dir = tiny_run[0]
    res, out = _run([sys.executable, "eval.py", f"run_dir={run_dir}", "split=test"])
    assert res.returncode == 0, out[-3000:]
    _quiet(out)
    assert "trained on dataset=synthetic" in res.stderr
    assert "describes shapes, not photographs" in " ".join(res.stderr.split())
    image = next((run_dir / "attention").glob("*.png"), None) or ROOT / "docs/images/scores.png"
    res, out = _run([sys.executable, "caption.py", f"run_dir={run_dir}", f"images=[{image}]",
                     "attention=true", f"out={tmp_path}"])
    assert res.returncode == 0, out[-3000:]
    _quiet(out)
    assert res.stdout.startswith(str(image) + "\t")      # stdout: the captions alone
    assert "trained on dataset=synthetic" in res.stderr
    png = next(tmp_path.glob("*.png"))
    assert png.stat().st_size < 300_000


@pytest.mark.parametrize("args,message", [
    (["decode.method=bem"], "error: decode.method must be greedy, beam, top_k or top_p"),
    (["dataset=flickr8k", "dataset.root=/nonexistent/flickr8k"],
     "error: Dataset folder /nonexistent/flickr8k does not exist"),
    (["decodr=gru"], "did you mean decoder=gru?"),
])
def test_a_failed_check_says_so_first_before_tensorflow_and_leaves_no_folder(
        tmp_path, args, message):
    res, out = _run([sys.executable, "-c", PROBE, str(ROOT / "run.py"), *args], cwd=tmp_path,
                    timeout=120)
    assert res.returncode == 2, out[-2000:]
    first = "\n".join(out.splitlines()[:5])
    assert message in first, out[:2000]
    assert "+decodr" not in out and "Traceback" not in out
    assert "tensorflow imported: False" in res.stderr
    assert list(tmp_path.iterdir()) == []                # no outputs/<date>/<time>/


def test_help_offers_no_example_config():
    res, out = _run([sys.executable, "run.py", "--help"], timeout=120)
    assert res.returncode == 0 and "decoder: gru, transformer" in out
    assert "example" not in out


def test_a_sweep_prints_each_jobs_overrides_not_the_tree(tmp_path):
    """Two jobs that fail on an empty dataset folder (after the config tree would have been
    printed, before training): each prints its overrides in one line."""
    empty = tmp_path / "flickr8k"
    empty.mkdir()
    res, out = _run([sys.executable, "run.py", "-m", "dataset=flickr8k", f"dataset.root={empty}",
                     "logger=none", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    _quiet(out)
    assert out.count("Job 0: dataset=flickr8k") == 1 and out.count("Job 1: dataset=flickr8k") == 1
    assert "├──" not in out and "└──" not in out, out[:3000]
    assert out.count("error: ") >= 2
    assert len(out.splitlines()) < 60, out[:3000]
