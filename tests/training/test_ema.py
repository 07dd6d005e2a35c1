"""Interruption and resume with a real signal to a real process; seeds; atomic writes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from captioning.io import atomic_write_text
from tests.conftest import ROOT, compose_config


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


def test_resume_without_state_is_a_clear_error(tmp_path):
    from captioning import ConfigError
    from captioning.training import train

    cfg = compose_config("debug=tiny", "logger=none", "resume=true", f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="no checkpoints/last.state.npz"):
        train(cfg)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    from captioning.io import atomic_path

    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


MIRRORED = """
import json, sys, keras, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from captioning.data.datamodule import build_data
from captioning.models.build import build_model
from captioning.training.runtime import make_strategy
from tests.conftest import compose_config
cfg = compose_config("debug=tiny", "backbone=efficientnetb0", "backbone.image_size=32",
                     "backbone.weights=null", "decoder.dropout=0", "decoder.output_dropout=0",
                     "trainer.strategy=mirrored", "trainer.devices=[/cpu:0,/cpu:1]")
data = build_data(cfg, progress=False)
batch = next(iter(data.train_dataset(8, 0, shuffle=False)))
ds = tf.data.Dataset.from_tensors(batch)
single = build_model(cfg, data.vocab.size)
# SGD: the update is the gradient (Adam would hide its scale)
single.compile(optimizer=keras.optimizers.SGD(1.0))
strategy = make_strategy(cfg.trainer)
with strategy.scope():
    mirrored = build_model(cfg, data.vocab.size)
    mirrored.compile(optimizer=keras.optimizers.SGD(1.0))
mirrored.set_weights(single.get_weights())               # same starting point
import numpy as np
trainable = lambda m: [np.array(v) for v in m.trainable_variables]   # not RNG counters etc.
start = trainable(single)
a = single.fit(ds, epochs=1, verbose=0).history["loss"]
b = mirrored.fit(ds, epochs=1, verbose=0).history["loss"]
# One SGD step: the update is the gradient; compare the two updates as whole vectors.
du = np.concatenate([(w - s).ravel() for w, s in zip(trainable(single), start)])
dm = np.concatenate([(w - s).ravel() for w, s in zip(trainable(mirrored), start)])
print("LOSSES", json.dumps({"single": a, "mirrored": b, "replicas": strategy.num_replicas_in_sync,
                            "norm_ratio": float(np.linalg.norm(dm) / np.linalg.norm(du)),
                            "cosine": float(du @ dm / np.linalg.norm(du) / np.linalg.norm(dm))}))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_matches_one_device(tmp_path):
    """One SGD step on one batch, split over two logical CPUs vs one device: the same loss, and
    an update of the same direction and size (the per-token mean is weighted across replicas)."""
    import json
    import os

    res = subprocess.run([sys.executable, "-c", MIRRORED], cwd=ROOT, capture_output=True,
                         text=True, timeout=900,
                         env={**os.environ, "CAPTIONING_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    losses = json.loads(next(x for x in res.stdout.splitlines()
                             if x.startswith("LOSSES"))[len("LOSSES "):])
    assert losses["replicas"] == 2
    assert losses["mirrored"] == pytest.approx(losses["single"], rel=1e-4)
    # The update points the same way with the same size. Summing per-replica means instead
    # (no token weighting) doubles it (norm ratio ~2). Only float summation order differs, so the
    # match is tight: measured cosine 1.0, norm ratio 1.0. (Looser bounds once hid a real fault: the
    # frozen EfficientNet's stochastic-depth dropout ran in training steps, a random ~0.94-0.99
    # cosine; see test_frozen_backbone_gives_the_same_features_in_a_training_step.)
    assert losses["cosine"] > 0.999
    assert 0.99 < losses["norm_ratio"] < 1.01


def _ema_fit(tmp_path, model, epochs, initial_epoch=0, restored_in_model=False, stop_after=None,
             probe=None):
    import keras
    import numpy as np

    from captioning.training.callbacks import EMAWeights, SaveWeights
    from captioning.training.resume import ResumableEarlyStopping, SaveState
    from captioning.training.state import RunState

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch + 1 == stop_after

    ema = EMAWeights(restored_in_model=restored_in_model)
    saver = SaveWeights(tmp_path, "loss", "min")
    state = RunState()
    es = ResumableEarlyStopping(monitor="loss", patience=10, state=state)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    model.fit(x, x @ np.ones((4, 1), "float32"), batch_size=8, epochs=epochs,
              initial_epoch=initial_epoch, verbose=0, shuffle=False,
              callbacks=[ema, *([probe] if probe else []), saver, es,
                         SaveState(tmp_path / "last.state.npz", state, saver, es, ema), Stop()])
    return ema


def _ema_model(compile=True):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    if compile:
        model.compile(keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5), "mse")
    return model


def test_ema_weights_are_checkpointed_and_a_resumed_run_trains_on_the_raw_weights(tmp_path):
    """trainer.ema: between epochs the model holds the average (checkpoints, resume state); a
    resumed run must swap back to the raw weights before training on."""
    import keras
    import numpy as np

    from captioning.training.resume import load_state

    _ema_fit(tmp_path, _ema_model(), epochs=5, stop_after=2)    # stopped after epoch 2 of 5
    state = _ema_model()
    load_state(tmp_path / "last.state.npz", state)
    averaged = [np.array(w) for w in state.get_weights()]
    raw = [np.array(v) for v in state.optimizer._model_variables_moving_average]   # swapped out
    assert not np.allclose(averaged[0], raw[0])                 # the two really differ
    best = _ema_model(compile=False)
    best.load_weights(str(tmp_path / "last.weights.h5"))
    assert np.allclose(best.get_weights()[0], averaged[0])      # the checkpoint holds the average

    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.setdefault(epoch, [np.array(w) for w in self.model.get_weights()])

    for restored, expect in ((True, raw), (False, averaged)):   # False: what a resume must not do
        seen.clear()
        resumed = _ema_model()
        meta = load_state(tmp_path / "last.state.npz", resumed)
        assert meta.ema_in_model is True and meta.epoch == 2
        _ema_fit(tmp_path / "again", resumed, epochs=3, initial_epoch=2,
                 restored_in_model=restored, probe=Probe())
        assert np.allclose(seen[2][0], expect[0]), restored


def test_early_stopping_skips_epochs_without_validation_captions_quietly():
    import warnings

    from captioning.training.resume import ResumableEarlyStopping

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
def test_deterministic_runs_repeat_exactly_and_the_switch_goes_back_off(tmp_path):
    """trainer.deterministic=true: two runs of one config and seed give the same history and the
    same weights and optimizer state, bit for bit; a later run without it turns TensorFlow's op
    determinism off, and the same seed still gives the same first-epoch loss (to float noise)."""
    from tensorflow.python.framework import config as tf_config

    from captioning.training import train

    def run(name, deterministic):
        cfg = compose_config("debug=tiny", "logger=none", "seed=3",
                             "callbacks.kangas.enabled=false", "trainer.max_epochs=1",
                             f"trainer.deterministic={deterministic}",
                             f"paths.output_dir={tmp_path / name}")
        train(cfg)
        assert tf_config.is_op_determinism_enabled() is deterministic
        with open(tmp_path / name / "history.csv") as f:
            history = [{k: v for k, v in row.items() if k != "seconds"}
                       for row in csv.DictReader(f)]
        # The resume state holds every weight and optimizer variable (w*, o*) and the epoch's meta.
        # Its meta also counts the seconds spent (RunState.seconds), which no two runs share.
        with np.load(tmp_path / name / "checkpoints" / "last.state.npz") as state:
            arrays = {k: state[k] for k in state.files if k != "meta"}
            meta = {k: v for k, v in json.loads(str(state["meta"])).items() if k != "seconds"}
            return history, {**arrays, "meta": meta}

    try:
        (hist_a, state_a), (hist_b, state_b) = run("a", True), run("b", True)
        assert len(hist_a) == 1 and hist_a == hist_b
        assert any(k.startswith("w") for k in state_a) and state_a.keys() == state_b.keys()
        assert state_a.pop("meta") == state_b.pop("meta")
        assert all(np.array_equal(state_a[k], state_b[k]) for k in state_a)
        hist_c, _ = run("c", False)
        assert float(hist_c[0]["loss"]) == pytest.approx(float(hist_a[0]["loss"]), rel=1e-5)
    finally:
        if tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()
