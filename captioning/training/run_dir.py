"""Reading a finished run back: its resolved config, vocabulary and best (or last) weights."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

from captioning import CaptioningError, ConfigError


def epoch_name(epoch: int) -> str:
    """The weights name of a 1-based epoch's own checkpoint: ``epoch_007``."""
    return f"epoch_{epoch:03d}"


def default_weights(run_dir) -> str:
    """The weights a run's own final scores used: its ``callbacks.checkpoints.select`` (best,
    or last for a fixed-schedule run), best for runs saved before that option existed."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return "best"
    cfg = OmegaConf.load(path)
    return str(OmegaConf.select(cfg, "callbacks.checkpoints.select", default="best") or "best")


def load_run(run_dir, which: str | None = None):
    """-> (cfg, vocab, model) of a run directory written by ``train``; ``which`` weights
    (best, last, mean:A-B; None: the ones the run's final scores used)."""
    from omegaconf import OmegaConf

    from captioning.data.text import Vocabulary
    from captioning.models.build import build_model

    run_dir = Path(run_dir)
    which = which or default_weights(run_dir)
    cfg_path, vocab_path = run_dir / "config.yaml", run_dir / "checkpoints" / "vocab.json"
    epochs = averaged_epochs(which)
    weights = ([run_dir / "checkpoints" / f"{epoch_name(e)}.weights.h5" for e in epochs] if epochs
               else [run_dir / "checkpoints" / f"{which}.weights.h5"])
    for path in (cfg_path, vocab_path, *weights):
        if not path.is_file():
            raise CaptioningError(f"{run_dir} is not a finished run: "
                                  f"{path.relative_to(run_dir)} is missing. "
                                  f"Point run_dir at a folder under outputs/ that holds "
                                  f"config.yaml and checkpoints/."
                                  + (" Epoch checkpoints are kept with "
                                     "callbacks.checkpoints.every_epoch=true." if epochs else ""))
    cfg = OmegaConf.load(cfg_path)
    # A run saved before a decode/evaluation option existed gets that option's default, so
    # eval.py and caption.py can use and override it on older runs too.
    defaults = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "config.yaml")
    for group in ("decode", "evaluation"):
        cfg[group] = OmegaConf.merge(defaults[group], cfg.get(group) or {})
    vocab = Vocabulary.load(vocab_path)
    model = build_model(cfg, vocab.size)
    if epochs:
        average_weights(model, weights)
    else:
        model.load_weights(str(weights[0]))
    model.compile()          # evaluate() needs a compiled model; the loss lives in test_step
    return cfg, vocab, model


def load_selected(model, run_dir, cfg, epochs_run: int, best_epoch: int | None):
    """At the end of training, put the weights ``callbacks.checkpoints.select`` names into
    ``model``: best (early stopping's monitor), last, or mean:A-B (those epochs' checkpoints
    averaged; epochs an early stop never reached are left out). -> (the epoch they stand for,
    what selected them: metrics.json's ``best_epoch`` and ``selected_by``)."""
    select = str(cfg.callbacks.get("checkpoints", {}).get("select", "best"))
    ckpt = Path(run_dir) / "checkpoints"
    epochs = [e for e in averaged_epochs(select) if e <= epochs_run]
    if epochs:
        average_weights(model, [ckpt / f"{epoch_name(e)}.weights.h5" for e in epochs])
        return epochs[-1], f"mean of epochs {epochs[0]}-{epochs[-1]} ({select})"
    if select == "best":
        if (ckpt / "best.weights.h5").exists():
            model.load_weights(str(ckpt / "best.weights.h5"))   # whatever stopped the run
        return best_epoch, str(cfg.callbacks.early_stopping.monitor)
    model.load_weights(str(ckpt / "last.weights.h5"))
    return epochs_run, "last epoch"


def averaged_epochs(which: str) -> list[int]:
    """``mean:21-30`` -> [21, ..., 30] (``mean:21,25,30`` a list); [] for a plain name."""
    if not which.startswith("mean:"):
        return []
    try:
        epochs = []
        for part in which[len("mean:"):].split(","):
            lo, _, hi = part.partition("-")
            epochs += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:
        raise CaptioningError(f"which={which}: checkpoint averaging takes 1-based epochs, "
                              f"mean:FIRST-LAST or mean:E1,E2,... (e.g. which=mean:21-30).")
    return sorted(set(epochs))


def average_weights(model, paths) -> None:
    """Load the mean of several checkpoints of one architecture into ``model`` (uniform
    averaging, as in stochastic weight averaging; batch-norm moving statistics are averaged
    like every other weight rather than recomputed, a small approximation when the epochs are
    neighbours). Keras has no checkpoint-averaging utility, hence these few lines."""
    import numpy as np

    total = None
    for path in paths:
        model.load_weights(str(path))
        w = [np.asarray(x, dtype=np.float64) for x in model.get_weights()]
        total = w if total is None else [t + x for t, x in zip(total, w, strict=True)]
    model.set_weights([(t / len(paths)).astype(x.dtype)
                       for t, x in zip(total, model.get_weights(), strict=True)])


def merge_overrides(cfg, overrides: list[str], allowed=("decode", "evaluation", "dataset")):
    """Apply ``key=value`` overrides to a loaded run config, for the groups that may change
    after training (decoding, evaluation, data location); anything else is an error."""
    from omegaconf import OmegaConf

    for item in overrides:
        key = item.split("=", 1)[0]
        if key.split(".")[0] not in allowed:
            raise CaptioningError(f"{key} cannot change after training; "
                                  f"only {', '.join(a + '.*' for a in allowed)} can. "
                                  f"Received: {item}")
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise CaptioningError(f"Unknown key {key} (see the run's config.yaml). "
                                  f"Received: {item}")
    OmegaConf.set_struct(cfg, True)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


# --- Finding, checking and locking the run directory of a resumed run (pure Python: run.py
# --- calls this before Hydra writes anything, so a wrong resume= leaves no trace).

LOCK = "run.lock"
# Config sections a resumed run must keep: they define the model's shapes and its data.
RESUME_FIXED = ("dataset", "backbone", "decoder", "text", "seed")
# Keys that locate things on disk: moving the data or the cache is fine.
RESUME_MOVABLE = ("root", "json", "images", "data_dir", "cache_dir", "output_dir")
# Keys added since some runs began, with the default that changes nothing: a run whose
# config.yaml lacks one resumes when the key keeps that default.
RESUME_ADDED = {"dataset.holdout": None, "dataset.holdout_seed": 0,
                "dataset.holdout_list": None}


def previous_state(path: Path) -> Path:
    """``previous.state.npz`` beside ``last.state.npz``: the epoch before, kept as a fallback."""
    return Path(path).with_name("previous.state.npz")


def has_state(run_dir: Path) -> bool:
    last = Path(run_dir) / "checkpoints" / "last.state.npz"
    return last.is_file() or previous_state(last).is_file()


def running_pid(run_dir: Path) -> int | None:
    """The pid of the live process on this machine that holds ``run_dir``'s lock, or None."""
    import json
    import os
    import socket

    try:
        owner = json.loads((Path(run_dir) / LOCK).read_text())
    except (OSError, ValueError):
        return None
    pid = int(owner.get("pid", 0))
    if owner.get("host") != socket.gethostname():
        return pid or None              # another machine's run: assume it is alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None                     # a stale lock: its process is gone
    except PermissionError:
        pass
    return pid


class RunLock:
    """``run.lock`` in a run directory (pid and host) for as long as a process trains in it:
    ``resume=`` refuses a run that is still running, and ``resume=true`` skips it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK

    def __enter__(self):
        import json
        import os
        import socket

        pid = running_pid(self.path.parent)
        if pid is not None and pid != os.getpid():
            raise CaptioningError(f"{self.path.parent} is in use by another run (pid {pid}). "
                                  f"Wait for it to end, or stop it first.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def find_resumable(outputs: Path, overrides: list[str]) -> Path | None:
    """The newest unfinished run under ``outputs`` started with the same overrides and not
    running now."""
    import yaml

    def same(o: str) -> bool:
        return not o.startswith(("resume=", "hydra."))

    wanted = sorted(o for o in overrides if same(o))
    states = [*outputs.glob("*/*/checkpoints/*.state.npz"),
              *outputs.glob("multirun/*/*/*/checkpoints/*.state.npz")]
    runs = sorted({p.parent.parent for p in states}, key=lambda r: r.stat().st_mtime,
                  reverse=True)
    for run in runs:
        ov = run / ".hydra" / "overrides.yaml"
        if (run / "metrics.json").exists() or not ov.exists() or running_pid(run) is not None:
            continue
        theirs = sorted(o for o in (yaml.safe_load(ov.read_text()) or []) if same(o))
        if theirs == wanted:
            return run
    return None


def resume_changes(run_dir: Path, cfg) -> list[str]:
    """The model- and data-defining settings (``RESUME_FIXED``) that ``cfg`` changes from the
    run's own ``config.yaml``, as "key: old -> new" lines."""
    from omegaconf import OmegaConf

    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return []
    old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    new = OmegaConf.to_container(cfg, resolve=True)
    changes = []
    for section in RESUME_FIXED:
        a, b = _leaves(old.get(section), section), _leaves(new.get(section), section)
        for key in sorted(set(a) | set(b)):
            if key not in a and key in RESUME_ADDED and b.get(key) == RESUME_ADDED[key]:
                continue
            if key.rsplit(".", 1)[-1] not in RESUME_MOVABLE and a.get(key) != b.get(key):
                changes.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return changes


def _leaves(node, prefix: str) -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for k, v in node.items():
        out.update(_leaves(v, f"{prefix}.{k}"))
    return out


def read_history(run_dir: Path) -> list[dict]:
    """The rows of ``history.csv`` ([] when there is none yet)."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def resume_blocker(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be resumed (no resume state, or another live process trains in
    it), or None. run.py asks before Hydra starts, ``check_resume`` when ``train`` is called."""
    import os

    if not has_state(run_dir):
        return (f"{run_dir} has no checkpoints/last.state.npz to resume from. Point resume= at a "
                f"run directory that was interrupted (outputs/<date>/<time>), or drop resume.")
    pid = running_pid(run_dir)
    if pid is not None and pid != os.getpid():
        return f"{run_dir} is still running (pid {pid}). Wait for it to end."
    return None


def check_resume(cfg, run_dir: Path) -> bool:
    """``resume=``: whether this run continues ``run_dir`` (it must hold a resume state, not be
    running, and keep its model and data settings)."""
    if not cfg.get("resume"):
        return False
    problem = resume_blocker(run_dir)
    if problem:
        raise ConfigError(f"resume: {problem}")
    changes = [] if (run_dir / "metrics.json").is_file() else resume_changes(run_dir, cfg)
    if changes:
        started = started_with(run_dir)
        how = ("give it the overrides it was started with, or start a new run" if started is None
               else f"resume it with: python run.py "
                    f"{shlex.join([*started, f'resume={run_dir}'])}")
        raise ConfigError(f"resume: these settings differ from {run_dir / 'config.yaml'}: "
                          f"{'; '.join(changes)}. A resumed run keeps its model and data: {how}")
    return True


def started_with(run_dir: Path) -> list[str] | None:
    """The command-line overrides ``run_dir`` was started with (Hydra's
    ``.hydra/overrides.yaml``, less ``resume=``), or None when Hydra did not record them."""
    import yaml

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(overrides, list):
        return None
    return [str(o) for o in overrides if not str(o).startswith(("resume=", "+resume="))]


def report_interrupted(run_dir: Path, e) -> None:
    """What an interrupted run has saved, and the command that resumes it."""
    from captioning.console import console

    done = len(read_history(run_dir))
    if not has_state(run_dir):
        console.print(f"[bold yellow]Interrupted[/] ({e}) before the first epoch ended; nothing "
                      f"to resume: run the same command again.")
        return
    console.print(f"[bold yellow]Interrupted[/] ({e}) after {done} completed epoch(s); "
                  f"everything up to epoch {done} is saved in {run_dir}.\nResume with the "
                  f"same command plus: resume={run_dir}")
