"""The scene-class loss (trainer.class_loss with dataset.classes): classes carried through the
data pipeline, a class head trained beside the captions, and the settings that cannot work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captioning import ConfigError
from tests.conftest import compose_config, write_image


@pytest.fixture
def ucm_like(tmp_path):
    """A UCM-Captions-style Karpathy file: 1-4.jpg (class 0, red) and 101-104.jpg (class 1,
    blue), three of each in train and one in val."""
    entries = []
    for cls, color in ((0, (220, 30, 30)), (1, (30, 30, 220))):
        for i in range(1, 5):
            name = f"{cls * 100 + i}.jpg"
            write_image(tmp_path / "images" / name, color=color)
            word = ("farmland", "airplanes")[cls]
            entries.append({"filename": name, "imgid": len(entries),
                            "split": "val" if i == 4 else "train",
                            "sentences": [{"raw": f"there is some {word} here {k}"}
                                          for k in range(5)]})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": entries}), encoding="utf-8")
    return (f"dataset.json={path}", f"dataset.images={tmp_path / 'images'}",
            "dataset=karpathy", "backbone=small_cnn", "backbone.image_size=32")


def test_batches_carry_each_images_class(ucm_like):
    from captioning.data.datamodule import build_data

    cfg = compose_config("debug=tiny", *ucm_like, "dataset.classes=ucm", "trainer.class_loss=1")
    data = build_data(cfg, progress=False)
    assert data.classes == {"1.jpg": 0, "2.jpg": 0, "3.jpg": 0, "4.jpg": 0,
                            "101.jpg": 1, "102.jpg": 1, "103.jpg": 1, "104.jpg": 1}
    for sample in (None, 2):
        images, captions, classes = next(iter(data.train_dataset(6, 0, shuffle=False,
                                                                 sample=sample)))
        assert images.shape == (6, 32, 32, 3) and captions.shape[:2] == (6, sample or 5)
        # red images are class 0, blue ones class 1
        np.testing.assert_array_equal(classes.numpy(),
                                      (images.numpy()[:, 16, 16, 2] > 128).astype("int32"))
    # without the loss the batches are the usual pairs
    plain = build_data(compose_config("debug=tiny", *ucm_like, "dataset.classes=ucm"),
                       progress=False)
    assert plain.classes is None and len(next(iter(plain.train_dataset(6, 0)))) == 2


def test_the_class_head_trains_and_reports_its_loss_and_accuracy(ucm_like):
    import keras

    from captioning.data.datamodule import build_data
    from captioning.models.build import build_model

    cfg = compose_config("debug=tiny", *ucm_like, "dataset.classes=ucm", "trainer.class_loss=1")
    data = build_data(cfg, progress=False)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, data.vocab.size)
    assert model.class_head.units == 21                        # the rule's classes, not the data's
    before = keras.ops.convert_to_numpy(model.class_head.kernel).copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(data.train_dataset(3, 0), validation_data=data.train_dataset(2, 0, "val"),
                        epochs=2, verbose=0, shuffle=False).history
    for key in ("class_loss", "class_accuracy", "val_class_loss", "val_class_accuracy"):
        assert len(history[key]) == 2 and np.isfinite(history[key]).all(), key
    assert history["class_loss"][0] > 0
    assert not np.allclose(before, keras.ops.convert_to_numpy(model.class_head.kernel))
    assert build_model(compose_config("debug=tiny", *ucm_like), data.vocab.size).class_head is None


def test_class_settings_that_cannot_work_are_one_clear_error(ucm_like):
    from captioning.config_check import check_config
    from captioning.data.datamodule import build_data

    with pytest.raises(ConfigError, match="dataset.classes is null: name the rule"):
        check_config(compose_config("debug=tiny", "trainer.class_loss=0.5"))
    with pytest.raises(ConfigError, match="dataset.classes must be null or ucm"):
        check_config(compose_config("debug=tiny", "dataset.classes=folders"))
    with pytest.raises(ConfigError, match="val_class_accuracy is logged only with "
                                          "trainer.class_loss > 0"):
        check_config(compose_config("debug=tiny",
                                    "callbacks.early_stopping.monitor=val_class_accuracy"))
    from captioning.models.build import build_model

    with pytest.raises(ConfigError, match="needs dataset.classes"):    # built without a check
        build_model(compose_config("debug=tiny", "trainer.class_loss=1"), 40)
    # the synthetic images are not named like UCM's: the image and the fix are named
    with pytest.raises(ConfigError, match=r"is not one. Set dataset.classes=null"):
        build_data(compose_config("debug=tiny", "dataset.classes=ucm", "trainer.class_loss=1"),
                   progress=False)
