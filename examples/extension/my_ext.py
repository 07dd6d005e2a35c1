"""Plug-ins for the captioning framework, kept outside its package: one module, one config
folder (conf/). Each piece is named by ``_target_`` in a YAML under conf/:

- ``LSTMDecoder``: a decoder (conf/decoder/lstm.yaml): an LSTM with additive attention over the
  image tokens, implementing the ``Decoder`` interface (captioning/models/decoder.py).
- ``patch_backbone``: a backbone (conf/backbone/patches.yaml): a ViT-style patch embedding that
  gives image tokens (B, S, C) directly, with its own preprocessing.
- ``read_captions_csv``: a reader (conf/dataset/shapes_csv.yaml) for ``captions.csv`` (lines
  ``image,caption``, one per caption) beside ``images/``; the framework then cleans and splits
  the records as it does for every layout.
- ``EpochLog``: a Keras callback (conf/callbacks/with_log.yaml, ``callbacks.extra``) that
  writes one line per epoch.

Importing this module imports Keras (the config check imports it to check the targets).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import keras
from keras import layers, ops

from captioning import DatasetError
from captioning.data.readers.common import (
    Malformed,
    assemble,
    decoding,
    dedupe,
    require_dir,
    text_encoding,
)
from captioning.data.records import DataReport, Record
from captioning.models.backbones import Backbone


@keras.saving.register_keras_serializable("my_ext")
class LSTMDecoder(layers.Layer):
    """Embedding -> LSTM -> additive (Bahdanau) attention over the image tokens, the LSTM
    output as query -> residual add -> LayerNorm -> vocabulary. Its cache: ``memory`` and the
    LSTM state ``h``, ``c`` (which beam search reorders with the beams)."""

    beam_state = ("h", "c")      # cache entries that belong to one hypothesis
    shared_state = ()            # optional capability not declared: memory repeated per row
    supports_packed = False      # optional capability not declared: the loss masks a full pass

    def __init__(self, vocab_size, max_len, dim=128, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.max_len, self.dim, self.dropout = vocab_size, max_len, dim, dropout

    def build(self, input_shape=None):
        self.embed = layers.Embedding(self.vocab_size, self.dim, name="token_embedding")
        self.embed.build((None, None))
        self.lstm = layers.LSTM(self.dim, return_sequences=True, return_state=True, name="lstm")
        self.lstm.build((None, None, self.dim))
        self.attention = layers.AdditiveAttention(name="attention")
        self.attention.build([(None, None, self.dim), (None, None, self.dim)])
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.norm.build((None, None, self.dim))
        self.drop = layers.Dropout(self.dropout)
        self.head = layers.Dense(self.vocab_size, name="vocab_head")
        self.head.build((None, self.dim))
        self.built = True

    def _decode(self, tokens, memory, h, c, training=None, repeats=1, return_attention=False):
        out, h, c = self.lstm(self.embed(tokens), initial_state=[h, c], training=training)
        if repeats > 1:            # memory row i serves token rows i*C .. i*C+C-1
            memory = ops.repeat(memory, repeats, axis=0)
        context = self.attention([out, memory], return_attention_scores=return_attention)
        if return_attention:
            context, weights = context
        hidden = self.drop(self.norm(out + context), training=training)
        return (hidden, h, c, weights) if return_attention else (hidden, h, c)

    def _zeros(self, rows):
        return ops.zeros((rows, self.dim), self.compute_dtype)

    def call(self, tokens, memory, training=None, repeats=1, return_attention=False,
             attention_block=-1):
        rows = ops.shape(tokens)[0]
        out = self._decode(tokens, memory, self._zeros(rows), self._zeros(rows), training,
                           repeats, return_attention)
        return (out[0], out[3]) if return_attention else out[0]

    def project(self, hidden):
        return self.head(hidden)

    def init_cache(self, memory, max_len):
        rows = ops.shape(memory)[0]
        return {"memory": memory, "h": self._zeros(rows), "c": self._zeros(rows)}

    def step(self, token, cache, index, return_attention=False, attention_block=-1):
        out = self._decode(token[:, None], cache["memory"], cache["h"], cache["c"],
                           return_attention=return_attention)
        result = self.head(out[0][:, 0]), {"memory": cache["memory"], "h": out[1], "c": out[2]}
        return (*result, out[3][:, 0]) if return_attention else result

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_len": self.max_len,
                "dim": self.dim, "dropout": self.dropout}


def scale_01(images):
    """The data pipeline's 0..255 -> what the patch embedding expects, 0..1."""
    return images / 255.0


def patch_backbone(name="patches", patch=8, width=64) -> Backbone:
    """Non-overlapping ``patch`` x ``patch`` patches, each embedded to ``width`` channels:
    (B, H, W, 3) -> tokens (B, (H // patch) * (W // patch), width)."""

    def build(input_shape, weights=None):
        inputs = keras.Input(input_shape)
        x = layers.Conv2D(width, patch, strides=patch, name="patchify")(inputs)
        x = layers.LayerNormalization(name="patch_norm")(x)
        tokens = layers.Reshape((x.shape[1] * x.shape[2], width), name="patch_tokens")(x)
        return keras.Model(inputs, tokens, name=name)

    return Backbone(name, build, scale_01, width, default_size=64)


def read_captions_csv(cfg, report: DataReport, captions_file="captions.csv",
                      image_folder="images") -> list[Record]:
    """``<dataset.root>/<captions_file>``: a header ``image,caption``, then one line per
    caption; the images in ``<dataset.root>/<image_folder>/``. The framework's own helpers
    (captioning/data/readers/common.py) apply dataset.encoding, on_malformed and on_missing."""
    root = require_dir(cfg.root, f"{captions_file} and {image_folder}/", "shapes_csv")
    path = root / captions_file
    if not path.is_file():
        raise DatasetError(f"No {captions_file} under {root}: run make_data.py, or set "
                           f"dataset.root to the folder that holds it.")
    bad, captions = Malformed(path, cfg.on_malformed), defaultdict(list)
    encoding = text_encoding(cfg)
    with decoding(path, encoding), open(path, encoding=encoding, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        if [h.strip().lower() for h in header] != ["image", "caption"]:
            raise DatasetError(f"{path}:1 should be the header 'image,caption'. "
                               f"Received: {','.join(header)!r}")
        for line_no, row in enumerate(rows, 2):
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                bad.add(line_no, ",".join(row))
                continue
            captions[Path(row[0].strip()).name].append(row[1].strip())
    bad.report(report)
    return assemble(dedupe(dict(captions), report), root / image_folder, None, cfg.on_missing,
                    report)


class EpochLog(keras.callbacks.Callback):
    """Appends ``epoch <n> <monitor>=<value>`` to ``path`` after every epoch."""

    def __init__(self, path, monitor="val_loss"):
        super().__init__()
        self.path, self.monitor = Path(path), monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"epoch {epoch + 1} {self.monitor}={value}\n")
