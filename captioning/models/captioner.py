"""The Captioner: a keras.Model that plays the Lightning-module role.

``train_step`` / ``test_step`` take batches of ``(images (B, H, W, 3), captions (B, C, L))``:
each image goes through the backbone and encoder once, and all C of its captions are decoded
against that one result in a single optimizer step (recipe A took C steps and C encoder
passes per batch). Loss and accuracy are masked: padding never counts.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def masked_loss_and_accuracy(targets, logits, label_smoothing=0.0):
    """Mean cross-entropy and token accuracy over positions whose target is not padding (0).

    targets: (...,) int ids; logits: (..., V). Returns (loss, accuracy, number of real tokens).
    """
    mask = ops.cast(ops.not_equal(targets, 0), "float32")
    n = ops.maximum(ops.sum(mask), 1.0)
    logits = ops.cast(logits, "float32")
    if label_smoothing:
        v = ops.shape(logits)[-1]
        onehot = ops.one_hot(targets, v) * (1.0 - label_smoothing) + label_smoothing / ops.cast(v, "float32")
        ce = keras.losses.categorical_crossentropy(onehot, logits, from_logits=True)
    else:
        ce = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    hit = ops.cast(ops.equal(ops.cast(ops.argmax(logits, -1), targets.dtype), targets), "float32")
    return ops.sum(ce * mask) / n, ops.sum(hit * mask) / n, ops.sum(mask)


@keras.saving.register_keras_serializable("captioning")
class Captioner(keras.Model):
    def __init__(self, backbone, encoder, decoder, augmentation=(), blind=False, label_smoothing=0.0, **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.encoder, self.decoder = backbone, encoder, decoder
        self.augmentation = list(augmentation)
        self.blind = blind                     # feed zeros instead of the image: the image-blind baseline
        self.label_smoothing = label_smoothing
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.acc_tracker = keras.metrics.Mean(name="accuracy")

    def build(self, input_shape=None):
        # Sublayers build on the first call (build_model calls the model once on zeros).
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker]

    def encode(self, inputs, training=False):
        """images (B, H, W, 3) float 0..255, or cached backbone tokens (B, S, C) -> memory (B, S, D)."""
        if len(inputs.shape) == 3:                   # features from the cache: the backbone already ran
            return self.encoder(inputs, training=training)
        images = inputs
        if training:
            for layer in self.augmentation:
                images = layer(images, training=True)
        if self.blind:
            images = ops.zeros_like(images)
        return self.encoder(self.backbone(images, training=training), training=training)

    def call(self, inputs, training=False):
        """(images, tokens (B, T)) -> logits (B, T, V). For summaries and tests; training uses
        ``caption_loss`` which projects only real tokens."""
        images, tokens = inputs
        return self.decoder.project(self.decoder(tokens, self.encode(images, training), training=training))

    def caption_loss(self, images, captions, training=False):
        """Loss, accuracy and token count for (B, H, W, 3) images and (B, C, L) captions."""
        memory = self.encode(images, training)                           # (B, S, D), once per image
        c, length = ops.shape(captions)[1], ops.shape(captions)[2]
        memory = ops.repeat(memory, c, axis=0)                           # (B*C, S, D)
        captions = ops.reshape(captions, (-1, length))                   # (B*C, L)
        present = captions[:, 0] > 0                                     # images with < C captions pad rows
        memory, captions = tf.boolean_mask(memory, present), tf.boolean_mask(captions, present)
        # Cut the batch to its longest caption: positions past it are padding everywhere.
        longest = ops.max(ops.sum(ops.cast(captions > 0, "int32"), axis=1))
        captions = captions[:, :longest]
        inputs, targets = captions[:, :-1], captions[:, 1:]              # teacher forcing
        hidden = self.decoder(inputs, memory, training=training)         # (N, T, D)
        # Project onto the vocabulary only where there is a real target token: padding is most
        # positions, and the (D x V) projection is the largest matmul of the decoder.
        real = targets > 0
        logits = self.decoder.project(tf.boolean_mask(hidden, real))     # (n_tokens, V)
        return masked_loss_and_accuracy(tf.boolean_mask(targets, real), logits, self.label_smoothing)

    def train_step(self, data):
        images, captions = data
        with tf.GradientTape() as tape:
            loss, acc, n = self.caption_loss(images, captions, training=True)
            # Under tf.distribute each replica sees part of the batch and gradients are summed:
            # weight this replica's token mean by its share of all tokens, so the summed gradient
            # is the gradient of the global per-token mean (what one device computes).
            ctx = tf.distribute.get_replica_context()
            if ctx is not None and ctx.num_replicas_in_sync > 1:
                total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, n)
                objective = loss * n / tf.maximum(total, 1.0)
            else:
                objective = loss
            scaled = self.optimizer.scale_loss(objective)               # mixed precision
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss, sample_weight=n)          # token-weighted epoch means
        self.acc_tracker.update_state(acc, sample_weight=n)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        images, captions = data
        loss, acc, n = self.caption_loss(images, captions, training=False)
        self.loss_tracker.update_state(loss, sample_weight=n)
        self.acc_tracker.update_state(acc, sample_weight=n)
        return {m.name: m.result() for m in self.metrics}
