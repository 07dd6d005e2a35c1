"""Analytic arithmetic of the Transformer captioner: the multiply-adds of its matmuls, counted
from the layer sizes and a batch's real shapes. ``captioning.bench`` divides them by measured
times to report achieved GFLOP/s next to the machine's own GEMM throughput.

Counted: every dense projection, attention scores and weighted sums, the vocabulary head.
Not counted: element-wise work (norms, softmax, activations, the optimizer update), which is
memory-bound and small next to the matmuls at these sizes. A FLOP is 2 per multiply-add; a
training step is 3x its forward pass (the backward pass computes two matmuls per forward
one), except for the encoder's input projection, whose input (cached features) needs no
gradient (2x).

Our own few lines: TensorFlow's graph FLOP counter needs static shapes, and a training step
here has dynamic ones (an image's captions packed without their padding, the vocabulary head
applied only to real tokens).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """The matmul-relevant sizes of a Captioner with the Transformer decoder."""

    feature_dim: int      # backbone channels C (encoder input)
    memory: int           # S, image tokens
    dim: int              # D, model width (encoder and decoder)
    encoder_layers: int
    layers: int           # decoder blocks
    heads: int
    head_dim: int         # key/value width per head
    ff_dim: int
    vocab: int

    @classmethod
    def of(cls, model) -> Sizes:
        enc, dec = model.encoder, model.decoder
        if not hasattr(dec, "blocks"):
            raise ValueError("FLOP counts are for decoder=transformer")
        shape = model.backbone.output_shape
        return cls(feature_dim=int(shape[-1]), memory=int(shape[1]), dim=int(dec.dim),
                   encoder_layers=int(enc.num_layers), layers=int(dec.num_layers),
                   heads=int(dec.num_heads), head_dim=int(dec.head_dim), ff_dim=int(dec.ff_dim),
                   vocab=int(dec.vocab_size))


def encoder_macs(s: Sizes, images: int) -> tuple[float, float]:
    """(input projection, the rest) multiply-adds of encoding ``images`` feature maps."""
    proj = images * s.memory * s.feature_dim * s.dim
    attn = s.encoder_layers * images * (s.memory * 4 * s.dim * s.dim
                                        + 2 * s.memory * s.memory * s.dim)
    return proj, attn


def training_step_flops(s: Sizes, images: int, packed: int, tokens: int) -> float:
    """FLOPs of one teacher-forced training step on cached features: ``images`` memories,
    ``tokens`` real target tokens, ``packed`` the batch's longest packed row (the largest sum of
    an image's caption lengths). The projections, feed-forward network and vocabulary head run
    on the real tokens only, the attention on each image's packed row against its memory
    (``TransformerDecoder.call_packed``); an image's captions share its cross-attention
    keys/values."""
    proj, enc = encoder_macs(s, images)
    inner = s.heads * s.head_dim
    per_block = (tokens * (4 * s.dim * inner                      # self-attention Q, K, V, O
                           + 2 * s.dim * inner                    # cross-attention Q, O
                           + 2 * s.dim * s.ff_dim)                # feed-forward
                 + images * s.memory * 2 * s.dim * inner          # cross K, V once per image
                 + images * packed ** 2 * inner * 2               # block-diagonal self-attn
                 + images * packed * s.memory * inner * 2)        # cross-attention scores, sum
    head = tokens * s.dim * s.vocab
    return 2 * (2 * proj + 3 * (enc + s.layers * per_block + head))


def caption_flops(s: Sizes, length: int) -> float:
    """FLOPs of generating one caption of ``length`` tokens greedily from cached features:
    the encoder and the cross-attention keys/values once, then one cached step per token."""
    proj, enc = encoder_macs(s, 1)
    inner = s.heads * s.head_dim
    per_token = s.layers * (4 * s.dim * inner + 2 * s.dim * inner + 2 * s.dim * s.ff_dim
                            + length * inner * 2 + s.memory * inner * 2) + s.dim * s.vocab
    return 2 * (proj + enc + s.layers * s.memory * 2 * s.dim * inner + length * per_token)
