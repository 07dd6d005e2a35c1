"""Recipe B's decoder: Embedding -> GRU -> dot-product attention over the image tokens (GRU
output as query) -> residual add -> LayerNorm -> vocabulary. Incremental decoding carries the
GRU state: one step is one GRU cell update and one attention read."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable("captioning")
class GRUDecoder(layers.Layer):
    """A ``captioning.models.decoder.Decoder``. Cache: ``memory`` (B, S, D) and ``state``, the
    GRU state (B, D), which differs between beams. Its attention maps (``return_attention``) are
    the dot-product attention weights over the image tokens."""

    beam_state = ("state",)      # cache entries beam search reorders with the beams
    shared_state = ()            # no entry kept once per image: memory is repeated per row
    supports_packed = False      # no call_packed: the loss masks a full padded pass

    def __init__(self, vocab_size, max_len, dim=512, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.max_len, self.dim, self.dropout = vocab_size, max_len, dim, dropout

    def build(self, input_shape=None):
        self.embed = layers.Embedding(self.vocab_size, self.dim, name="token_embedding")
        self.embed.build((None, None))
        self.gru = layers.GRU(self.dim, return_sequences=True, return_state=True, name="gru")
        self.gru.build((None, None, self.dim))
        self.attention = layers.Attention(name="attention")     # dot-product (Luong), no scale
        self.attention.build([(None, None, self.dim), (None, None, self.dim)])
        self.norm = layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.norm.build((None, None, self.dim))
        self.drop = layers.Dropout(self.dropout)
        self.head = layers.Dense(self.vocab_size, name="vocab_head")
        self.head.build((None, self.dim))
        self.built = True

    def _decode(self, tokens, memory, state, training=None, repeats=1, return_attention=False):
        x = self.embed(tokens)                                   # (N, T, D)
        out, state = self.gru(x, initial_state=state, training=training)
        if repeats > 1:
            # This attention projects nothing (dot product with the raw memory), so there is no
            # per-image work to share between captions: repeating the memory measured faster
            # than one (B, C*T) query block per image (docs/experiments/speed.md).
            memory = ops.repeat(memory, repeats, axis=0)
        # (N, T, D): query = GRU output; the weights (N, T, S) only when asked for.
        context = self.attention([out, memory], return_attention_scores=return_attention)
        if return_attention:
            context, weights = context
        hidden = self.drop(self.norm(out + context), training=training)
        return (hidden, state, weights) if return_attention else (hidden, state)

    def call(self, tokens, memory, training=None, repeats=1, return_attention=False,
             attention_block=-1):
        """tokens (N, T), memory (N / repeats, S, D) -> hidden (N, T, D), from a zero state. With
        ``repeats=C``, memory row i serves token rows i*C .. i*C+C-1 (an image's C captions).
        ``return_attention``: (hidden, attention weights (N, T, S)); ``attention_block`` is
        accepted for the Decoder interface (the GRU decoder has one attention)."""
        state = ops.zeros((ops.shape(tokens)[0], self.dim), self.compute_dtype)
        out = self._decode(tokens, memory, state, training, repeats, return_attention)
        return (out[0], out[2]) if return_attention else out[0]

    def project(self, hidden):
        return self.head(hidden)

    def init_cache(self, memory, max_len):
        state = ops.zeros((ops.shape(memory)[0], self.dim), self.compute_dtype)
        return {"memory": memory, "state": state}

    def step(self, token, cache, index, return_attention=False, attention_block=-1):
        out = self._decode(token[:, None], cache["memory"], cache["state"],
                           return_attention=return_attention)
        result = self.head(out[0][:, 0]), {"memory": cache["memory"], "state": out[1]}
        return (*result, out[2][:, 0]) if return_attention else result

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_len": self.max_len,
                "dim": self.dim, "dropout": self.dropout}
