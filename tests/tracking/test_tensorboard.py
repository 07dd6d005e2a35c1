"""Loggers: which ones a composition turns on, TensorBoard's event files read back (loss, the
caption scores per epoch, captions as text, images with attention maps), Comet and TensorBoard
in one run, and a logger of the user's own named by ``_target_``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioning import ConfigError
from captioning.tracking.loggers import open_loggers
from captioning.tracking.names import disable_loggers, logger_names
from captioning.training import train
from tests.conftest import compose_config


class EpochFile:
    """A user's logger (``_target_``): one JSON line per epoch into ``run_dir / file``."""

    def __init__(self, run_dir: Path, file: str = "epochs.jsonl"):
        self.path = Path(run_dir) / file

    def log_epoch(self, epoch, logs):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch, **{k: float(v) for k, v in logs.items()}}) + "\n")


@pytest.mark.parametrize("choice,names", [
    ("logger=comet", ["comet"]), ("logger=none", []), ("logger=tensorboard", ["tensorboard"]),
    ("logger=[comet,tensorboard]", ["comet", "tensorboard"]),
    ("logger=[tensorboard,comet]", ["comet", "tensorboard"]),
])
def test_logger_choices_compose_without_clashing(choice, names):
    cfg = compose_config(choice)
    assert logger_names(cfg.logger) == names
    if "comet" in names:                                # Comet's keys stay where they were
        assert cfg.logger.project == "captioning" and cfg.logger.online == "auto"
    from omegaconf import open_dict

    with open_dict(cfg):                                # a multi-worker run's other workers
        disable_loggers(cfg.logger)
    assert logger_names(cfg.logger) == []


def test_a_target_that_cannot_be_imported_is_one_clear_error(tmp_path):
    cfg = compose_config("logger=none", "+logger.mine._target_=no_such_module.Logger")
    assert logger_names(cfg.logger) == ["mine"]
    with pytest.raises(ConfigError, match=r"logger.mine._target_=no_such_module.Logger could "
                                          r"not be built: .*must name an importable class"):
        open_loggers(cfg, tmp_path, data=None)


def _events(folder: Path) -> dict[str, list]:
    """{tag: [(step, value or text or image bytes)]} over the event files under ``folder``."""
    import tensorflow as tf
    from tensorboard.util import tensor_util

    out: dict[str, list] = {}
    for file in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for v in event.summary.value:
                tensor = v.HasField("tensor")
                value = tensor_util.make_ndarray(v.tensor) if tensor else v.simple_value
                out.setdefault(v.tag, []).append((event.step, value))
    return out


@pytest.fixture(scope="module")
def comet_and_tensorboard_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    cfg = compose_config("debug=tiny", "backbone.image_size=32", "logger=[comet,tensorboard]",
                         "logger.online=false", f"logger.offline_directory={out}/comet",
                         "logger.sample_images=2", "callbacks.val_captions.every_n_epochs=1",
                         "callbacks.kangas.enabled=false", "callbacks.kangas.attention=true",
                         f"+logger.mine._target_={__name__}.EpochFile",
                         f"paths.output_dir={out}/run")
    return out, cfg, train(cfg)


def test_tensorboard_events_hold_loss_scores_captions_and_attention_images(
        comet_and_tensorboard_run):
    out, cfg, results = comet_and_tensorboard_run
    tb = out / "run" / "tensorboard"
    train_events, val_events = _events(tb / "train"), _events(tb / "validation")
    assert [s for s, _ in train_events["epoch_loss"]] == [0, 1]         # Keras's callback
    cider = val_events["epoch_cider"]                                  # val_cider, per epoch
    history = (out / "run" / "history.csv").read_text().splitlines()
    assert len(cider) == 2 and len(history) == 3
    mine = _events(tb / "captions")
    captions = mine["captions/val"]
    assert [s for s, _ in captions] == [0, 1]                          # Keras's steps
    table = captions[-1][1].item().decode()
    assert table.startswith("| image | caption | a reference |") and ".jpg" in table
    final = mine["final/val_cider"]
    assert final[0][1] == pytest.approx(results["val"]["cider"], abs=1e-6)
    assert "captions/final_val" in mine
    attention = [t for t in mine if t.startswith("attention/")]
    assert len(attention) == 2                                         # logger.sample_images
    png = mine[attention[0]][0][1]                                     # [width, height, png...]
    assert png[2][:4] == b"\x89PNG"


def test_comet_archive_and_a_target_logger_in_the_same_run(comet_and_tensorboard_run):
    out, cfg, _ = comet_and_tensorboard_run
    assert len(list((out / "comet").glob("*.zip"))) == 1                # Comet, as before
    info = json.loads((out / "run" / "comet.json").read_text())
    assert info["online"] is False and len(info["archives"]) == 1
    lines = (out / "run" / "epochs.jsonl").read_text().splitlines()    # the user's logger
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert "val_cider" in json.loads(lines[-1])
