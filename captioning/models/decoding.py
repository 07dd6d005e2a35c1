"""Decoding: the one place captions are generated (validation scoring, Kangas grids,
``caption.py``, ``eval.py`` and the export all call ``Generator``).

Greedy, top-k and top-p use keras-hub's samplers on the decoders' incremental step (a cache
of keys/values or the GRU state; the interface is ``decoder.Decoder``). Beam search is our
own: keras-hub's ``BeamSampler`` keeps extending beams after their end token and ranks them
with that tail included and no length penalty, which picks wrong captions once beams finish
at different lengths. Here a finished beam is frozen (it can only append padding, at no cost)
and final scores are divided by the GNMT length penalty ((5 + len) / 6) ** alpha.

Test-time augmentation (``decode.tta``): each image is captioned from several views at once
(``flip``: itself and its mirror image; ``dihedral``: its 8 flips and 90-degree rotations, for
overhead imagery), one caption per image: at every step the decoder runs on every view and the
next-token log-probabilities are averaged over the views (a product of experts, the usual
ensembling in NMT), so greedy, sampling and beam search all decode the ensemble.
"""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf
from keras import ops

from captioning import ConfigError
from captioning.config_rules import check_values
from captioning.models.augment import rotate90
from captioning.models.decoder import Decoder
from captioning.models.registry import TTA_VIEWS, rerank_problem
from captioning.provenance import cpu_info

RERANK_KEYS = ("decode.rerank", "decode.rerank_neighbours", "decode.rerank_views")


class Generator:
    """Batched, cached, compiled caption generation for a Captioner.

    ``ids = Generator(model, start_id, end_id, max_len, method="beam", beam_size=5)(images)``
    returns (B, max_len) token ids starting with the start token.
    """

    def __init__(self, model, start_id, end_id, max_len, method="greedy", beam_size=3,
                 length_penalty=0.0, k=10, p=0.9, temperature=1.0, seed=None, jit_compile=False,
                 tta="none"):
        check_values({"decode.tta": tta, "decode.method": method, "decode.beam_size": beam_size,
                      "decode.k": k, "decode.p": p, "decode.temperature": temperature,
                      "decode.jit_compile": jit_compile})
        self.model, self.start_id, self.end_id, self.max_len = model, start_id, end_id, max_len
        self.tta = tta
        self.method, self.beam_size, self.length_penalty = method, beam_size, length_penalty
        if method == "greedy":
            self.sampler = keras_hub.samplers.GreedySampler(temperature=temperature)
        elif method == "top_k" and k >= model.decoder.vocab_size:
            # k covers the vocabulary (self-critical sampling): the same distribution without
            # sorting the whole vocabulary at every step.
            self.sampler = keras_hub.samplers.RandomSampler(seed=seed, temperature=temperature)
        elif method == "top_k":
            self.sampler = keras_hub.samplers.TopKSampler(k=k, seed=seed, temperature=temperature)
        elif method == "top_p":
            self.sampler = keras_hub.samplers.TopPSampler(p=p, seed=seed, temperature=temperature)
        else:
            self.sampler = None
        self.temperature = temperature
        # "loop": XLA for the token loop only (the encoder runs as trained): the same greedy
        # captions. "auto": "loop" for greedy where XLA measured faster (``xla_loop_helps``);
        # sampling and beam search stay plain unless asked (a sampler's stream differs).
        mode = resolve_jit(jit_compile, method)
        self.loop_jit = mode == "loop"
        whole = mode is True
        self._from_images = tf.function(self._images_to_ids, jit_compile=whole,
                                        reduce_retracing=True)
        self._from_memory = tf.function(self.generate, jit_compile=whole or self.loop_jit,
                                        reduce_retracing=True)
        self._n_best = tf.function(self._images_to_beams, jit_compile=whole,
                                   reduce_retracing=True)

    @classmethod
    def from_config(cls, model, vocab, decode_cfg, seed=None):
        # eval.py and caption.py take decode.* without check_config
        check_values({k: decode_cfg[k.removeprefix("decode.")] for k in RERANK_KEYS
                      if k.removeprefix("decode.") in decode_cfg})
        return cls(model, vocab.start_id, vocab.end_id, vocab.seq_len, decode_cfg.method,
                   int(decode_cfg.beam_size), float(decode_cfg.length_penalty),
                   int(decode_cfg.k), float(decode_cfg.p), float(decode_cfg.temperature), seed,
                   jit_setting(decode_cfg.get("jit_compile", False)),
                   str(decode_cfg.get("tta", "none")))

    def __call__(self, images):
        return self._from_images(ops.convert_to_tensor(images, "float32"))

    def from_memory(self, memory, repeats: int = 1):
        """(B, S, D) memory -> (B * repeats, max_len) ids (``generate``)."""
        return self._from_memory(memory, repeats=repeats)

    def check_rerank(self, num_captions: int = 1) -> None:
        """A reranker chooses one caption among the beams (``n_best``): beam search on the
        image alone."""
        problem = rerank_problem(self.method, self.tta, num_captions)
        if problem:
            raise ConfigError(problem)

    def n_best(self, images):
        """Beam search's every finished beam: (B, K, max_len) ids and (B, K) length-penalised
        log-probabilities, K = beam_size, for a reranker to choose from (``decode.rerank``);
        ``__call__`` returns the highest-scoring of each row."""
        self.check_rerank()
        return self._n_best(ops.convert_to_tensor(images, "float32"))

    def _images_to_beams(self, images):
        memory = self.model.encode(images, training=False)
        seqs, norm = self._beam(self.model.decoder, self._prompt(ops.shape(memory)[0]),
                                self.model.decoder.init_cache(memory, self.max_len - 1))
        b, k = ops.shape(memory)[0], self.beam_size
        return ops.reshape(seqs, (b, k, self.max_len)), ops.reshape(norm, (b, k))

    def _prompt(self, b):
        """(b, max_len): the start token, then padding."""
        return ops.concatenate([ops.full((b, 1), self.start_id, "int32"),
                                ops.zeros((b, self.max_len - 1), "int32")], axis=1)

    def _images_to_ids(self, images):
        generate = self._from_memory if self.loop_jit else self.generate    # XLA inside
        if self.tta == "none":
            return generate(self.model.encode(images, training=False))
        views = test_time_views(images, self.tta)                             # (B*V, H, W, 3)
        return generate(self.model.encode(views, training=False), views=TTA_VIEWS[self.tta][0])

    def generate(self, memory, views: int = 1, repeats: int = 1):
        """memory (B, S, D) -> (B, max_len) ids; position 0 is the start token. With ``views=V``
        memory is (B*V, S, D), an image's V views together, decoded as one ensemble per image.
        With ``repeats=R`` (sampling only): R captions per image, (B*R, max_len), an image's
        together; a decoder with ``shared_state`` keeps those entries once per image."""
        decoder = self.model.decoder if views == 1 else _ViewEnsemble(self.model.decoder, views)
        if repeats > 1 and self.method == "beam":
            raise ValueError("repeats is for sampling: beam search gives one caption per image")
        # The decoder sees positions 0 .. max_len - 2 (the last token is never fed back).
        if repeats > 1 and _shared_state(decoder):
            cache = decoder.init_cache(memory, self.max_len - 1, repeats=repeats)
        else:
            memory = ops.repeat(memory, repeats, axis=0) if repeats > 1 else memory
            cache, repeats = decoder.init_cache(memory, self.max_len - 1), 1
        b = ops.shape(memory)[0] // views * repeats                       # caption rows
        prompt = self._prompt(b)
        if self.method == "beam":
            seqs, norm = self._beam(decoder, prompt, cache)
            best = ops.argmax(ops.reshape(norm, (b, self.beam_size)), axis=1)
            return ops.take(seqs, best + ops.arange(b) * self.beam_size, axis=0)

        def next_fn(prompt, cache, index):
            logits, cache = decoder.step(prompt[:, index - 1], cache, index - 1)
            return _no_padding(logits), None, cache

        mask = ops.concatenate([ops.ones((b, 1), "bool"),
                                ops.zeros((b, self.max_len - 1), "bool")], axis=1)
        return self.sampler(next_fn, prompt, cache=cache, index=1, mask=mask,
                            stop_token_ids=[self.end_id])

    def _beam(self, decoder: Decoder | _ViewEnsemble, prompt, cache):
        """-> every beam (B*K, max_len), an image's K together, and their length-penalised
        scores (B*K,)."""
        k, length = self.beam_size, self.max_len
        b = ops.shape(prompt)[0]
        per_beam = _beam_state(decoder, cache)
        expand = lambda x: ops.repeat(x, k, axis=0)  # noqa: E731   (B, ...) -> (B*K, ...)
        # Entries the decoder shares between an image's rows stay once per image.
        shared = _shared_state(decoder)
        seqs = expand(prompt)
        cache = {name: v if name in shared else tf.nest.map_structure(expand, v)
                 for name, v in cache.items()}
        # Only the first beam of each image is live at the start, so the K beams differ.
        first_live = ops.convert_to_tensor([[0.0] + [-1e9] * (k - 1)])
        scores = ops.reshape(ops.tile(first_live, (b, 1)), (-1,))
        finished = ops.zeros((b * k,), "bool")

        def body(index, seqs, cache, scores, finished):
            logits, cache = decoder.step(seqs[:, index - 1], cache, index - 1)
            logp = tf.nn.log_softmax(_no_padding(logits) / self.temperature)    # (B*K, V)
            v = ops.shape(logp)[-1]
            # A finished beam may only continue with padding (id 0), which costs nothing.
            frozen = ops.where(ops.arange(v)[None, :] == 0, 0.0, -1e9)
            logp = ops.where(finished[:, None], frozen, logp)
            cand = ops.reshape(scores[:, None] + logp, (b, k * v))
            top, idx = tf.math.top_k(cand, k)                              # (B, K)
            beam = idx // v + ops.arange(b)[:, None] * k                   # flat source beam
            token = ops.reshape(idx % v, (-1,))
            gather = lambda x: ops.take(x, ops.reshape(beam, (-1,)), axis=0)  # noqa: E731
            seqs, finished = gather(seqs), gather(finished)
            # Beams are only reordered within their image, and an image's memory and cross-
            # attention keys/values are the same for all its beams: gather only what each beam
            # accumulates, the entries the decoder declares in ``beam_state``.
            cache = {name: tf.nest.map_structure(gather, v) if name in per_beam else v
                     for name, v in cache.items()}
            seqs = seqs + ops.cast(ops.one_hot(index, length), "int32")[None, :] * token[:, None]
            finished = finished | (token == self.end_id) | (token == 0)
            return index + 1, seqs, cache, ops.reshape(top, (-1,)), finished

        def cond(index, seqs, cache, scores, finished):
            return ops.logical_and(index < length, ops.logical_not(ops.all(finished)))

        start = (ops.convert_to_tensor(1), seqs, cache, scores, finished)
        _, seqs, _, scores, _ = tf.while_loop(cond, body, start)
        real = ops.cast(seqs[:, 1:] > 0, "int32")
        lengths = ops.cast(ops.sum(real, axis=1), "float32")                    # incl. <end>
        return seqs, scores / ((5.0 + lengths) / 6.0) ** self.length_penalty


def jit_setting(value):
    """``decode.jit_compile`` as ``Generator`` takes it: true, false, "loop" or "auto"."""
    return value if value in ("auto", "loop") else bool(value)


def resolve_jit(value, method: str, cpu_flags: set[str] | None = None):
    """``decode.jit_compile`` -> True (XLA for all of generation), "loop" (the token loop
    only) or False. "auto": "loop" for greedy on a CPU where XLA's loop was measured faster,
    else False (``xla_loop_helps``)."""
    if value != "auto":
        return value
    return "loop" if method == "greedy" and xla_loop_helps(cpu_flags) else False


def xla_loop_helps(cpu_flags: set[str] | None = None) -> bool:
    """Whether XLA's greedy loop beats the plain one here. Measured (docs/experiments/speed.md,
    2026-12-07): 1.33x faster on a 2-core AVX2 EPYC, 0.73-1.00x on a 2-core AVX-512 one, the
    same captions on both. So: CPUs without AVX-512. GPUs: not measured, plain."""
    if cpu_flags is None:
        cpu_flags = set(cpu_info().get("flags", "").split())
        if not cpu_flags or tf.config.list_physical_devices("GPU"):
            return False
    return "avx2" in cpu_flags and "avx512f" not in cpu_flags


def _beam_state(decoder: Decoder | _ViewEnsemble, cache) -> frozenset[str]:
    """The cache entries ``decoder`` declares per-beam, checked against its cache."""
    per_beam = frozenset(decoder.beam_state)
    if not per_beam <= set(cache):
        raise ValueError(f"{type(decoder).__name__}.beam_state names cache entries it does not "
                         f"have: {sorted(per_beam - set(cache))}. Cache: {sorted(cache)}")
    return per_beam


def _shared_state(decoder) -> frozenset[str]:
    """The cache entries ``decoder`` keeps once per image for all of the image's rows (beams,
    samples): its ``shared_state``, checked against ``beam_state`` (() for a decoder without)."""
    shared = frozenset(decoder.shared_state)
    if shared & frozenset(decoder.beam_state):
        both = sorted(shared & set(decoder.beam_state))
        raise ValueError(f"{type(decoder).__name__} declares {both} both per beam (beam_state) "
                         f"and shared (shared_state)")
    return shared


def test_time_views(images, tta: str):
    """(B, H, W, C) -> (B*V, H, W, C), each image's V views together: ``flip`` the image and its
    left-right mirror; ``dihedral`` all 8 symmetries of the square (needs H == W)."""
    mirror = ops.flip(images, axis=2)
    views = [images, mirror]
    if tta == "dihedral":
        if images.shape[1] != images.shape[2]:
            raise ConfigError(f"decode.tta=dihedral rotates images by 90 degrees "
                              f"and needs square images. "
                              f"Received: {images.shape[1]}x{images.shape[2]}; "
                              f"use decode.tta=flip.")
        for x in (images, mirror):
            rot = x
            for _ in range(3):
                rot = rotate90(rot)
                views.append(rot)
    v = ops.stack(views, axis=1)                                         # (B, V, H, W, C)
    return ops.reshape(v, (-1, *images.shape[1:]))


class _ViewEnsemble:
    """A decoder's incremental step over V views per row: ``step`` runs the decoder on all B*V
    rows and returns the views' mean log-probabilities (B, vocab). The cache is kept as
    (B, V, ...) so that beam search can repeat and reorder it by row, as for one decoder."""

    def __init__(self, decoder: Decoder, views: int):
        self.decoder, self.views = decoder, views
        self.beam_state = decoder.beam_state       # the same entries, folded
        self.shared_state = ()      # folded per view: every entry is repeated with the rows

    def _fold(self, x):                  # (B*V, ...) -> (B, V, ...)
        return ops.reshape(x, (-1, self.views, *x.shape[1:]))

    def _unfold(self, x):                # (B, V, ...) -> (B*V, ...)
        return ops.reshape(x, (-1, *x.shape[2:]))

    def init_cache(self, memory, max_len):
        return tf.nest.map_structure(self._fold, self.decoder.init_cache(memory, max_len))

    def step(self, token, cache, index):
        logits, cache = self.decoder.step(ops.repeat(token, self.views, axis=0),
                                          tf.nest.map_structure(self._unfold, cache), index)
        logp = tf.nn.log_softmax(_no_padding(logits))                    # (B*V, vocab)
        logp = ops.mean(ops.reshape(logp, (-1, self.views, ops.shape(logp)[-1])), axis=1)
        return logp, tf.nest.map_structure(self._fold, cache)


def _no_padding(logits):
    """Padding (id 0) is never a training target, so its logit is meaningless: rule it out."""
    logits = ops.cast(logits, "float32")
    return ops.where(ops.arange(ops.shape(logits)[-1])[None, :] == 0, -1e9, logits)


def caption_records(generator: Generator, data, records, batch_size: int,
                    progress=None) -> list[str]:
    """Caption ``records`` in batches; returns one string per record (stops at the end token)."""
    out: list[str] = []
    for images in data.image_dataset(records, batch_size):
        out += data.vocab.decode(keras.ops.convert_to_numpy(generator(images)))
        if progress is not None:
            progress(len(out))
    return out


def sample_records(generator: Generator, data, records, batch_size: int, n: int,
                   progress=None) -> list[list[str]]:
    """``n`` captions per record (``decode.num_captions``), for a sampling generator (top-k,
    top-p): each image is encoded once and its memory repeated ``n`` times, so the sampler
    draws ``n`` captions independently. ``n=1`` is ``caption_records``, one per list."""
    if n == 1:
        return [[c] for c in caption_records(generator, data, records, batch_size, progress)]
    if generator.method not in ("top_k", "top_p"):
        raise ConfigError(f"decode.num_captions={n} needs a sampling method (decode.method=top_k "
                          f"or top_p): decode.method={generator.method} gives one caption.")
    out: list[list[str]] = []
    for inputs in data.image_dataset(records, batch_size):
        if generator.tta == "none":
            memory = generator.model.encode(inputs, training=False)
            ids = generator.from_memory(memory, repeats=n)
        else:                                      # the views are built from the images
            ids = generator(ops.repeat(inputs, n, axis=0))
        caps = data.vocab.decode(keras.ops.convert_to_numpy(ids))
        out += [caps[i:i + n] for i in range(0, len(caps), n)]
        if progress is not None:
            progress(len(out))
    return out
