"""The feature cache is read through its memory map, never copied into the process: the
kernel may drop its pages under memory pressure and re-read them (docs/scale.md)."""

from __future__ import annotations

import numpy as np

from captioning.data.datamodule import CaptionData


def test_the_feature_cache_stays_memory_mapped(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, np.ones((4, 2, 3), np.float16))
    data = CaptionData(splits={}, vocab=None, report=None, captions_per_image=5, image_size=8)
    data.use_features(np.load(path, mmap_mode="r"), {})
    assert isinstance(data.features[0], np.memmap)
