"""Image augmentation layers: training batches only, and the quarter turns by one gather."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from captioning import ConfigError
from tests.conftest import compose_config


def test_augmentation_layers_transform_training_batches_only():
    from captioning.models.augment import build_augmentation

    cfg = compose_config("augment.flip=both", "augment.rot90=true", "augment.zoom=0.25",
                         "augment.translate=0.1")
    layers = {layer.name: layer for layer in build_augmentation(cfg, seed=0)}
    assert set(layers) == {"aug_flip", "aug_rot90", "aug_zoom", "aug_translate"}
    x = np.random.default_rng(0).uniform(0, 255, (16, 12, 12, 3)).astype("float32")
    for layer in layers.values():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
        y = keras.ops.convert_to_numpy(layer(x, training=True))
        assert y.shape == x.shape and not np.allclose(y, x)
    # 90-degree rotations permute pixels exactly: every image is one of its four rotations.
    y = keras.ops.convert_to_numpy(layers["aug_rot90"](x, training=True))
    assert all(any(np.array_equal(y[i], np.rot90(x[i], k)) for k in range(4))
               for i in range(len(x)))
    with pytest.raises(ConfigError, match="augment.zoom and augment.translate"):
        build_augmentation(compose_config("augment.zoom=1.5"), seed=0)


def test_rot90_turns_by_one_gather_as_the_four_selects_did():
    """Images of a known side take the gather path; of an unknown side, the select path. With
    the same seed they draw the same turns, so both give the same images, pixel for pixel."""
    import tensorflow as tf

    from captioning.models.augment import RandomRot90, _turn_maps

    x = np.random.default_rng(1).uniform(0, 255, (64, 9, 9, 3)).astype("float32")
    fast, slow = RandomRot90(seed=5), RandomRot90(seed=5)
    unknown_side = tf.function(lambda t: slow(t, training=True),
                               input_signature=[tf.TensorSpec((None, None, None, 3))])
    for _ in range(2):                                   # two draws: the seed streams agree
        y = keras.ops.convert_to_numpy(fast(x, training=True))
        np.testing.assert_array_equal(y, unknown_side(x).numpy())
    turns = [next(k for k in range(4) if np.array_equal(y[i], np.rot90(x[i], k)))
             for i in range(len(x))]
    assert set(turns) == {0, 1, 2, 3}                    # every turn is drawn
    maps = _turn_maps(9)
    for k in range(4):
        np.testing.assert_array_equal(x[0].reshape(81, 3)[maps[k]].reshape(9, 9, 3),
                                      np.rot90(x[0], -k))     # k turns clockwise
