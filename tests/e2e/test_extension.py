"""examples/extension, copied to a folder outside the repository, trains and is scored with
debug=tiny through its own try.sh: a decoder, a backbone, a reader and a callback of the user's
own, from their module and config folder (docs/architecture.md, "Plug-ins")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from omegaconf import OmegaConf

from tests.conftest import ROOT


def test_the_extension_example_trains_outside_the_repository(tmp_path):
    folder = tmp_path / "my_extension"
    shutil.copytree(ROOT / "examples" / "extension", folder,
                    ignore=shutil.ignore_patterns("data", "outputs", "__pycache__"))
    assert not folder.resolve().is_relative_to(ROOT.resolve())
    result = subprocess.run(["bash", "try.sh", str(ROOT)], cwd=folder, capture_output=True,
                            text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [metrics_file] = (folder / "outputs").glob("*/*/metrics.json")   # run from its own folder
    run = metrics_file.parent
    metrics = json.loads(metrics_file.read_text())
    for split in ("val", "test"):                                     # scored
        assert {"loss", "bleu_4", "cider", "rouge_l"} <= set(metrics[split])
        assert 0 <= metrics[split]["cider"] and metrics[split]["loss"] > 0
    config = OmegaConf.load(run / "config.yaml")
    assert (config.decoder._target_, config.backbone._target_, config.dataset._target_) == (
        "my_ext.LSTMDecoder", "my_ext.patch_backbone", "my_ext.read_captions_csv")
    data = json.loads((run / "data.json").read_text())
    assert sum(data["counts"].values()) == 40        # debug=tiny's 40 of the 48 generated
    epochs = len((run / "history.csv").read_text().splitlines()) - 1
    lines = (run / "epoch_log.txt").read_text().splitlines()          # the callback ran
    assert len(lines) == epochs >= 1 and lines[0].startswith("epoch 1 val_loss=")
