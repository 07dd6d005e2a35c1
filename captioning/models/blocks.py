"""The Transformer decoder's block: keras-hub's ``TransformerDecoder`` with recipe A's head width
and feed-forward dropout, and its cross-attention weights on request (``DecoderBlock``)."""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf
from keras import layers


def _attention(block, name, key_dim, dropout):
    """A cached multi-head attention layer of ``block``, created as keras-hub's ``build`` does."""
    return keras_hub.layers.CachedMultiHeadAttention(
        num_heads=block.num_heads, key_dim=key_dim, value_dim=key_dim, dropout=dropout,
        dtype=block.dtype_policy, name=name, **_initializers(block))


def _initializers(block):
    """Fresh copies of the block's initializers, as keras-hub's (private) ``clone_initializer``
    makes them; an unseeded initializer draws its seed when created, so the order of these calls
    is keras-hub's."""
    def clone(init):
        return type(init).from_config(init.get_config())

    return {"kernel_initializer": clone(block.kernel_initializer),
            "bias_initializer": clone(block.bias_initializer)}


@keras.saving.register_keras_serializable("captioning", name="DecoderBlock")
class TransformerDecoder(keras_hub.layers.TransformerDecoder):
    """keras-hub's ``TransformerDecoder`` block (post-norm, with cross-attention), extended.
    Imported as ``DecoderBlock``; its class name stays keras-hub's because Keras keys a list's
    layers in a weights file by class name (``blocks/transformer_decoder/...``).

    We own its ``build`` and ``call`` (keras-hub's block has no slot for the two options below and
    drops the attention scores its attention layers compute), and keep its sublayers, their names
    and their creation order, so with the defaults the weights, their paths in a checkpoint and
    the outputs are those of keras-hub's block (``tests/models/test_decoders.py`` checks it).

    - ``key_dim``: each head's key/value width. keras-hub splits D across the heads
      (``None`` here: D / heads); recipe A's ``MultiHeadAttention(num_heads=2, key_dim=512)``
      gives every head the full 512.
    - ``ff_dropout``: dropout after the feed-forward ReLU, before the second dense layer
      (recipe A's 0.3); 0 adds no layer at all.
    - ``call(..., return_attention=True)`` also returns the cross-attention weights over the
      memory, (B, heads, T, S).
    """

    def __init__(self, *args, key_dim=None, ff_dropout=0.0, **kwargs):
        # keras-hub builds in __init__ when given the shapes (from_config): build after ours.
        shapes = kwargs.pop("decoder_sequence_shape", None), kwargs.pop("encoder_sequence_shape",
                                                                         None)
        super().__init__(*args, **kwargs)
        self.key_dim, self.ff_dropout = key_dim, float(ff_dropout)
        if shapes[0]:
            self.build(*shapes)

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        self._decoder_sequence_shape = decoder_sequence_shape
        self._encoder_sequence_shape = encoder_sequence_shape
        dim = decoder_sequence_shape[-1]
        key_dim = self.key_dim or dim // self.num_heads
        ln = dict(epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy)
        self._self_attention_layer = _attention(self, "self_attention", key_dim, self.dropout)
        self._self_attention_layer.build(decoder_sequence_shape, decoder_sequence_shape)
        self._self_attention_layer_norm = layers.LayerNormalization(
            name="self_attention_layer_norm", **ln)
        self._self_attention_layer_norm.build(decoder_sequence_shape)
        self._self_attention_dropout = layers.Dropout(self.dropout, dtype=self.dtype_policy,
                                                      name="self_attention_dropout")
        self._cross_attention_layer = _attention(self, "cross_attention", key_dim, self.dropout)
        self._cross_attention_layer.build(decoder_sequence_shape, encoder_sequence_shape)
        self._cross_attention_layer_norm = layers.LayerNormalization(
            name="cross_attention_layer_norm", **ln)
        self._cross_attention_layer_norm.build(decoder_sequence_shape)
        self._cross_attention_dropout = layers.Dropout(self.dropout, dtype=self.dtype_policy,
                                                       name="cross_attention_dropout")
        self._feedforward_intermediate_dense = layers.Dense(
            self.intermediate_dim, activation=self.activation, dtype=self.dtype_policy,
            name="feedforward_intermediate_dense", **_initializers(self))
        self._feedforward_intermediate_dense.build(decoder_sequence_shape)
        self._feedforward_output_dense = layers.Dense(
            dim, dtype=self.dtype_policy, name="feedforward_output_dense", **_initializers(self))
        self._feedforward_output_dense.build((*decoder_sequence_shape[:-1], self.intermediate_dim))
        self._feedforward_layer_norm = layers.LayerNormalization(name="feedforward_layer_norm",
                                                                 **ln)
        self._feedforward_layer_norm.build(decoder_sequence_shape)
        self._feedforward_dropout = layers.Dropout(self.dropout, dtype=self.dtype_policy,
                                                   name="feedforward_dropout")
        self._ff_activation_dropout = (layers.Dropout(self.ff_dropout, dtype=self.dtype_policy,
                                                      name="feedforward_activation_dropout")
                                       if self.ff_dropout else None)
        self.built = True

    def call(self, decoder_sequence, encoder_sequence, decoder_attention_mask=None,
             self_attention_cache=None, self_attention_cache_update_index=None,
             cross_attention_cache=None, cross_attention_cache_update_index=None,
             training=None, return_attention=False):
        """keras-hub's post-norm path. Returns ``x``; with caches ``(x, self cache, cross
        cache)``; with ``return_attention`` the cross-attention weights (B, heads, T, S) last."""
        cached = self_attention_cache is not None
        mask = self._compute_self_attention_mask(
            decoder_sequence, None, decoder_attention_mask, True, self_attention_cache,
            self_attention_cache_update_index)
        x = decoder_sequence
        out = self._self_attention_layer(
            query=x, value=x, attention_mask=mask, cache=self_attention_cache,
            cache_update_index=self_attention_cache_update_index, training=training)
        if cached:
            out, self_attention_cache = out
        x = self._self_attention_layer_norm(self._self_attention_dropout(out, training=training)
                                            + x)
        out = self._cross_attention_layer(
            query=x, value=encoder_sequence, cache=cross_attention_cache,
            cache_update_index=cross_attention_cache_update_index,
            return_attention_scores=return_attention, training=training)
        if return_attention:
            out, scores, *rest = out
        elif cached:
            out, *rest = out
        if cached:
            cross_attention_cache = rest[0]
        x = self._cross_attention_layer_norm(self._cross_attention_dropout(out, training=training)
                                             + x)
        x = self._feed_forward(x, training)
        result = (x, self_attention_cache, cross_attention_cache) if cached else (x,)
        result += (scores,) if return_attention else ()
        return result if len(result) > 1 else x

    def call_packed(self, x, slots, packed_shape, mask, memory, training=None):
        """``call`` on real tokens only: x (1, n, D), the n real positions of a batch in a row;
        ``slots`` (n, 2) each one's (image, position) in the packed layout of ``packed_shape``
        (B, P), where ``mask`` (B, P, P) says which packed positions each may attend to (its own
        caption's earlier ones). Returns (1, n, D).

        The projections, the feed-forward network and the norms, which are most of a block's
        arithmetic and work token by token, run on the n real tokens; only the attention
        itself runs on the (B, P) layout (``TransformerDecoder.call_packed`` says why), through
        the attention layers' own ``_compute_attention``, so the math is Keras's."""
        def padded(t):                                  # (1, n, H, Dk) -> (B, P, H, Dk)
            return tf.scatter_nd(slots, t[0], (*packed_shape, *t.shape[2:]))

        att = self._self_attention_layer
        out, _ = att._compute_attention(padded(att._query_dense(x)), padded(att._key_dense(x)),
                                        padded(att._value_dense(x)), attention_mask=mask,
                                        training=training)
        out = att._output_dense(tf.gather_nd(out, slots)[None])
        x = self._self_attention_layer_norm(self._self_attention_dropout(out, training=training)
                                            + x)
        att = self._cross_attention_layer
        out, _ = att._compute_attention(padded(att._query_dense(x)), att._key_dense(memory),
                                        att._value_dense(memory), training=training)
        out = att._output_dense(tf.gather_nd(out, slots)[None])
        x = self._cross_attention_layer_norm(self._cross_attention_dropout(out, training=training)
                                             + x)
        return self._feed_forward(x, training)

    def _feed_forward(self, x, training=None):
        """The feed-forward sublayer with its residual and norm (post-norm), token by token."""
        h = self._feedforward_intermediate_dense(x)
        if self._ff_activation_dropout is not None:
            h = self._ff_activation_dropout(h, training=training)
        h = self._feedforward_output_dense(h)
        return self._feedforward_layer_norm(self._feedforward_dropout(h, training=training) + x)

    def step(self, x, self_kv, index, cross_kv, return_attention=False):
        """One incremental decoding step, inference only: the same function as ``call`` with
        keras-hub's caches, on caches laid out for it.

        x (N, 1, D) the token at position ``index``; ``self_kv``: this row's self-attention keys
        and values, each (N, heads, L, key_dim); ``cross_kv``: the memory's cross-attention keys
        and values, each (B, heads, S, key_dim), B = N / R with an image's R rows (beams,
        samples) together. Returns (x (N, 1, D), new self_kv[, attention (N, heads, 1, S)]).

        Why our own: keras-hub's cached attention keeps keys and values stacked as
        (N, 2, L, heads, key_dim), so every step slices them apart and transposes them for the
        einsum (the whole cache, both attentions), and it needs the cross-attention cache
        repeated for every beam or sample. Profiled on the self-critical phase of the UCM
        preset, those copies were half of the sampling loop. Here keys and values are stored
        head-major, the cross-attention ones once per image, and the step is plain batched
        matmuls; ``tests/models/test_decoders.py`` checks it against the full pass."""
        att = self._self_attention_layer
        q = _heads(att._query_dense(x))                                    # (N, H, 1, Dk)
        k_new, v_new = _heads(att._key_dense(x)), _heads(att._value_dense(x))
        # Written with a select, not ops.slice_update: TensorFlow runs that as a small XLA
        # program per call, whose launch cost more than the whole select on these sizes.
        position = tf.range(tf.shape(self_kv[0])[2])
        here = tf.reshape(position == index, (1, 1, -1, 1))
        k, v = tf.where(here, k_new, self_kv[0]), tf.where(here, v_new, self_kv[1])
        scores = tf.matmul(q * att._inverse_sqrt_key_dim, k, transpose_b=True)   # (N, H, 1, L)
        future = position > index                                 # positions not yet written
        weights = tf.nn.softmax(tf.where(future, tf.cast(-1e9, scores.dtype), scores))
        out = att._output_dense(_tokens(tf.matmul(weights, v)))
        x = self._self_attention_layer_norm(out + x)

        att = self._cross_attention_layer
        q = _heads(att._query_dense(x))                                    # (N, H, 1, Dk)
        n, b = tf.shape(q)[0], tf.shape(cross_kv[0])[0]
        # An image's R rows as R queries against its one memory: (B, H, R, Dk).
        q = tf.transpose(tf.reshape(q[:, :, 0], (b, n // b, *q.shape[1:2], -1)), (0, 2, 1, 3))
        scores = tf.matmul(q * att._inverse_sqrt_key_dim, cross_kv[0], transpose_b=True)
        weights = tf.nn.softmax(scores)                                    # (B, H, R, S)
        out = tf.matmul(weights, cross_kv[1])                              # (B, H, R, Dk)
        out = tf.reshape(tf.transpose(out, (0, 2, 1, 3)), (n, 1, *out.shape[1:2], -1))
        x = self._cross_attention_layer_norm(att._output_dense(out) + x)
        h = self._feedforward_output_dense(self._feedforward_intermediate_dense(x))
        x = self._feedforward_layer_norm(h + x)
        if not return_attention:
            return x, (k, v)
        weights = tf.reshape(tf.transpose(weights, (0, 2, 1, 3)), (n, -1, 1, tf.shape(weights)[3]))
        return x, (k, v), weights

    def cross_keys_values(self, memory):
        """memory (B, S, D) -> the cross-attention keys and values for ``step``, each
        (B, heads, S, key_dim)."""
        att = self._cross_attention_layer
        return _heads(att._key_dense(memory)), _heads(att._value_dense(memory))

    def get_config(self):
        return {**super().get_config(), "key_dim": self.key_dim, "ff_dropout": self.ff_dropout}


def _heads(x):
    """(N, T, heads, Dk) -> (N, heads, T, Dk)."""
    return tf.transpose(x, (0, 2, 1, 3))


def _tokens(x):
    """(N, heads, T, Dk) -> (N, T, heads, Dk)."""
    return tf.transpose(x, (0, 2, 1, 3))


DecoderBlock = TransformerDecoder
