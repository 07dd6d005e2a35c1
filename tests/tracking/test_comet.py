"""Comet offline archives and Kangas grids, for real (no mocks): a tiny run is inspected."""

from __future__ import annotations

import json
import os
import shlex
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
    assert {"metrics.json", "predictions.csv", "predictions_test.csv",
            "predictions/final.datagrid", "predictions/epoch_001.datagrid", "plots/loss"} <= names
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


def test_prediction_grids_have_the_declared_columns(comet_run):
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
def test_kangas_page_shows_the_final_grid_s_rows(comet_run, tmp_path):
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


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """debug=[tiny,fdr] with Comet offline and a profiler trace of batch 1: stopped by a real
    SIGTERM as the evaluation begins, then resumed (resume=<run_dir>) to the end."""
    from captioning import TrainingInterrupted

    out = tmp_path_factory.mktemp("resumed_run")
    overrides = ["debug=[tiny,fdr]", "logger=comet", "logger.online=false",
                 "trainer.profile_batches=1", f"paths.output_dir={out}"]
    os.environ["CAPTIONING_SIGNAL_AT"] = "evaluation"
    try:
        with pytest.raises(TrainingInterrupted):
            train(compose_config(*overrides))
    finally:
        del os.environ["CAPTIONING_SIGNAL_AT"]
    first = json.loads((out / "comet.json").read_text())
    result = train(compose_config(*overrides, f"resume={out}"))
    return out, first, result


def test_resumed_run_continues_the_same_comet_experiment(resumed_run):
    out, first, _ = resumed_run
    info = json.loads((out / "comet.json").read_text())
    key = info["experiment_key"]
    assert key == first["experiment_key"] and info["online"] is False and info["starts"] == 2
    archives = [Path(a) for a in info["archives"]]
    assert len(archives) == 2 and sorted(archives) == sorted((out / "comet").glob("*.zip"))
    assert archives[0].name == f"{key}.zip"                    # creates the experiment
    strategies = []
    for archive in archives:
        messages, experiment, _ = _messages(archive)
        assert experiment["offline_id"] == key
        strategies.append(experiment["resume_strategy"])
    assert strategies == ["create", "get"]                      # the second one appends to it
    metrics = [m["payload"]["metric"]["metricName"] for m in messages if m["type"] == "metric_msg"]
    assert "final_val_cider" in metrics                          # the evaluation went there


def test_runs_record_provenance_in_metrics_and_comet(resumed_run):
    from importlib import metadata

    out, _, result = resumed_run
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    assert prov == result["provenance"]
    head = subprocess.run(["git", "-C", str(Path(__file__).parents[2]), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert prov["git"]["commit"] == head and isinstance(prov["git"]["dirty"], bool)
    assert prov["packages"]["tensorflow"] == metadata.version("tensorflow")
    assert prov["packages"]["comet-ml"] == metadata.version("comet-ml")
    assert set(prov["packages"]) >= {"keras", "keras-hub", "hydra-core", "omegaconf", "kangas",
                                     "tensorflow-datasets", "numpy"}
    assert prov["argv"] and prov["command"].endswith(shlex.join(prov["argv"][1:]))
    for archive in (out / "comet").glob("*.zip"):
        messages, _, _ = _messages(archive)
        others = {m["payload"]["key"]: m["payload"]["value"]
                  for m in messages if m["type"] == "log_other"}
        assert others["provenance.git.commit"] == head and "provenance.command" in others


def test_fdr_runs_one_batch_each_and_scores_four_images(resumed_run):
    out, _, result = resumed_run
    assert [r["epoch"] for r in _history(out)] == [1]
    for name in ("predictions.csv", "predictions_test.csv"):
        assert len((out / name).read_text().strip().splitlines()) == 1 + 4, name
    assert result["meta"]["epochs_run"] == 1 and set(result) >= {"val", "test"}


def test_profile_batches_write_a_tensorflow_trace(resumed_run):
    out, _, _ = resumed_run
    traces = list((out / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0
    from captioning.op_profile import main, op_table

    table = op_table(out / "profile", top=5)       # the per-op table of that trace
    assert len(table["by_op"]) == 5 and table["total_ms"] > 0
    # the model's matrix products are in the trace (among all its op types: which ones lead
    # depends on the machine's load, so the top 5 once missed them on a busy CI machine)
    kinds = dict(op_table(out / "profile", top=10**6)["by_type"])
    assert any(k in kinds for k in ("MatMul", "BatchMatMulV2", "Einsum", "Conv2D"))
    main([str(out / "profile"), "--top", "3"])
    with pytest.raises(FileNotFoundError, match="trainer.profile_batches"):
        op_table(out)                              # the run folder, not its profile/


def test_experiment_names_leave_out_paths():
    from captioning.tracking.comet import experiment_name

    name = experiment_name(["dataset=flickr8k", "dataset.root=/data/long/path/flickr8k",
                            "decoder=gru", "trainer.max_epochs=5", "resume=outputs/x/y",
                            "hydra.run.dir=outputs/a", "paths.cache_dir=/tmp/c",
                            "backbone.weights=/models/run3/best.weights.h5"])
    assert name == ("dataset=flickr8k decoder=gru trainer.max_epochs=5 "
                    "backbone.weights=best.weights.h5")
    assert experiment_name(["dataset.root=/data"]) == "defaults"


def test_provenance_outside_a_git_checkout_says_why(tmp_path):
    from captioning.provenance import git_state

    state = git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None
    assert "not a git repository" in state["reason"]


def _history(out):
    from captioning.runs.files import read_history

    return read_history(out)
