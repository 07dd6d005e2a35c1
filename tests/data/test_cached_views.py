"""``augment.cached_views``: N augmented views of each training image cached once through the
frozen backbone, one drawn per image each epoch; validation and captioning stay un-augmented."""

from __future__ import annotations

import numpy as np
import pytest

from captioning import ConfigError
from captioning.config_check import check_config
from captioning.data.datamodule import build_data
from captioning.data.features import attach_feature_cache, bypass_reason, cached_views
from captioning.models.build import build_model
from captioning.training import train
from tests.conftest import compose_config

VIEWS = 3
FROZEN = ["debug=tiny", "backbone=efficientnetb0", "backbone.image_size=32",
          "backbone.weights=null", "logger=none", "callbacks.kangas.enabled=false",
          "augment.flip=horizontal", "augment.contrast=0.3"]


def _attached(tmp_path, *extra):
    cfg = compose_config(*FROZEN, f"augment.cached_views={VIEWS}",
                         f"paths.cache_dir={tmp_path}/cache", *extra)
    data = build_data(cfg, progress=False)
    model = build_model(cfg, data.vocab.size)
    attach_feature_cache(cfg, data, model)
    return cfg, data, model


def _feature_batches(ds):
    return [np.asarray(x) for x, _ in ds]


def test_views_are_cached_per_training_image_and_drawn_each_pass(tmp_path):
    cfg, data, _ = _attached(tmp_path)
    feats, row_of, views = data.train_views
    train = data.splits["train"]
    n = len(train)
    assert views == VIEWS and feats.shape[0] == VIEWS * n
    assert sorted(row_of.values()) == list(range(n))
    plain = np.asarray(data.features[0], np.float32)
    stacked = np.asarray(feats, np.float32).reshape(VIEWS, n, *feats.shape[1:])
    own = plain[[data.features[1][r.id] for r in train]]
    # contrast changes every view: no view is the plain image's features, and views differ
    # (random weights give tiny activations: compared relative to their scale)
    scale = float(np.abs(own).max())
    assert all(np.abs(stacked[v] - own).max() > 1e-2 * scale for v in range(VIEWS))
    assert np.abs(stacked[0] - stacked[1]).max() > 1e-2 * scale

    ds = data.train_dataset(n, seed=0, shuffle=False)
    passes = [_feature_batches(ds)[0] for _ in range(4)]
    chosen = [[int(np.argmin(np.abs(stacked[:, i] - p[i]).reshape(VIEWS, -1).max(1)))
               for i in range(n)] for p in passes]
    for p, pick in zip(passes, chosen, strict=True):      # each row is one of its image's views
        np.testing.assert_array_equal(p, stacked[pick, np.arange(n)])
    assert len({tuple(c) for c in chosen}) > 1            # a new draw each pass
    assert len({v for c in chosen for v in c}) == VIEWS   # every view is drawn

    # Seeded: a new pipeline repeats the draws, and skipping a pass's iterator (a resumed run)
    # lands on the next pass's draw.
    again = data.train_dataset(n, seed=0, shuffle=False)
    np.testing.assert_array_equal(_feature_batches(again)[0], passes[0])
    resumed = data.train_dataset(n, seed=0, shuffle=False)
    iter(resumed)
    np.testing.assert_array_equal(_feature_batches(resumed)[0], passes[1])

    # validation reads the plain features, never a view
    val = data.splits["val"]
    got = np.concatenate(_feature_batches(data.train_dataset(64, 0, split="val", shuffle=False)))
    np.testing.assert_array_equal(got, plain[[data.features[1][r.id] for r in val]])


def test_cached_views_config(tmp_path):
    on = compose_config(*FROZEN, "augment.cached_views=4")
    assert bypass_reason(on) is None and cached_views(on) == 4
    assert "augment.cached_views=N" in bypass_reason(compose_config(*FROZEN))
    # without augmentation there is nothing to view: the plain cache alone
    assert cached_views(compose_config("backbone=efficientnetb0", "augment.cached_views=4")) == 0
    assert "mixup" in bypass_reason(compose_config(*FROZEN, "augment.cached_views=4",
                                                   "augment.mixup=0.2"))
    assert "trained" in bypass_reason(compose_config(*FROZEN, "augment.cached_views=4",
                                                     "backbone.trainable=true"))
    with pytest.raises(ConfigError, match="augment.cached_views must be >= 0"):
        check_config(compose_config("augment.cached_views=-1"))
    preset = compose_config("experiment=flickr8k_transformer")
    assert bypass_reason(preset) is None and cached_views(preset) == 5


@pytest.mark.slow
def test_a_run_trains_on_cached_views_and_a_second_reuses_them(tmp_path, capsys):
    for name in ("first", "second"):
        train(compose_config(*FROZEN, f"augment.cached_views={VIEWS}", "trainer.max_epochs=2",
                             f"paths.cache_dir={tmp_path}/cache",
                             f"paths.output_dir={tmp_path}/{name}"))
        out = capsys.readouterr().out
        assert "augmented views:" in out and "bypassed" not in out
        assert (tmp_path / name / "metrics.json").is_file()
    folders = sorted(p.name for p in (tmp_path / "cache" / "features").iterdir())
    assert len(folders) == 2 and sum(f.startswith("views-") for f in folders) == 1
