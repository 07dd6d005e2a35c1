"""What a person sees in ``make kangas``: the real ``kangas server`` (started by
captioning.review) over a folder laid out like outputs/, rendered by headless Chromium. The
bare address opens on the newest run's final grid (its rows shown, the grid selected), the
final grid's thumbnails show the image, not the attention heat maps over it, and captions are
plain text."""

from __future__ import annotations

import io
import json
import os
import re
import urllib.request

import numpy as np
import pytest

from tests.tools.test_review import chromium, chromium_missing, serving

GREEN = (20, 160, 60)                 # the test image: one colour no heat map (plasma) has


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """outputs/<date>/<time>/predictions/: an older run's final grid, and the newest run's
    epoch and final grids (written by kangas_grids: real attention maps over every word)."""
    from omegaconf import OmegaConf
    from PIL import Image

    from captioning.data.records import Record
    from captioning.models.attention import WordMaps
    from captioning.tracking.kangas_grids import write_grid

    root = tmp_path_factory.mktemp("outputs")
    Image.new("RGB", (96, 64), GREEN).save(root / "green.png")
    records = [Record(id=f"img{i}.png", image=str(root / "green.png"), captions=("a b c",))
               for i in range(2)]
    preds = ["a red circle", "a small blue square to the left of a big red circle"]
    ramp = np.linspace(0, 1, 9, dtype=np.float32).reshape(3, 3)     # covers the whole image
    maps = [WordMaps(p.split(), np.stack([np.roll(ramp, k) for k in range(len(p.split()))]))
            for p in preds]
    cfg = OmegaConf.create({"logger": {"experiment_name": None}})
    old = write_grid(root / "2026-12-06" / "10-00-00", "final", records, preds, {}, 2, cfg,
                     attention=maps)
    os.utime(old, (1_700_000_000, 1_700_000_000))
    run = root / "2026-12-07" / "03-00-00"
    write_grid(run, "epoch_001", records, preds, {}, 1, cfg)
    final = write_grid(run, "final", records, preds, {}, 1, cfg, attention=maps)
    return root, final, preds


def _greens(png: bytes) -> int:
    """How many pixels of a screenshot are the test image's colour."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.int32)
    return int((np.abs(pixels - np.array(GREEN)).max(axis=2) <= 12).sum())


def test_the_page_opens_on_the_newest_final_grid_with_its_images_visible(outputs, tmp_path):
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    root, final, preds = outputs
    shot = tmp_path / "page.png"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with serving(root, None, tmp_path / "kangas.log") as (link, backend):
        bare = link.split("?")[0]
        with opener.open(bare, timeout=120) as r:
            assert r.geturl() == link                       # the bare address redirects
        with opener.open(f"{backend}datagrid/list", timeout=60) as r:
            listed = [g["value"] for g in json.loads(r.read())]
        dom = chromium(bare, tmp_path / "chrome", screenshot=shot, size=(1400, 700))
    assert link.endswith("?datagrid=2026-12-07/03-00-00/predictions/final.datagrid"), link
    # the selector lists every grid (Kangas's own listing stops 3 folders down), newest first
    assert sorted(listed) == ["2026-12-06/10-00-00/predictions/final.datagrid",
                              "2026-12-07/03-00-00/predictions/epoch_001.datagrid",
                              "2026-12-07/03-00-00/predictions/final.datagrid"]
    assert listed[-1] == "2026-12-06/10-00-00/predictions/final.datagrid"
    assert "null of null" not in dom
    assert re.search(r"1\s*-\s*2\s+of\s+2\s+rows", dom), dom[-3000:]     # the rows are shown
    assert "2026-12-07/03-00-00/predictions/final.datagrid" in dom       # and the grid selected
    assert "(defaults) @ 2026-12-07/03-00-00" in dom                     # run column
    for caption in preds:                                   # captions as text, not as labels
        (tag,) = re.findall(r"<div[^>]*>" + re.escape(caption) + "</div>", dom)
        assert "background" not in tag, tag
    # The thumbnails show the image: with the heat maps blended in (Kangas's own thumbnails),
    # no pixel keeps the image's colour; two 96x64 images drawn at the grid's row height keep
    # thousands.
    assert _greens(shot.read_bytes()) > 4000, _greens(shot.read_bytes())

