"""Kangas prediction grids: each row's image carries an attention heat map per predicted word
(one "attention" layer, a labelled mask per word). ``mask_layers`` reads those maps back from a
saved grid (tests/e2e/test_inference.py uses it too)."""

from __future__ import annotations

import numpy as np


def mask_layers(grid) -> list[list[tuple[str, int, int]]]:
    """Per image of a saved Kangas grid: its heat maps (metric masks) as (label, width,
    height)."""
    import json
    import sqlite3

    with sqlite3.connect(str(grid)) as db:
        rows = db.execute("SELECT asset_metadata FROM assets WHERE asset_type = 'Image'")
        return [[(a["label"], a["mask"]["width"], a["mask"]["height"])
                 for layer in json.loads(meta).get("annotations", []) for a in layer["data"]
                 if a.get("mask", {}).get("type") == "metric"]
                for (meta,) in rows]


def test_grid_rows_carry_one_heatmap_layer_per_word(tmp_path):
    """Each word of a row's prediction is a metric-mask layer on its image, named by position
    and word, shaped like the image (long side MASK_SIDE), values from the map."""
    import json
    import sqlite3

    from PIL import Image

    from captioning.data.records import Record
    from captioning.models.attention import WordMaps
    from captioning.tracking.kangas_grids import MASK_SIDE, write_predictions_grid

    Image.new("RGB", (120, 80), (10, 200, 30)).save(tmp_path / "wide.jpg")
    Image.new("RGB", (50, 50), (200, 20, 30)).save(tmp_path / "square.jpg")
    records = [Record(id=n, image=str(tmp_path / n), captions=("a b",))
               for n in ("wide.jpg", "square.jpg")]
    peak = np.zeros((3, 3), np.float32)
    peak[0, 2] = 1.0                                             # top right
    maps = [WordMaps(["a", "red", "circle"], np.stack([peak, peak.T, np.ones((3, 3))])),
            WordMaps([], np.zeros((0, 3, 3), np.float32))]
    grid = write_predictions_grid(tmp_path / "g.datagrid", records, ["a red circle", ""], {}, 1,
                                  "run", maps)
    wide, square = mask_layers(grid)
    height = round(80 * MASK_SIDE / 120)                          # the image's aspect
    assert wide == [("01 a", MASK_SIDE, height), ("02 red", MASK_SIDE, height),
                    ("03 circle", MASK_SIDE, height)]
    assert square == []
    with sqlite3.connect(str(grid)) as db:
        meta = json.loads(db.execute("SELECT asset_metadata FROM assets "
                                     "WHERE asset_metadata LIKE '%01 a%'").fetchone()[0])
    assert [layer["name"] for layer in meta["annotations"]] == ["attention"]   # no "01 a: 01 a"
    mask = meta["annotations"][0]["data"][0]["mask"]
    values = np.asarray(mask["array"] if mask["format"] == "raw"
                        else np.repeat(mask["array"][0::2], mask["array"][1::2]))
    values = values.reshape(mask["height"], mask["width"])
    assert values[0, -1] == values.max() and values[-1, 0] == 0           # the top right glows


def test_captions_are_text_and_the_run_column_names_the_run(tmp_path):
    """Short and long captions alike are plain text on the page (no column statistic that makes
    Kangas draw short values as coloured labels), the columns' types are the declared ones, and
    ``run`` names the run's overrides, or (defaults), with its folder."""
    import json
    import sqlite3

    import kangas
    from omegaconf import OmegaConf
    from PIL import Image

    from captioning.data.records import Record
    from captioning.tracking.kangas_grids import (
        PREDICTION_COLUMNS,
        PREDICTION_TYPES,
        run_label,
        write_grid,
    )

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "a.jpg")
    records = [Record(id=f"{i}.jpg", image=str(tmp_path / "a.jpg"), captions=("a b",))
               for i in range(3)]
    preds = ["a red circle", "a red circle above a small blue square on the left", "two dots"]
    run_dir = tmp_path / "2026-12-07" / "03-00-00"
    cfg = OmegaConf.create({"logger": {"experiment_name": "decoder=gru dataset=coco"}})
    grid = write_grid(run_dir, "final", records, preds, {}, 3, cfg)
    with sqlite3.connect(str(grid)) as db:
        meta = {name: (kind, json.loads(other) if other else {}) for name, kind, other in
                db.execute("SELECT name, type, other FROM metadata WHERE name != 'row-id'")}
    assert {c: meta[c][0] for c in PREDICTION_COLUMNS} == {
        c: PREDICTION_TYPES[c] for c in PREDICTION_COLUMNS}
    for column in ("references", "prediction", "run"):
        assert "count_unique" not in meta[column][1], column
    assert meta["id"][1]["count_unique"] == 3                 # other text columns untouched
    rows = list(kangas.read_datagrid(str(grid)).to_dicts())
    assert {r["run"] for r in rows} == {"decoder=gru dataset=coco @ 2026-12-07/03-00-00"}
    assert [r["prediction"] for r in rows] == preds
    for name in (None, "", "defaults"):
        cfg = OmegaConf.create({"logger": {"experiment_name": name}})
        assert run_label(cfg, run_dir) == "(defaults) @ 2026-12-07/03-00-00"
