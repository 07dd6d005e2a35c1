"""Kangas prediction grids: each row's image carries one attention layer per predicted word.
``mask_layers`` reads those layers back from a saved grid (tests/e2e/test_inference.py uses it
too)."""

from __future__ import annotations

import numpy as np


def mask_layers(grid) -> list[list[tuple[str, int, int]]]:
    """Per image of a saved Kangas grid: its mask layers as (name, width, height)."""
    import json
    import sqlite3

    with sqlite3.connect(str(grid)) as db:
        rows = db.execute("SELECT asset_metadata FROM assets WHERE asset_type = 'Image'")
        return [[(a["name"], a["data"][0]["mask"]["width"], a["data"][0]["mask"]["height"])
                 for a in json.loads(meta).get("annotations", [])
                 if a["data"][0].get("mask", {}).get("type") == "metric"]
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
    mask = meta["annotations"][0]["data"][0]["mask"]
    values = np.asarray(mask["array"] if mask["format"] == "raw"
                        else np.repeat(mask["array"][0::2], mask["array"][1::2]))
    values = values.reshape(mask["height"], mask["width"])
    assert values[0, -1] == values.max() and values[-1, 0] == 0           # the top right glows
