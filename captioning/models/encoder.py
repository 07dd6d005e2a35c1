"""The image encoder between the backbone and a decoder (recipe A's encoder block)."""

from __future__ import annotations

import keras
from keras import layers


@keras.saving.register_keras_serializable("captioning")
class ImageEncoder(layers.Layer):
    """(B, S, C) backbone tokens -> (B, S, D) memory for the decoder.

    [LayerNorm] -> Dense(D, relu) -> ``num_layers`` x (self-attention + residual + LayerNorm).
    Recipe A: input_norm, 1 layer, 1 head. Recipe B: Dense(512, relu) only (0 layers).
    """

    def __init__(self, dim, num_layers=1, num_heads=1, dropout=0.0, input_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_layers, self.num_heads = dim, num_layers, num_heads
        self.dropout, self.input_norm = dropout, input_norm

    def build(self, input_shape):
        self.norm_in = None
        if self.input_norm:
            self.norm_in = layers.LayerNormalization(epsilon=1e-5, name="norm_in")
        if self.norm_in is not None:
            self.norm_in.build(input_shape)
        self.proj = layers.Dense(self.dim, activation="relu", name="proj")
        self.proj.build(input_shape)
        seq = (input_shape[0], input_shape[1], self.dim)
        self.attn, self.norms = [], []
        for i in range(self.num_layers):
            attn = layers.MultiHeadAttention(self.num_heads, self.dim // self.num_heads,
                                             dropout=self.dropout, name=f"attn{i}")
            attn.build(seq, seq)
            norm = layers.LayerNormalization(epsilon=1e-5, name=f"norm{i}")
            norm.build(seq)
            self.attn.append(attn)
            self.norms.append(norm)
        self.built = True

    def call(self, tokens, training=None):
        x = self.norm_in(tokens) if self.norm_in is not None else tokens
        x = self.proj(x)                                         # (B, S, D)
        for attn, norm in zip(self.attn, self.norms, strict=True):
            x = norm(x + attn(x, x, training=training))
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "dropout": self.dropout, "input_norm": self.input_norm}
