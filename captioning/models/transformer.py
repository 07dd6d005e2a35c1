"""Recipe A's Transformer decoder, on keras-hub's cached ``TransformerDecoder`` blocks
(``DecoderBlock``: keras-hub's block with recipe A's head width and feed-forward dropout, and
its cross-attention weights on request).

Token embedding scaled by sqrt(D) plus learned positions; ``num_layers`` blocks of causal
self-attention, cross-attention to the image memory and a feed-forward network; dropout;
a projection onto the vocabulary. Incremental decoding keeps each block's self-attention
keys/values and the (fixed) cross-attention keys/values in a cache, so a step costs one
token's work instead of a re-run over the prefix.
"""

from __future__ import annotations

import math

import keras
import keras_hub
import tensorflow as tf
from keras import layers, ops

from captioning.models.blocks import DecoderBlock


@keras.saving.register_keras_serializable("captioning")
class TransformerDecoder(layers.Layer):
    """A ``captioning.models.decoder.Decoder``. Cache: ``memory`` (B, S, D); ``self``, per block,
    the self-attention (keys, values), each (N, heads, max_len, key_dim), which differ between
    beams; ``cross``, per block, the cross-attention (keys, values) of the memory, each
    (B, heads, S, key_dim), once per image (``shared_state``; see ``DecoderBlock.step``).
    ``key_dim`` is each head's width (None: dim / heads); ``ff_dropout`` the dropout after the
    feed-forward ReLU (see ``DecoderBlock``). The attention maps (``return_attention``) are one
    block's cross-attention weights averaged over its heads, the last block's by default.
    """

    beam_state = ("self",)       # cache entries beam search reorders with the beams
    shared_state = ("memory", "cross")   # per image, shared by its beams or samples
    supports_packed = True       # call_packed: the blocks run on the real tokens only

    def __init__(self, vocab_size, max_len, dim=512, num_layers=1, num_heads=2, ff_dim=512,
                 dropout=0.1, output_dropout=0.5, key_dim=None, ff_dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.max_len, self.dim = vocab_size, max_len, dim
        self.num_layers, self.num_heads, self.ff_dim = num_layers, num_heads, ff_dim
        self.dropout, self.output_dropout = dropout, output_dropout
        self.key_dim, self.ff_dropout = key_dim, ff_dropout
        if num_heads < 1 or (key_dim is None and dim % num_heads):
            raise ValueError(f"num_heads must be >= 1 and divide dim. "
                             f"Received: dim={dim}, num_heads={num_heads}")
        self.head_dim = key_dim or dim // num_heads

    def build(self, input_shape=None):
        self.embed = layers.Embedding(self.vocab_size, self.dim, name="token_embedding")
        self.embed.build((None, None))
        self.positions = keras_hub.layers.PositionEmbedding(self.max_len, name="position_embedding")
        self.positions.build((None, self.max_len, self.dim))
        self.blocks = []
        for i in range(self.num_layers):
            block = DecoderBlock(
                intermediate_dim=self.ff_dim, num_heads=self.num_heads, dropout=self.dropout,
                activation="relu", layer_norm_epsilon=1e-5, key_dim=self.key_dim,
                ff_dropout=self.ff_dropout, name=f"block{i}")
            block.build((None, None, self.dim), (None, None, self.dim))
            self.blocks.append(block)
        self.out_dropout = layers.Dropout(self.output_dropout)
        self.head = layers.Dense(self.vocab_size, name="vocab_head")
        self.head.build((None, self.dim))
        self.built = True

    def _embed(self, tokens, start_index=0):
        x = self.embed(tokens) * ops.cast(math.sqrt(self.dim), self.compute_dtype)
        return x + self.positions(x, start_index=start_index)

    def _block_index(self, attention_block: int) -> int:
        if not -self.num_layers <= attention_block < self.num_layers:
            raise ValueError(f"attention_block must name one of the {self.num_layers} blocks "
                             f"(0 .. {self.num_layers - 1}, or -1 for the last). "
                             f"Received: {attention_block}")
        return attention_block % self.num_layers

    def call(self, tokens, memory, training=None, repeats=1, return_attention=False,
             attention_block=-1):
        """tokens (N, T) ids, memory (N / repeats, S, D) -> hidden states (N, T, D) (before the
        vocabulary head). With ``repeats=C``, memory row i serves token rows i*C .. i*C+C-1 (an
        image's C captions). ``return_attention``: (hidden, attention (N, T, S)), block
        ``attention_block``'s cross-attention averaged over heads (repeats must be 1)."""
        x = self._embed(tokens)
        if return_attention:
            if repeats != 1:
                raise ValueError("return_attention needs one memory row per token row "
                                 f"(repeats=1). Received: repeats={repeats}")
            chosen, attention = self._block_index(attention_block), None
            for i, block in enumerate(self.blocks):
                if i == chosen:
                    x, scores = block(x, memory, training=training, return_attention=True)
                    attention = ops.mean(scores, axis=1)                      # (N, T, S)
                else:
                    x = block(x, memory, training=training)
            return self.out_dropout(x, training=training), attention
        if repeats == 1:
            for block in self.blocks:
                x = block(x, memory, training=training)       # causal mask is the default
            return self.out_dropout(x, training=training)
        # Cross-attention keys/values depend on the image only, and repeating the memory C times
        # projects them C times: most of a one-block decoder's FLOPs. Instead an image's C
        # captions go through the blocks as one (C*T)-long row against its one memory row, with a
        # block-diagonal mask (intersected with the blocks' causal mask) so that each caption's
        # self-attention sees only its own earlier tokens: the same function, K/V projected once.
        n, t = ops.shape(tokens)[0], ops.shape(tokens)[1]
        x = ops.reshape(x, (n // repeats, repeats * t, self.dim))
        caption = ops.repeat(ops.arange(repeats), t)                       # (C*T,) which caption
        same = ops.expand_dims(caption, 1) == ops.expand_dims(caption, 0)  # (C*T, C*T)
        mask = ops.broadcast_to(same[None], (n // repeats, repeats * t, repeats * t))
        for block in self.blocks:
            x = block(x, memory, decoder_attention_mask=mask, training=training)
        return self.out_dropout(ops.reshape(x, (n, t, self.dim)), training=training)

    def call_packed(self, tokens, memory, real, repeats=1, training=None):
        """The hidden states of the ``real`` positions only: tokens (N, T) ids, memory
        (N / repeats, S, D), real (N, T) bool, each row's wanted positions a prefix of it (the
        teacher-forced ones with a real target) -> (n_real, D), in ``tf.boolean_mask(hidden,
        real)``'s order, equal to that of ``call`` (same weights, same function).

        ``call`` with repeats runs an image's C captions as one C*T row, each caption padded to
        the batch's longest (T): captions are mostly much shorter than the longest, so much of
        the rows' projections and feed-forward work, most of a block's arithmetic, is padding
        (figures: docs/experiments/speed.md). Here those run on the real tokens only
        (``DecoderBlock.call_packed``). The attention runs on a packed layout: an image's
        captions end to end without their padding, each with its own positions and a
        block-diagonal causal mask, so each caption still attends to its own earlier tokens
        only. Our own code: keras-hub's decoder takes a padded batch and a mask, not ragged
        rows."""
        n = tf.shape(tokens)[0]
        b = n // repeats
        real = tf.cast(real, "bool")
        # A real position's slot in its image's packed row: the image's earlier captions'
        # lengths, plus its rank in its own row.
        lengths = tf.reduce_sum(tf.cast(real, "int32"), axis=1)                    # (N,)
        per_image = tf.reshape(lengths, (b, repeats))
        offsets = tf.reshape(tf.cumsum(per_image, axis=1, exclusive=True), (-1,))  # (N,)
        packed_len = tf.maximum(tf.reduce_max(tf.reduce_sum(per_image, axis=1)), 1)
        where = tf.where(real)                                          # (n_real, 2): row, pos
        row, pos = tf.cast(where[:, 0], "int32"), tf.cast(where[:, 1], "int32")
        rank = tf.gather_nd(tf.cumsum(tf.cast(real, "int32"), axis=1) - 1, where)
        slots = tf.stack([row // repeats, tf.gather(offsets, row) + rank], axis=1)   # (n_real, 2)
        x = self.embed(tf.gather_nd(tokens, where)) * ops.cast(math.sqrt(self.dim),
                                                               self.compute_dtype)
        x = x + ops.cast(ops.take(self.positions.position_embeddings, pos, axis=0), x.dtype)
        # Caption 1..C of its image; 0 is padding (it attends to padding only).
        segment = tf.scatter_nd(slots, row % repeats + 1, (b, packed_len))     # (B, P)
        slot = tf.range(packed_len)
        mask = tf.logical_and(segment[:, :, None] == segment[:, None, :],
                              slot[:, None] >= slot[None, :])                # (B, P, P) causal
        x = x[None]                                                          # (1, n_real, D)
        for block in self.blocks:
            x = block.call_packed(x, slots, (b, packed_len), mask, memory, training=training)
        return self.out_dropout(x[0], training=training)

    def project(self, hidden):
        """(..., D) -> (..., V) logits."""
        return self.head(hidden)

    def init_cache(self, memory, max_len, repeats=1):
        """memory (B, S, D) -> the cache for B * ``repeats`` rows (an image's rows together):
        per block, the self-attention keys and values (empty), each (B*R, heads, max_len,
        head_dim), and the cross-attention ones, computed once per image, (B, heads, S,
        head_dim)."""
        if not self.built:
            self.build()
        rows = ops.shape(memory)[0] * repeats
        empty = ops.zeros((rows, self.num_heads, max_len, self.head_dim), self.compute_dtype)
        return {"memory": memory, "self": [(empty, empty) for _ in self.blocks],
                "cross": [block.cross_keys_values(memory) for block in self.blocks]}

    def step(self, token, cache, index, return_attention=False, attention_block=-1):
        """token (N,) at position ``index`` -> logits (N, V) for position index + 1, new cache;
        ``return_attention``: and the chosen block's cross-attention over the memory (N, S).
        N may be a multiple R of the cache's images (``shared_state``): an image's R rows
        together share its cross-attention keys/values."""
        x = self._embed(token[:, None], start_index=index)    # (N, 1, D)
        new_self, attention = [], None
        chosen = self._block_index(attention_block) if return_attention else None
        blocks = zip(self.blocks, cache["self"], cache["cross"], strict=True)
        for i, (block, self_kv, cross_kv) in enumerate(blocks):
            out = block.step(x, self_kv, index, cross_kv, return_attention=i == chosen)
            x = out[0]
            if i == chosen:
                attention = ops.mean(out[2], axis=1)[:, 0]                     # (N, S)
            new_self.append(out[1])
        logits = self.head(x[:, 0])
        cache = {"memory": cache["memory"], "self": new_self, "cross": cache["cross"]}
        return (logits, cache, attention) if return_attention else (logits, cache)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "max_len": self.max_len,
                "dim": self.dim, "num_layers": self.num_layers, "num_heads": self.num_heads,
                "ff_dim": self.ff_dim, "dropout": self.dropout,
                "output_dropout": self.output_dropout, "key_dim": self.key_dim,
                "ff_dropout": self.ff_dropout}
