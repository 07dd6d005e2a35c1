"""Image augmentation applied inside the model, on training batches only."""

from __future__ import annotations

import keras
from keras import layers, ops

from captioning import ConfigError
from captioning.config_rules import check_values


def rotate90(images):
    """(B, H, W, C) square images turned 90 degrees clockwise (also decode.tta's views)."""
    return ops.flip(ops.transpose(images, (0, 2, 1, 3)), axis=2)


def _turn_maps(side: int):
    """(4, side * side) int32: row k holds, for each pixel of an image turned k x 90 degrees
    clockwise (``rotate90`` k times), the index of its source pixel (row-major) in the upright
    image."""
    import numpy as np

    grid = np.arange(side * side, dtype=np.int32).reshape(side, side)
    turns = [grid, np.flip(grid.T, 1), np.flip(grid, (0, 1)), np.flip(grid.T, 0)]
    return np.stack([t.reshape(-1) for t in turns])


@keras.saving.register_keras_serializable("captioning")
class RandomRot90(layers.Layer):
    """Rotate each (square) image by a random multiple of 90 degrees: right for overhead
    imagery, where 'up' has no meaning. Keras has no such layer (RandomRotation interpolates)."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        k = keras.random.randint((ops.shape(images)[0], 1, 1, 1), 0, 4, seed=self.generator)
        side = images.shape[1]
        if side is None or side != images.shape[2] or images.shape[3] is None:
            r90 = rotate90(images)
            r180 = ops.flip(ops.flip(images, axis=1), axis=2)
            r270 = ops.flip(ops.transpose(images, (0, 2, 1, 3)), axis=1)
            return ops.where(k == 0, images, ops.where(k == 1, r90, ops.where(k == 2, r180, r270)))
        # One gather of each image's pixels by its turn's index map, instead of all four turns
        # and three selects: the same images, a quarter of the work. tf.gather with batch_dims,
        # because keras.ops.take_along_axis broadcasts the indices over the channels first and
        # was slower than the selects (figures: docs/experiments/speed.md).
        import tensorflow as tf

        flat = tf.reshape(images, (-1, side * side, images.shape[3]))
        where = tf.gather(tf.constant(_turn_maps(side)), tf.reshape(k, (-1,)))
        return tf.reshape(tf.gather(flat, where, batch_dims=1), tf.shape(images))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_augmentation(cfg, seed: int):
    """``augment.*`` -> a list of Keras layers, or [] when augmentation is off."""
    out = []
    a = cfg.augment
    flip = {"none": None, "horizontal": "horizontal", "vertical": "vertical",
            "both": "horizontal_and_vertical"}
    check_values({"augment.flip": a.flip})
    if flip[a.flip]:
        out.append(layers.RandomFlip(flip[a.flip], seed=seed, name="aug_flip"))
    if a.rot90:
        out.append(RandomRot90(seed=seed, name="aug_rot90"))
    if a.rotation:
        out.append(layers.RandomRotation(a.rotation, seed=seed, name="aug_rotation"))
    if a.contrast:
        out.append(layers.RandomContrast(a.contrast, seed=seed, name="aug_contrast",
                                         value_range=(0, 255)))
    zoom, shift = float(a.get("zoom", 0.0)), float(a.get("translate", 0.0))
    if not (0 <= zoom < 1 and 0 <= shift < 1):
        raise ConfigError(f"augment.zoom and augment.translate are fractions of the image side "
                          f"in [0, 1). "
                          f"Received: zoom={zoom}, translate={shift}")
    if zoom:
        # Negative factors zoom in only: crops that keep the scene's scale close to the original.
        out.append(layers.RandomZoom((-zoom, 0.0), seed=seed, fill_mode="reflect", name="aug_zoom"))
    if shift:
        out.append(layers.RandomTranslation(shift, shift, seed=seed, fill_mode="reflect",
                                            name="aug_translate"))
    return out
