"""The interface every caption decoder implements, written down once.

``TransformerDecoder`` (transformer.py) and ``GRUDecoder`` (gru.py) implement it; the
``Captioner`` trains through ``call``/``project`` and ``decoding.Generator`` generates through
``init_cache``/``step``, reading ``beam_state`` for beam search. A new decoder is a Keras layer
with these members, named by a decoder option's ``_target_`` (``captioning/plugins.py``; the
built-in ones are built in ``build.py``); no other module knows the names of its cache entries.

Two capabilities are optional, and each decoder declares whether it has them, as class
attributes that callers read (they never probe for a method): ``supports_packed`` (it has
``call_packed``) and ``shared_state`` (cache entries kept once per image). A decoder without
them declares ``supports_packed = False`` and ``shared_state = ()`` (the defaults written here)
and gets the general path.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

# What a decoder class must have before it is built (the config check reads them);
# ``vocab_size`` and ``dim`` are set by its constructor, checked once it is built.
CLASS_MEMBERS = ("beam_state", "call", "project", "init_cache", "step")
INSTANCE_MEMBERS = (*CLASS_MEMBERS, "vocab_size", "dim")


@runtime_checkable
class Decoder(Protocol):
    """A caption decoder (a ``keras.layers.Layer``).

    Shapes: B images, N token rows, T positions, S memory tokens (image regions),
    D = ``dim``, V = ``vocab_size``. Token id 0 is padding, never a target.

    ``beam_state`` names the cache entries that belong to one hypothesis: what it has generated
    so far (self-attention keys/values, a recurrent state). Beam search repeats every cache entry
    once per beam at the start; when it reorders an image's beams it gathers the ``beam_state``
    entries along with them and leaves the others (the image memory, cross-attention keys/values:
    the same for all beams of an image) in place. An entry missing from ``beam_state`` that does
    depend on the generated tokens gives wrong beams silently, so each decoder declares its own.

    ``shared_state`` (``()`` when none) names the cache entries that are the same for
    all rows of an image (its beams, or its samples with ``repeats``): ``init_cache(memory,
    max_len, repeats=R)`` then keeps them once per image, and ``step`` takes R rows per image.
    None of them may be in ``beam_state``.

    ``supports_packed`` (False when it has none) says the decoder has ``call_packed(tokens,
    memory, real, repeats=1, training=None)``: the hidden states (n_real, D) of the real
    positions only (``real`` (N, T) bool), the same as ``tf.boolean_mask(call(tokens, memory,
    repeats=repeats), real)``, with the padding left out of the work. The Captioner's loss and
    self-critical step use it when declared, else ``call`` and a mask.
    """

    vocab_size: int
    dim: int
    beam_state: ClassVar[tuple[str, ...]]
    shared_state: ClassVar[tuple[str, ...]] = ()
    supports_packed: ClassVar[bool] = False

    def call(self, tokens, memory, training=None, repeats: int = 1,
             return_attention: bool = False, attention_block: int = -1):
        """Teacher forcing (callers write ``decoder(tokens, memory, ...)``; Keras calls this).

        tokens (N, T) int ids, memory (N / repeats, S, D) -> hidden states (N, T, D) before the
        vocabulary head; position t depends on tokens 0..t only (causal). With ``repeats=C``,
        memory row i serves token rows i*C .. i*C+C-1 (an image's C captions): the same result
        as repeating each memory row C times.

        ``return_attention=True`` (with repeats=1) -> (hidden, attention (N, T, S)): at each
        position, the decoder's weights over the S image tokens (rows sum to 1), e.g. one
        block's cross-attention averaged over heads (``attention_block``: which block, where a
        decoder has several). A Python flag: the default path computes no weights.
        """
        ...

    def project(self, hidden):
        """hidden (..., D) -> logits (..., V) over the vocabulary."""
        ...

    def init_cache(self, memory, max_len: int) -> dict[str, Any]:
        """memory (B, S, D) -> the cache for decoding positions 0 .. max_len - 1.

        A dict of tensors or lists of tensors, each with B as its leading axis (``Generator``
        repeats and folds entries along it), holding ``memory`` and every ``beam_state`` key.
        """
        ...

    def step(self, token, cache: dict[str, Any], index, return_attention: bool = False,
             attention_block: int = -1) -> tuple[Any, ...]:
        """One incremental step: token (B,) int ids at position ``index`` (an int or a scalar
        tensor) -> (logits (B, V) for position index + 1, the updated cache, same structure);
        with ``return_attention``, a third item: the attention over the image tokens (B, S).

        Stepping through tokens[:, 0..T-1] from ``init_cache(memory, T)`` gives the logits (and
        attention) of ``call(tokens, memory)`` (``tests/models/test_decoders.py`` checks it).
        """
        ...
