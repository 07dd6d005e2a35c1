"""Runs, resume and signals: resume= finds the right run (never a running one), a changed model
is named, a broken state file falls back, early stopping and the time budget carry over, and
a stop signal in any phase saves what is complete."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from captioning import CaptioningError, ConfigError, TrainingInterrupted
from tests.conftest import ROOT, compose_config


def _run_py():
    spec = importlib.util.spec_from_file_location("run_entry", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(folder: Path, overrides=("decoder=gru",)) -> Path:
    """A run folder as an interrupted run leaves it (state file, Hydra's overrides)."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.state.npz").write_bytes(b"not read by these tests")
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return folder


def test_resume_points_hydra_at_the_run_and_leaves_its_hydra_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _fake_run(tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    argv = _run_py()._prepare_run_dir(["run.py", "decoder=gru", "resume=true"])
    assert argv[-2:] == [f"hydra.run.dir={run.relative_to(tmp_path)}", "hydra.output_subdir=null"]
    named = _fake_run(tmp_path / "elsewhere", overrides=("decoder=transformer",))
    argv = _run_py()._prepare_run_dir(["run.py", "resume=true", f"hydra.run.dir={named}"])
    assert f"hydra.run.dir={named}" in argv                   # the folder the command names


def test_resume_never_picks_a_run_that_is_still_running(tmp_path, monkeypatch):
    from captioning.runs.resume import RunLock, find_resumable

    monkeypatch.chdir(tmp_path)
    run = _fake_run(tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    with RunLock(run):                                        # this process holds it: alive
        assert find_resumable(tmp_path / "outputs", ["decoder=gru"]) is None
    assert not (run / "run.lock").exists()
    other = subprocess.Popen(["sleep", "60"])                 # another live process trains in it
    try:
        lock = {"pid": other.pid, "host": os.uname().nodename}
        (run / "run.lock").write_text(json.dumps(lock))
        with pytest.raises(CaptioningError, match="still running"):
            _run_py()._prepare_run_dir(["run.py", f"resume={run}"])
    finally:
        other.kill()
        other.wait()
    (run / "run.lock").unlink()
    assert find_resumable(tmp_path / "outputs", ["decoder=gru"]) == run
    (run / "run.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename}))
    assert find_resumable(tmp_path / "outputs", ["decoder=gru"]) == run   # a stale lock


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_py = _run_py()
    folders = {run_py._claim() for _ in range(3)}
    assert len(folders) == 3 and all(Path(f).is_dir() for f in folders)


def test_resume_with_a_changed_model_names_the_keys(tmp_path):
    from omegaconf import OmegaConf

    from captioning.runs.resume import check_resume

    _fake_run(tmp_path / "run", overrides=("debug=tiny", "dataset.root=/data/my images"))
    old = compose_config("debug=tiny", f"paths.output_dir={tmp_path / 'run'}")
    (tmp_path / "run" / "config.yaml").write_text(OmegaConf.to_yaml(old, resolve=True))
    new = compose_config("debug=tiny", "decoder.dim=64", "resume=true",
                         f"paths.output_dir={tmp_path / 'run'}")
    with pytest.raises(ConfigError, match=r"decoder.dim: 32 -> 64") as e:
        check_resume(new, tmp_path / "run")
    # The command that resumes it, from the overrides Hydra recorded when it started.
    assert str(e.value).endswith(f"resume it with: python run.py debug=tiny "
                                 f"'dataset.root=/data/my images' resume={tmp_path / 'run'}")
    (tmp_path / "run" / ".hydra" / "overrides.yaml").unlink()
    with pytest.raises(ConfigError, match=r"the overrides it was started with, or start a new"):
        check_resume(new, tmp_path / "run")
    longer = compose_config("debug=tiny", "trainer.max_epochs=9", "resume=true",
                            f"paths.output_dir={tmp_path / 'run'}")
    assert check_resume(longer, tmp_path / "run")             # more epochs: fine


def test_a_corrupt_state_file_falls_back_to_the_previous_epoch(tmp_path, capsys):
    import keras
    import numpy as np
    from omegaconf import OmegaConf

    from captioning.training.callbacks import SaveWeights
    from captioning.training.early_stopping import ResumableEarlyStopping
    from captioning.training.phases import Phases, RunState
    from captioning.training.state_file import SaveState, load_state

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        m.compile(keras.optimizers.Adam(0.1), "mse")
        return m

    trained, state = model(), RunState()
    TRAINER = OmegaConf.create({"max_epochs": 3})
    saver = SaveWeights(tmp_path, "loss", "min")
    es = ResumableEarlyStopping(monitor="loss", patience=5, state=state)
    x = np.ones((8, 2), "float32")
    trained.fit(x, x[:, :1], epochs=3, verbose=0,
                callbacks=[saver, es, SaveState(tmp_path / "last.state.npz",
                                               Phases(TRAINER, state), saver, es)])
    last = tmp_path / "last.state.npz"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])    # a kill mid-write
    assert load_state(last, model()).epoch == 2
    assert "resuming from previous.state.npz (epoch 2)" in capsys.readouterr().out
    (tmp_path / "previous.state.npz").write_bytes(b"")
    with pytest.raises(CaptioningError, match="last.state.npz is unreadable.*previous.state.npz"):
        load_state(last, model())


def test_the_time_budget_counts_the_time_a_resumed_run_already_spent(tmp_path):
    from types import SimpleNamespace

    from captioning.training.callbacks import make_callbacks
    from captioning.training.phases import Phases, RunState

    cfg = compose_config("debug=tiny", "trainer.max_minutes=10")
    data = SimpleNamespace(splits={"val": []})
    cbs = make_callbacks(cfg, data, tmp_path, Phases(cfg.trainer, RunState(epoch=3, seconds=120.0)),
                         t0=1000.0)
    assert cbs.budget.t0 == pytest.approx(880.0)


TINY = ("debug=tiny", "dataset.max_images=16", "backbone.image_size=32", "trainer.max_epochs=2",
        "callbacks.kangas.enabled=false", "backbone.trainable=false")


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["index", "features", "datasets", "epoch_end",
                                   "between_phases", "evaluation", "index:SIGINT",
                                   "datasets:SIGINT", "features:SIGINT"])
def test_a_stop_signal_in_every_phase_saves_what_is_complete(tmp_path, monkeypatch, phase):
    """A real SIGTERM as the run enters each phase: TrainingInterrupted (run.py exits 143), no
    half-written file, the Comet archive closed, the handlers restored; a resume then ends the
    run with one history row per epoch."""
    from captioning.training import train

    logger = ["logger=comet", "logger.online=false"] if phase == "evaluation" else ["logger=none"]
    extra = ["trainer.scst_epochs=1", "trainer.scst_samples=2"] if phase == "between_phases" else []
    cfg = compose_config(*TINY, *logger, *extra, f"paths.output_dir={tmp_path}")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    monkeypatch.setenv("CAPTIONING_SIGNAL_AT", phase)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg)
    assert stopped.value.signum == getattr(signal, phase.partition(":")[2] or "SIGTERM")
    phase = phase.partition(":")[0]
    monkeypatch.delenv("CAPTIONING_SIGNAL_AT")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert [p for p in tmp_path.rglob("*") if ".tmp" in p.name] == []
    assert not (tmp_path / "run.lock").exists() and not (tmp_path / "metrics.json").exists()
    if phase == "evaluation":
        assert list((tmp_path / "comet").glob("*.zip"))      # the offline archive was closed
    if phase not in ("epoch_end", "between_phases", "evaluation"):
        return                                                # no epoch ended: nothing to resume
    resumed = compose_config(*TINY, *logger, *extra, "resume=true", f"paths.output_dir={tmp_path}")
    results = train(resumed)
    with open(tmp_path / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) == 2 + len(extra) // 2
    assert results["val"]["loss"] > 0 and (tmp_path / "metrics.json").is_file()


def _save_config_without(run_dir, *keys: str) -> None:
    """run_dir/config.yaml as a run begun before ``keys`` existed wrote it (debug=tiny)."""
    old = OmegaConf.to_container(compose_config("debug=tiny", f"paths.output_dir={run_dir}"),
                                 resolve=True)
    for key in keys:
        section, name = key.split(".")
        del old[section][name]
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))


def test_a_run_saved_before_the_holdout_keys_still_resumes(tmp_path):
    """config.yaml without dataset.holdout/holdout_seed: their defaults change nothing."""
    from captioning.runs.resume import resume_changes

    _save_config_without(tmp_path, "dataset.holdout", "dataset.holdout_seed")
    assert resume_changes(tmp_path, compose_config("debug=tiny",
                                                   f"paths.output_dir={tmp_path}")) == []
    held = compose_config("debug=tiny", "dataset.holdout=4", f"paths.output_dir={tmp_path}")
    assert resume_changes(tmp_path, held) == ["dataset.holdout: None -> 4"]


def test_a_run_from_before_the_class_loss_is_told_how_to_resume(tmp_path):
    """A config.yaml without dataset.classes / trainer.class_loss (a run begun before they
    existed) resumes with their defaults; a preset that now turns the class head on is refused
    with the command that resumes it (the head would add weights the run does not have)."""
    from captioning.runs.resume import added_defaults, resume_changes

    _save_config_without(tmp_path, "dataset.classes", "trainer.class_loss")
    assert resume_changes(tmp_path, compose_config("debug=tiny",
                                                   f"paths.output_dir={tmp_path}")) == []
    on = compose_config("debug=tiny", "dataset.classes=ucm", "trainer.class_loss=0.3",
                        f"paths.output_dir={tmp_path}")
    changes = resume_changes(tmp_path, on)
    assert changes == ["dataset.classes: None -> 'ucm'",
                       "trainer.class_loss: 0 -> 0.3 (a head on or off)"]
    assert added_defaults(changes) == ["dataset.classes=null", "trainer.class_loss=0"]


def test_resume_without_state_is_a_clear_error(tmp_path):
    from captioning import ConfigError
    from captioning.training import train

    cfg = compose_config("debug=tiny", "logger=none", "resume=true", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="no checkpoints/last.state.npz"):
        train(cfg)


def test_early_stopping_skips_epochs_without_validation_captions_quietly():
    import warnings

    from captioning.training.early_stopping import ResumableEarlyStopping

    es = ResumableEarlyStopping(monitor="val_cider", mode="max", patience=3)
    es.on_train_begin()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                         # Keras warns on a missing monitor
        es.on_epoch_end(0, {"loss": 1.0, "val_cider": 0.5})
        # not scored: neither counted nor warned
        for epoch in (1, 3, 5):
            es.on_epoch_end(epoch, {"loss": 1.0})
        assert es.wait == 0 and es.best == 0.5
        es.on_epoch_end(2, {"loss": 1.0, "val_cider": 0.4})    # scored and worse: counts
    assert es.wait == 1


@pytest.mark.slow
def test_a_resumed_deterministic_run_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    """Stopped after epoch 1 and resumed, a run draws the data order, the sampled captions,
    dropout masks and augmentations the uninterrupted run would have drawn: the same history
    and scores."""
    from captioning.training import train

    same = (*TINY, "trainer.max_epochs=4", "trainer.deterministic=true", "logger=none",
            "augment.flip=horizontal", "trainer.sample_captions=2")
    whole = train(compose_config(*same, f"paths.output_dir={tmp_path / 'whole'}"))
    monkeypatch.setenv("CAPTIONING_SIGNAL_AT", "epoch_end")
    with pytest.raises(TrainingInterrupted):
        train(compose_config(*same, f"paths.output_dir={tmp_path / 'cut'}"))
    monkeypatch.delenv("CAPTIONING_SIGNAL_AT")
    resumed = train(compose_config(*same, "resume=true", f"paths.output_dir={tmp_path / 'cut'}"))

    def losses(run):
        with open(tmp_path / run / "history.csv") as f:
            return [(r["epoch"], r["loss"], r.get("val_loss")) for r in csv.DictReader(f)]

    assert losses("cut") == losses("whole") and len(losses("whole")) == 4
    assert resumed["val"] == whole["val"] and resumed["test"] == whole["test"]
    assert (resumed["meta"]["restarts"], whole["meta"]["restarts"]) == (1, 0)


def test_weights_epoch_names_the_epoch_each_weights_name_stands_for(tmp_path):
    """eval.py's grids say which epoch they show (they said None)."""
    import json

    import numpy as np

    from captioning.runs.files import state_path, weights_epoch

    assert weights_epoch(tmp_path, "last") is None and weights_epoch(tmp_path, "best") is None
    (tmp_path / "history.csv").write_text("epoch,seconds\n" + "".join(f"{e},1.0\n"
                                                                   for e in range(1, 6)))
    assert [weights_epoch(tmp_path, w) for w in ("last", "epoch_002", "mean:3-5", "mean:4-9",
                                                 "mean:8-9", "other.h5")] == [5, 2, 5, 5, None,
                                                                              None]
    state_path(tmp_path).parent.mkdir(parents=True)
    with open(state_path(tmp_path), "wb") as f:
        np.savez(f, meta=np.array(json.dumps({"epoch": 5, "best_epoch": 4})))
    assert weights_epoch(tmp_path, "best") == 4
