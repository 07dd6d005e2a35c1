"""Using a finished run: reload, caption.py, eval.py, and the self-contained export."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from captioning.runs.checkpoints import load_run
from captioning.training import train
from tests.conftest import ROOT, compose_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    cfg = compose_config("debug=tiny", "logger=none", "trainer.max_epochs=3",
                         "backbone.image_size=32", "callbacks.checkpoints.select=mean:2-3",
                         f"paths.output_dir={out}")
    return out, cfg, train(cfg)


def _images(cfg):
    from captioning.data.datamodule import synthetic_root

    return sorted((synthetic_root(cfg.dataset) / "Images").glob("*.jpg"))[:3]


def test_reloaded_run_gives_identical_captions(finished_run):
    from captioning.data.datamodule import load_image
    from captioning.models.decoding import Generator

    out, cfg, _ = finished_run
    files = _images(cfg)
    images = np.stack([keras.ops.convert_to_numpy(load_image(str(f), 32))
                       for f in files]).astype("float32")
    _, vocab, a = load_run(out)
    _, _, b = load_run(out)
    ga = Generator.from_config(a, vocab, cfg.decode)(images)
    gb = Generator.from_config(b, vocab, cfg.decode)(images)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ga), keras.ops.convert_to_numpy(gb))


def test_caption_py_captions_every_image_of_a_folder(finished_run, tmp_path):
    out, cfg, _ = finished_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in _images(cfg):
        (folder / f.name).write_bytes(f.read_bytes())
    res = subprocess.run([sys.executable, "caption.py", f"run_dir={out}", f"images=[{folder}]",
                          "decode.method=beam", "decode.beam_size=2", "decode.tta=flip"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split("\t")[0].endswith(".jpg") for line in lines)
    bad = subprocess.run([sys.executable, "caption.py", f"run_dir={out}",
                          "images=[/nonexistent.jpg]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "No such image or folder: /nonexistent.jpg" in bad.stderr


def test_consensus_reranking_in_eval_py_and_what_caption_py_says_of_it(finished_run):
    out, cfg, _ = finished_run
    rerank = ["decode.method=beam", "decode.beam_size=3", "decode.rerank=consensus",
              "decode.rerank_neighbours=3", "decode.rerank_views=none"]
    res = subprocess.run([sys.executable, "eval.py", f"run_dir={out}", "split=val", *rerank],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    scores = json.loads((out / "eval_val_beam3_consensus3_none_mean2-3.json").read_text())
    assert scores["meta"]["decode"]["rerank"] == "consensus"
    assert any("3 nearest training images" in n for n in scores["meta"]["notes"])
    res = subprocess.run([sys.executable, "caption.py", f"run_dir={out}",
                          f"images=[{_images(cfg)[0]}]", *rerank],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "these captions are the beam's best" in res.stderr     # stdout: the captions only
    assert len(res.stdout.strip().splitlines()) == 1 and "\t" in res.stdout


def test_caption_py_plots_attention_per_word(finished_run, tmp_path):
    """attention=true out=DIR: one PNG per image, one panel per word; without out=, an error
    that says so (before any model is loaded)."""
    from PIL import Image

    import caption
    from captioning import CaptioningError

    out, cfg, _ = finished_run
    files = _images(cfg)[:2]
    res = subprocess.run([sys.executable, "caption.py", f"run_dir={out}",
                          f"images=[{files[0]},{files[1]}]", "attention=true",
                          f"out={tmp_path / 'plots'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "wrote 2 attention plot(s)" in res.stderr
    for f in files:
        with Image.open(tmp_path / "plots" / f"{f.stem}.png") as im:
            assert im.format == "PNG" and im.width >= 200
    with pytest.raises(CaptioningError, match="attention=true needs out=DIR"):
        caption.main([f"run_dir={out}", f"images=[{files[0]}]", "attention=true"])


def test_checkpoint_averaging_loads_the_mean_of_the_kept_epochs(finished_run):
    from captioning import CaptioningError
    from captioning.runs.files import averaged_epochs

    out, _, _ = finished_run
    # callbacks.checkpoints.select=mean:2-3 keeps those epochs' weights (every_epoch is off)
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch_*")) == [
        "epoch_002.weights.h5", "epoch_003.weights.h5"]
    two, three = (load_run(out, f"epoch_00{e}")[2].get_weights() for e in (2, 3))
    mean = load_run(out, "mean:2-3")[2].get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(two, three, strict=True))
    for a, b, m in zip(two, three, mean, strict=True):
        np.testing.assert_allclose(m, (a.astype("float64") + b) / 2, rtol=1e-6, atol=1e-7)
    assert averaged_epochs("mean:3-5,9") == [3, 4, 5, 9] and averaged_epochs("best") == []
    with pytest.raises(CaptioningError, match="epoch_001.weights.h5 is missing.*every_epoch=true"):
        load_run(out, "mean:1-3")
    # The run's own scores came from that mean, and eval.py / caption.py load it by default.
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert (meta["best_epoch"], meta["selected_by"]) == (3, "mean of epochs 2-3 (mean:2-3)")
    for a, m in zip(load_run(out)[2].get_weights(), mean, strict=True):
        np.testing.assert_array_equal(a, m)
    for bad in ("mean:", "mean:0-2", "mean:a-b"):
        with pytest.raises(CaptioningError, match="mean:FIRST-LAST"):
            averaged_epochs(bad)


def test_eval_py_rescoring_never_touches_metrics_json(finished_run):
    out, _, result = finished_run
    before = (out / "metrics.json").read_bytes()
    res = subprocess.run([sys.executable, "eval.py", f"run_dir={out}", "split=test",
                          "decode.method=beam", "decode.beam_size=3", "decode.tta=dihedral"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    scores = json.loads((out / "eval_test_beam3_tta_dihedral_mean2-3.json").read_text())
    assert ({"bleu_4", "cider", "loss"} <= set(scores["test"])
            and scores["meta"]["decode"]["method"] == "beam")
    assert scores["meta"]["decode"]["tta"] == "dihedral"
    assert (out / "predictions_test_beam3_tta_dihedral_mean2-3.csv").is_file()
    assert (out / "metrics.json").read_bytes() == before
    # Its Kangas grid: every row's image has one heat-map layer per word of its prediction (the
    # tiny model's beam + dihedral captions may all be empty; tests/tracking/test_kangas_grids.py
    # checks real words).
    import csv

    from tests.tracking.test_kangas_grids import mask_layers

    grid = out / "predictions" / "eval_test_beam3_tta_dihedral_mean2-3.datagrid"
    with open(out / "predictions_test_beam3_tta_dihedral_mean2-3.csv", encoding="utf-8") as f:
        words = sorted(len(row["prediction"].split()) for row in csv.DictReader(f))
    layers = mask_layers(grid)
    assert len(layers) == 4 and sorted(len(x) for x in layers) == words
    import kangas

    # the grid names the epoch its weights stand for: the last of mean:2-3
    assert {row["epoch"] for row in kangas.read_datagrid(str(grid)).to_dicts()} == {3}
    assert all(name.startswith(f"{i + 1:02d} ") for x in layers for i, (name, _, _) in enumerate(x))
    bad = subprocess.run([sys.executable, "eval.py", f"run_dir={out}", "trainer.batch_size=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "cannot change after training" in bad.stderr


def test_a_run_saved_before_a_decode_option_existed_still_loads(finished_run, tmp_path):
    """Older run directories lack newer decode/evaluation keys: they get the defaults, and an
    override of such a key is accepted (it used to be "Unknown key")."""
    import shutil

    from omegaconf import OmegaConf

    from captioning.runs.checkpoints import merge_overrides

    out, _, _ = finished_run
    old = tmp_path / "old_run"
    shutil.copytree(out, old)
    cfg = OmegaConf.load(old / "config.yaml")
    del cfg.decode["jit_compile"], cfg.decode["length_penalty"]
    (old / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    loaded, _, _ = load_run(old)
    assert loaded.decode.length_penalty == 0.0 and loaded.decode.jit_compile == "auto"
    assert merge_overrides(loaded, ["decode.length_penalty=1.0"]).decode.length_penalty == 1.0


def test_export_captions_jpeg_bytes_in_a_fresh_process(finished_run):
    from captioning.export import export

    out, cfg, _ = finished_run
    path = export(out)
    jpeg = _images(cfg)[0]
    code = ("import tensorflow as tf, sys; m = tf.saved_model.load(sys.argv[1]); "
            "r = m.caption(tf.constant([open(sys.argv[2], 'rb').read()] * 2)); "
            "print('CAPTIONS', [c.decode() for c in r.numpy()]); "
            "print('captioning' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code, str(path), str(jpeg)], capture_output=True,
                         text=True, timeout=300, cwd="/")
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("CAPTIONS"))
    caps = eval(line[len("CAPTIONS "):])  # noqa: S307 - our own printed list
    assert len(caps) == 2 and caps[0] == caps[1] and "<end>" not in caps[0]
    assert res.stdout.strip().endswith("False")              # loaded without this repository's code
    # Same caption as the framework's own greedy decoding of that file.
    ref = subprocess.run([sys.executable, "caption.py", f"run_dir={out}", f"images=[{jpeg}]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ref.stdout.strip().split("\t")[1] == caps[0]


def test_final_grid_has_a_heatmap_layer_per_word(finished_run):
    """The end of a run (callbacks.kangas.attention=true, the default): each row of the final
    grid carries one attention layer per word of its validation prediction."""
    import csv

    from tests.tracking.test_kangas_grids import mask_layers

    out, cfg, _ = finished_run
    assert cfg.callbacks.kangas.attention is True
    with open(out / "predictions.csv", encoding="utf-8") as f:
        words = sorted(len(row["prediction"].split()) for row in csv.DictReader(f))
    layers = mask_layers(out / "predictions" / "final.datagrid")
    assert sorted(len(x) for x in layers) == words
