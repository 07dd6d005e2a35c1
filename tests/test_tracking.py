"""Comet offline archives and Kangas grids, for real (no mocks): a tiny run is inspected."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from captioning.tracking.kangas_grids import PREDICTION_COLUMNS
from captioning.training import train
from tests.conftest import compose_config

SECRET = "captioning-test-secret-key-0123456789"


@pytest.fixture(scope="module")
def comet_run(tmp_path_factory):
    """A tiny run with Comet on (offline: no server is reachable) and a key in the environment
    that must never be written anywhere."""
    out = tmp_path_factory.mktemp("comet_run")
    os.environ["COMET_API_KEY"] = SECRET
    try:
        cfg = compose_config("debug=tiny", "logger=comet", "logger.online=false",
                             "callbacks.kangas.every_n_epochs=1",
                             "callbacks.val_captions.every_n_epochs=1", "logger.tags=[sweep:test]",
                             "trainer.word_loss=0.5", "decode.method=beam",
                             "callbacks.val_captions.method=greedy", f"paths.output_dir={out}")
        result = train(cfg)
    finally:
        del os.environ["COMET_API_KEY"]
    return out, result


def _messages(archive: Path):
    with zipfile.ZipFile(archive) as z:
        return [json.loads(line) for line in z.read("messages.json").decode().splitlines()], \
            json.loads(z.read("experiment.json")), z


def test_offline_archive_holds_params_metrics_images_and_grid(comet_run):
    out, _ = comet_run
    archives = list((out / "comet").glob("*.zip"))
    assert len(archives) == 1
    messages, experiment, _ = _messages(archives[0])
    assert experiment["project_name"] == "captioning" and "sweep:test" in experiment["tags"]
    params = {m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
              for m in messages if m["type"] == "parameter_msg"}
    assert params["decoder.name"] == "transformer" and params["trainer.batch_size"] == 8
    metrics = [m["payload"]["metric"] for m in messages if m["type"] == "metric_msg"]
    val_loss_steps = sorted(m["step"] for m in metrics if m["metricName"] == "val_loss")
    assert val_loss_steps == [1, 2]                                    # per epoch, epoch as step
    assert any(m["metricName"] == "val_cider" for m in metrics)
    assert any(m["metricName"] == "final_val_cider" for m in metrics)
    assert any(m["metricName"] == "word_loss" for m in metrics)          # trainer.word_loss > 0
    uploads = [m["payload"]["additional_params"] for m in messages if m["type"] == "file_upload"]
    names = {u.get("fileName") or u.get("figName") for u in uploads}
    assert {"metrics.json", "predictions/final.datagrid", "predictions/epoch_001.datagrid",
            "plots/loss"} <= names
    assert any(n.startswith("val/") for n in names)                    # sample images with captions


def test_api_key_is_never_written(comet_run):
    out, _ = comet_run
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".zip":
                with zipfile.ZipFile(path) as z:
                    data = b"".join(z.read(n) for n in z.namelist())
            assert SECRET.encode() not in data, path


def test_prediction_grids_have_the_columns(comet_run):
    import kangas

    out, result = comet_run
    grids = sorted(p.name for p in (out / "predictions").glob("*.datagrid"))
    assert grids == ["epoch_001.datagrid", "epoch_002.datagrid", "final.datagrid"]
    dg = kangas.read_datagrid(str(out / "predictions" / "final.datagrid"))
    assert dg.get_columns() == PREDICTION_COLUMNS
    rows = list(dg.to_dicts())
    assert len(rows) == 4 and all(" | " in r["references"] for r in rows)
    assert all(isinstance(r["cider"], float) and r["run"] for r in rows)


def test_comet_failure_never_costs_the_run(tmp_path, monkeypatch):
    """An unwritable offline directory: Comet warns, the run still trains and scores."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    cfg = compose_config("debug=tiny", "logger=comet", "logger.online=false",
                         "trainer.max_epochs=1", f"logger.offline_directory={blocked}/comet",
                         f"paths.output_dir={tmp_path}/run")
    result = train(cfg)
    assert "cider" in result["val"] and (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_kangas_page_shows_rows(comet_run, tmp_path):
    from captioning.review import start, stop, wait_until_up

    out, _ = comet_run
    proc, url, _ = start(out / "predictions", datagrid=str(out / "predictions" / "final.datagrid"))
    try:
        assert wait_until_up(url, timeout=120), "kangas server did not start"
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
             "--virtual-time-budget=20000", "--dump-dom",
             f"{url}?datagrid={out / 'predictions' / 'final.datagrid'}"],
            capture_output=True, text=True, timeout=120).stdout
    finally:
        stop(proc)
    assert "final" in dom                                  # the grid's name, in the page
    first_id = next(iter(_grid_ids(out)))
    assert first_id in dom


def _grid_ids(out):
    import kangas

    return [r["id"] for r in
            kangas.read_datagrid(str(out / "predictions" / "final.datagrid")).to_dicts()]
