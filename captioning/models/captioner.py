"""The Captioner: a keras.Model that plays the Lightning-module role.

``train_step`` / ``test_step`` take batches of ``(images (B, H, W, 3), captions (B, C, L))``:
each image goes through the backbone and encoder once, and all C of its captions are decoded
against that one result in a single optimizer step (recipe A took C steps and C encoder
passes per batch). Loss and accuracy are masked: padding never counts.

With ``word_loss > 0`` the image memory also predicts, through a linear head on its spatial
mean, which vocabulary words occur in any of the image's captions (multi-label, binary
cross-entropy): the "visual concepts" objective of Fang et al. (2015) and Yao et al. (2017).
It gives the image encoder a direct, image-level training signal, which is what a backbone
trained from scratch on a small dataset lacks; the decoder is unchanged.

With ``class_loss > 0`` (and batches ``(images, captions, classes)``: ``dataset.classes``) a
linear head on the same spatial mean predicts the image's scene class (softmax cross-entropy):
the auxiliary classification objective of multi-task captioning models (e.g. Zhao et al., 2019,
for remote sensing), the same kind of image-level signal with one clean label per image.

After ``enable_self_critical`` the training step is self-critical sequence training (Rennie
et al., 2017): K captions are sampled per image, each is rewarded with its CIDEr-D against the
image's references, and the gradient raises the log-likelihood of samples that beat the mean of
the image's other samples (Luo, 2020). ``loss``/``accuracy`` stay the teacher-forced figures on
the references (each image's first), for continuity in ``history.csv``; ``reward`` is the mean
sampled CIDEr-D.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import keras
import tensorflow as tf
from keras import ops

from captioning.models.decoder import Decoder
from captioning.models.decoding import Generator


def masked_loss_and_accuracy(targets, logits, label_smoothing=0.0):
    """Mean cross-entropy and token accuracy over positions whose target is not padding (0).

    targets: (...,) int ids; logits: (..., V). Returns (loss, accuracy, number of real tokens).
    """
    mask = ops.cast(ops.not_equal(targets, 0), "float32")
    n = ops.maximum(ops.sum(mask), 1.0)
    logits = ops.cast(logits, "float32")
    if label_smoothing:
        v = ops.shape(logits)[-1]
        onehot = (ops.one_hot(targets, v) * (1.0 - label_smoothing)
                  + label_smoothing / ops.cast(v, "float32"))
        ce = keras.losses.categorical_crossentropy(onehot, logits, from_logits=True)
    else:
        ce = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    hit = ops.cast(ops.equal(ops.cast(ops.argmax(logits, -1), targets.dtype), targets), "float32")
    return ops.sum(ce * mask) / n, ops.sum(hit * mask) / n, ops.sum(mask)


def length_groups(ids, end_id: int, k: int):
    """(B*K, T) samples, an image's K together -> two (image indices, length) groups: the half of
    the images whose longest sample (through its first end token) is shortest, with that half's
    longest, then the other half with theirs. The self-critical step runs the decoder on each
    group cut to its own length: samples are mostly much shorter than a batch's longest, which
    would otherwise set every row's length (docs/experiments/speed.md). The groups keep an
    image's K rows together, so the decoder still shares each image's memory."""
    n, t = tf.shape(ids)[0], tf.shape(ids)[1]
    b = n // k
    hit = tf.cast(ids == end_id, "int32")
    through_end = tf.where(tf.reduce_any(hit > 0, axis=1),
                           tf.argmax(hit, axis=1, output_type="int32") + 1, t)         # (N,)
    per_image = tf.reduce_max(tf.reshape(through_end, (b, k)), axis=1)                # (B,)
    order = tf.argsort(per_image, stable=True)
    groups = []
    for images in (order[:b // 2], order[b // 2:]):                  # the first is empty if B=1
        # At least 2 positions (an input and a target), also for an empty group.
        groups.append((images, tf.maximum(tf.reduce_max(tf.gather(per_image, images)), 2)))
    return groups


def leave_one_out_advantage(rewards, k: int):
    """(B*K,) rewards, an image's K samples together -> (B*K,) reward minus the mean of the
    image's other K-1 samples (Luo, 2020, "A better variant of self-critical sequence training":
    no extra greedy decode, and unbiased)."""
    r = ops.reshape(rewards, (-1, k))
    baseline = (ops.sum(r, axis=1, keepdims=True) - r) / float(k - 1)
    return ops.reshape(r - baseline, (-1,))


def replica_weighted(objective, count):
    """Under tf.distribute each replica sees part of the batch and the gradients are summed:
    weight this replica's per-token mean by its share of all ``count`` tokens, so the summed
    gradient is the gradient of the global per-token mean (what one device computes). One
    device: ``objective`` as it is."""
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
        return objective * count / tf.maximum(total, 1.0)
    return objective


@dataclass(frozen=True)
class SelfCriticalSettings:
    """How the self-critical train step samples and rewards (``trainer.scst_*``)."""

    reward: Callable          # (samples (B*K, L), captions (B, C, L)) -> (B*K,) float32
    samples: int              # K captions per image (>= 2: each one's baseline is the others')
    start_id: int
    end_id: int
    max_len: int
    seed: int | None = None
    # XLA for the sampling loop alone (the step cannot be: the reward is Python); it draws the
    # samples faster (docs/experiments/speed.md)
    jit_compile: bool = False

    def __post_init__(self):
        if self.samples < 2:
            raise ValueError(f"self-critical training needs >= 2 samples per image "
                             f"(the baseline is the mean of the others). "
                             f"Received: samples={self.samples}")


@dataclass
class SelfCriticalStep:
    """What the self-critical train step uses: its settings, the sampler (a top-k Generator
    over the whole vocabulary, i.e. plain sampling) and its compiled K-sample draw."""

    settings: SelfCriticalSettings
    sampler: object           # models.decoding.Generator
    sample: Callable          # memory (B, S, D) -> ids (B*K, L), an image's rows together


@keras.saving.register_keras_serializable("captioning")
class Captioner(keras.Model):
    """images -> backbone -> encoder -> memory (B, S, D) -> ``decoder`` (a ``Decoder``)."""

    def __init__(self, backbone, encoder, decoder: Decoder, augmentation=(), blind=False,
                 label_smoothing=0.0, word_loss=0.0, mixup=0.0, seed=None, class_loss=0.0,
                 num_classes=0, **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.encoder, self.decoder = backbone, encoder, decoder
        self.augmentation = list(augmentation)
        self.blind = blind             # feed zeros instead of the image: the image-blind baseline
        self.label_smoothing = label_smoothing
        self.word_loss_weight = float(word_loss)
        self.mixup = float(mixup)      # Beta(alpha, alpha) mixing of training images (0 = off)
        self.seed = seed
        self.mixup_seed = keras.random.SeedGenerator(seed) if self.mixup else None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.acc_tracker = keras.metrics.Mean(name="accuracy")
        self.word_tracker = keras.metrics.Mean(name="word_loss") if self.word_loss_weight else None
        # Vocabulary-sized multi-label head on the pooled image memory (only with word_loss > 0).
        self.word_head = None
        if self.word_loss_weight:
            self.word_head = keras.layers.Dense(decoder.vocab_size, name="word_head")
            self.word_head.build((None, encoder.dim))
        # Scene-class head on the pooled image memory (only with class_loss > 0).
        self.class_loss_weight, self.class_head = float(class_loss), None
        self.class_trackers = ()
        if self.class_loss_weight:
            if num_classes < 2:
                raise ValueError(f"class_loss needs num_classes >= 2. Received: {num_classes}")
            self.class_head = keras.layers.Dense(num_classes, name="class_head")
            self.class_head.build((None, encoder.dim))
            self.class_trackers = (keras.metrics.Mean(name="class_loss"),
                                   keras.metrics.Mean(name="class_accuracy"))
        self.self_critical = None                  # set by enable_self_critical
        self.reward_tracker = keras.metrics.Mean(name="reward")   # reported only then

    def get_config(self):
        """The constructor's arguments: plain values as they are, the backbone, encoder, decoder
        and augmentation layers as their Keras-serialised configs (JSON-serialisable).

        For inspection and records, not for rebuilding: models are built from the run's config
        by ``build.build_model`` and then load their weights (see ``from_config``)."""
        serialize = keras.saving.serialize_keras_object
        return {**super().get_config(),
                "backbone": serialize(self.backbone), "encoder": serialize(self.encoder),
                "decoder": serialize(self.decoder),
                "augmentation": [serialize(layer) for layer in self.augmentation],
                "blind": self.blind, "label_smoothing": self.label_smoothing,
                "word_loss": self.word_loss_weight, "mixup": self.mixup, "seed": self.seed,
                "class_loss": self.class_loss_weight,
                "num_classes": self.class_head.units if self.class_head is not None else 0}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # The backbone's preprocessing is a Lambda around a plain function, which Keras cannot
        # revive by name, so a Captioner is rebuilt from the Hydra config, not from this one.
        raise NotImplementedError("A Captioner is rebuilt with captioning.models.build.build_model"
                                  "(cfg, vocab_size) and load_weights, not from get_config().")

    def enable_self_critical(self, settings: SelfCriticalSettings):
        """Switch ``fit`` to self-critical training with ``settings``."""
        sampler = Generator(self, settings.start_id, settings.end_id, settings.max_len,
                            method="top_k", k=self.decoder.vocab_size, seed=settings.seed)
        sample = tf.function(partial(sampler.generate, repeats=settings.samples),
                             jit_compile=settings.jit_compile)
        self.self_critical = SelfCriticalStep(settings, sampler, sample)
        # The reward is Python (numpy_function): XLA cannot compile the step.
        self.jit_compile = False
        self.train_function = None           # Keras's cue to trace the new train_step on fit

    def build(self, input_shape=None):
        # Sublayers build on the first call (build_model calls the model once on zeros).
        self.built = True

    @property
    def metrics(self):
        extra = [self.word_tracker] if self.word_tracker is not None else []
        extra += list(self.class_trackers)
        if self.self_critical is not None:
            extra.append(self.reward_tracker)
        return [self.loss_tracker, self.acc_tracker, *extra]

    def encode(self, inputs, training=False):
        """images (B, H, W, 3) float 0..255, or cached backbone tokens (B, S, C)
        -> memory (B, S, D)."""
        if len(inputs.shape) == 3:         # features from the cache: the backbone already ran
            return self.encoder(inputs, training=training)
        images = inputs
        if training:
            for layer in self.augmentation:
                images = layer(images, training=True)
        if self.blind:
            images = ops.zeros_like(images)
        # A frozen backbone runs in inference mode even in a training step. Keras 3 lets the outer
        # call's training=True override the training=False recorded inside build_backbone's graph,
        # which turned on EfficientNet's stochastic-depth dropout: noisy features from frozen
        # weights, unlike the feature cache. BatchNorm already follows `trainable`; Dropout does
        # not.
        backbone_training = training and bool(self.backbone.trainable_weights)
        return self.encoder(self.backbone(images, training=backbone_training), training=training)

    def call(self, inputs, training=False):
        """(images, tokens (B, T)) -> logits (B, T, V). For summaries and tests; training uses
        ``caption_loss`` which projects only real tokens."""
        images, tokens = inputs
        hidden = self.decoder(tokens, self.encode(images, training), training=training)
        return self.decoder.project(hidden)

    def caption_loss(self, images, captions, training=False):
        """Loss, accuracy and token count for (B, H, W, 3) images and (B, C, L) captions."""
        return self.decode_loss(self.encode(images, training), captions, training)

    def word_loss(self, memory, captions):
        """Multi-label cross-entropy of the words in each image's captions, (B, S, D) memory and
        (B, C, L) ids -> scalar. Per image: summed over the vocabulary, divided by the number of
        words present, so it is on the scale of a per-token cross-entropy."""
        logits = ops.cast(self.word_head(ops.mean(memory, axis=1)), "float32")       # (B, V)
        v = ops.shape(logits)[-1]
        words = ops.reshape(captions, (ops.shape(captions)[0], -1))
        present = ops.max(ops.one_hot(words, v), axis=1)
        # Id 0 is padding.
        present = ops.concatenate([ops.zeros_like(present[:, :1]), present[:, 1:]], axis=1)
        bce = ops.sum(ops.binary_crossentropy(present, logits, from_logits=True), axis=-1)
        return ops.mean(bce / ops.maximum(ops.sum(present, axis=-1), 1.0))

    def class_loss(self, memory, classes):
        """Softmax cross-entropy and accuracy of the scene class, (B, S, D) memory and (B,)
        class ids -> two scalars."""
        logits = ops.cast(self.class_head(ops.mean(memory, axis=1)), "float32")    # (B, K)
        ce = keras.losses.sparse_categorical_crossentropy(classes, logits, from_logits=True)
        hit = ops.cast(ops.equal(ops.cast(ops.argmax(logits, -1), "int32"),
                                 ops.cast(classes, "int32")), "float32")
        return ops.mean(ce), ops.mean(hit)

    def _track_classes(self, memory, classes):
        """The class loss (for the objective) after recording it and its accuracy; 0 when off
        or the batch has no classes."""
        if self.class_head is None or not classes:
            return 0.0
        ce, acc = self.class_loss(memory, classes[0])
        self.class_trackers[0].update_state(ce)
        self.class_trackers[1].update_state(acc)
        return ce

    def decode_loss(self, memory, captions, training=False):
        """Teacher-forced loss, accuracy and token count of (B, C, L) captions
        on (B, S, D) memory."""
        c, length = captions.shape[1], ops.shape(captions)[2]
        if c is None:                                                    # C unknown while tracing
            memory, c = ops.repeat(memory, ops.shape(captions)[1], axis=0), 1
        # (B*C, L), an image's rows together.
        captions = ops.reshape(captions, (-1, length))
        # Cut the batch to its longest caption: positions past it are padding everywhere. Rows of
        # images with fewer than C captions are all padding: they cost a little compute and
        # nothing else (their targets are masked), and keep the (B, C) layout the decoder
        # uses to share each image's memory between its captions.
        longest = ops.max(ops.sum(ops.cast(captions > 0, "int32"), axis=1))
        captions = captions[:, :longest]
        inputs, targets = captions[:, :-1], captions[:, 1:]              # teacher forcing
        # Project onto the vocabulary only where there is a real target token: padding is most
        # positions, and the (D x V) projection is the largest matmul of the decoder.
        real = targets > 0
        if self.decoder.supports_packed:
            # The Transformer also leaves the padding out of its blocks (see call_packed).
            hidden = self.decoder.call_packed(inputs, memory, real, repeats=c,
                                              training=training)          # (n_tokens, D)
        else:
            hidden = tf.boolean_mask(
                self.decoder(inputs, memory, training=training, repeats=c), real)
        logits = self.decoder.project(hidden)                            # (n_tokens, V)
        return masked_loss_and_accuracy(tf.boolean_mask(targets, real), logits,
                                        self.label_smoothing)

    def train_step(self, data):
        if self.self_critical is not None:
            return self._self_critical_step(data)
        images, captions, *classes = data
        if self.mixup:
            images, (captions_b, *classes_b), lam = self._mix(images, captions, *classes)
        with tf.GradientTape() as tape:
            memory = self.encode(images, training=True)                  # (B, S, D), once per image
            loss, acc, n = self.decode_loss(memory, captions, training=True)
            if self.mixup:
                # The mixed image is trained towards both images' captions, in proportion.
                loss_b, _, _ = self.decode_loss(memory, captions_b, training=True)
                loss = lam * loss + (1.0 - lam) * loss_b
            objective = loss
            if self.word_head is not None:
                words = self.word_loss(memory, captions)
                objective = loss + self.word_loss_weight * words
            classes_loss = self._track_classes(memory, classes)
            if self.mixup and self.class_head is not None:
                classes_loss = lam * classes_loss + (1.0 - lam) * self.class_loss(
                    memory, classes_b[0])[0]
            objective += self.class_loss_weight * classes_loss
            objective = replica_weighted(objective, n)
            scaled = self.optimizer.scale_loss(objective)               # mixed precision
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss, sample_weight=n)          # token-weighted epoch means
        self.acc_tracker.update_state(acc, sample_weight=n)
        if self.word_head is not None:
            self.word_tracker.update_state(words)
        return {m.name: m.result() for m in self.metrics}

    def _mix(self, images, *targets):
        """mixup (Zhang et al., 2018) for captioning: each image is blended with another of the
        batch, x = lam * x_i + (1 - lam) * x_j with one lam ~ Beta(alpha, alpha) per batch; the
        loss is the same blend of the two images' caption losses.
        Returns (images, [each of ``targets`` (captions, classes) of image j], lam)."""
        lam = keras.random.beta((), self.mixup, self.mixup, seed=self.mixup_seed)
        perm = keras.random.shuffle(ops.arange(ops.shape(images)[0]), seed=self.mixup_seed)
        other = ops.take(images, perm, axis=0)
        mixed = ops.cast(lam, images.dtype) * images + ops.cast(1.0 - lam, images.dtype) * other
        return mixed, [ops.take(t, perm, axis=0) for t in targets], ops.cast(lam, "float32")

    def _self_critical_step(self, data):
        images, captions, *_ = data
        sc = self.self_critical
        k, end_id = sc.settings.samples, sc.settings.end_id
        with tf.GradientTape() as tape:
            memory = self.encode(images, training=True)                  # (B, S, D)
            with tape.stop_recording():
                # K samples per image, an image's rows together (what repeats=K expects below).
                ids = sc.sample(tf.stop_gradient(memory))                          # (B*K, L)
                rewards = tf.numpy_function(sc.settings.reward, [ids, captions], tf.float32,
                                            stateful=False)
                advantage = leave_one_out_advantage(rewards, k)                     # (B*K,)
                # For the logs only: the teacher-forced loss on each image's first reference,
                # an unbiased estimate of the loss on all of them at a fifth of the cost.
                loss, acc, n = self.decode_loss(memory, captions[:, :1], training=False)
            total, count = self._sample_log_likelihood(memory, ids, advantage, k, end_id)
            objective = replica_weighted(-total / tf.maximum(count, 1.0), count)
            scaled = self.optimizer.scale_loss(objective)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        self.loss_tracker.update_state(loss, sample_weight=n)
        self.acc_tracker.update_state(acc, sample_weight=n)
        self.reward_tracker.update_state(tf.reduce_mean(rewards))
        # The class head has no part in the self-critical objective: its figures stay out.
        return {m.name: m.result() for m in self.metrics if m not in self.class_trackers}

    def _sample_log_likelihood(self, memory, ids, advantage, k: int, end_id: int):
        """The advantage-weighted log-likelihood of the samples (summed) and their token count.
        A sample's tokens are those up to and including its first end token. The Transformer
        runs on those tokens only (``call_packed``: one long sample would otherwise set every
        row's length; docs/experiments/speed.md); other decoders run on two groups of images,
        each cut to its own longest sample (``length_groups``). The same sums either way."""
        if self.decoder.supports_packed:
            inputs, targets = ids[:, :-1], ids[:, 1:]
            real = self._sampled_tokens(targets, end_id)
            hidden = self.decoder.call_packed(inputs, memory, real, repeats=k, training=True)
            return self._weighted_log_likelihood(hidden, targets, real, advantage)
        b, t = tf.shape(memory)[0], tf.shape(ids)[1]
        ids, advantage = tf.reshape(ids, (b, k, t)), tf.reshape(advantage, (b, k))
        total, count = tf.constant(0.0), tf.constant(0.0)
        for images, length in length_groups(tf.reshape(ids, (-1, t)), end_id, k):
            rows = tf.reshape(tf.gather(ids, images), (-1, t))[:, :length]
            inputs, targets = rows[:, :-1], rows[:, 1:]
            hidden = self.decoder(inputs, tf.gather(memory, images), training=True,
                                  repeats=k)                                        # (n, T', D)
            real = self._sampled_tokens(targets, end_id)
            part = self._weighted_log_likelihood(
                tf.boolean_mask(hidden, real), targets, real,
                tf.reshape(tf.gather(advantage, images), (-1,)))
            total, count = total + part[0], count + part[1]
        return total, count

    @staticmethod
    def _sampled_tokens(targets, end_id: int):
        """(n, T) sampled targets -> bool, True through each row's first end token."""
        ended = tf.cumsum(tf.cast(targets == end_id, "int32"), axis=1, exclusive=True) > 0
        return tf.logical_and(tf.logical_not(ended), targets > 0)

    def _weighted_log_likelihood(self, hidden, targets, real, advantage):
        """hidden (n_real, D) of the ``real`` (n, T) positions, advantage (n,) ->
        (sum of advantage * log p(target), n_real). Only the real tokens are projected onto the
        vocabulary (the largest matmul), as in decode_loss; padding (id 0) is never a token."""
        logits = ops.cast(self.decoder.project(hidden), "float32")
        logp = tf.nn.log_softmax(tf.where(tf.range(tf.shape(logits)[-1]) == 0, -1e9, logits))
        token_logp = tf.gather(logp, tf.boolean_mask(targets, real), batch_dims=1)
        weight = tf.boolean_mask(tf.broadcast_to(tf.reshape(advantage, (-1, 1)),
                                                 tf.shape(targets)), real)
        return tf.reduce_sum(weight * token_logp), tf.reduce_sum(tf.cast(real, "float32"))

    def test_step(self, data):
        images, captions, *classes = data
        memory = self.encode(images, training=False)
        self._track_classes(memory, classes)
        loss, acc, n = self.decode_loss(memory, captions, training=False)
        self.loss_tracker.update_state(loss, sample_weight=n)
        self.acc_tracker.update_state(acc, sample_weight=n)
        if self.word_head is not None:
            self.word_tracker.update_state(self.word_loss(memory, captions))
        return {m.name: m.result() for m in self.metrics if m is not self.reward_tracker}
