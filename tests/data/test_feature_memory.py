"""The feature cache is read into memory only when it fits the room this process has
(``captioning.io.memory_headroom``, which counts a memory cgroup's limit); otherwise training
reads it through the memory map, whose pages the kernel may drop (docs/scale.md)."""

from __future__ import annotations

import numpy as np

from captioning.data import datamodule
from captioning.data.datamodule import CaptionData


def test_the_feature_cache_stays_memory_mapped_when_it_does_not_fit(tmp_path, monkeypatch):
    path = tmp_path / "features.npy"
    np.save(path, np.ones((4, 2, 3), np.float16))
    data = CaptionData(splits={}, vocab=None, report=None, captions_per_image=5, image_size=8)
    monkeypatch.setattr(datamodule, "memory_headroom", lambda: 1e9)
    data.use_features(np.load(path, mmap_mode="r"), {})
    assert not isinstance(data.features[0], np.memmap)          # fits: read into memory
    monkeypatch.setattr(datamodule, "memory_headroom", lambda: 2 * 48 - 1)   # under 2x its size
    data.use_features(np.load(path, mmap_mode="r"), {})
    assert isinstance(data.features[0], np.memmap)
