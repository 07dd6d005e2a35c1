"""Caption text: normalisation, length filters, and the vocabulary that travels with a run.

Normalisation happens once, in Python, before vectorisation (not inside TextVectorization),
because TensorFlow's ``tf.strings.lower`` and RE2 classes are ASCII-minded by default, and
captions in Vietnamese or German must keep their letters. The vectorizer then only splits on
whitespace, so what the model sees is exactly what ``normalize`` returns.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from captioning import ConfigError
from captioning.io import atomic_write_text

START, END = "<start>", "<end>"
PAD, UNK = "", "[UNK]"   # ids 0 and 1, as TextVectorization assigns them

# Everything that is not a letter, a digit or whitespace is punctuation (Unicode-aware:
# \w covers letters of every script; the underscore is removed separately).
_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACES = re.compile(r"\s+")


PUNCTUATION = ("space", "delete")   # text.punctuation


def normalize(caption: str, punctuation: str = "space") -> str:
    """Lower-case, strip punctuation, collapse spaces; non-ASCII letters survive.

    ``punctuation``: ``space`` replaces each punctuation mark with a space (``dog's`` ->
    ``dog s``), ``delete`` removes it (recipe A: ``dog's`` -> ``dogs``, ``t-shirt`` -> ``tshirt``).

    >>> normalize("A dog, running -- in the Straße!")
    'a dog running in the straße'
    >>> normalize("A dog's t-shirt.", "delete")
    'a dogs tshirt'
    """
    if punctuation not in PUNCTUATION:
        raise ConfigError(f"text.punctuation must be space or delete. "
                          f"Received: text.punctuation={punctuation!r}")
    text = unicodedata.normalize("NFC", caption).lower()
    text = _PUNCT.sub(" " if punctuation == "space" else "", text)
    return _SPACES.sub(" ", text).strip()


def wrap(caption: str) -> str:
    """Add start/end tokens to a normalised caption."""
    return f"{START} {caption} {END}"


FILTERS = ("drop_caption", "drop_image", "truncate", "none")     # text.filter
LENGTH_COUNTS = ("words", "raw")                                   # text.length_counts


def filter_captions(
    captions_per_image: Sequence[Sequence[str]], policy: str, min_tokens: int, max_tokens: int,
    raw_lengths: Sequence[Sequence[int]] | None = None,
) -> tuple[list[list[str]], Counter]:
    """Apply a length rule to normalised captions; returns kept captions and what was removed.

    Lengths count the start and end tokens, as recipe A does (``seq_len`` 25 = 23 words).
    ``policy``: ``drop_image`` (recipe A: an image goes if any caption breaks the rule),
    ``drop_caption`` (only the offending caption goes; images left with none go too),
    ``truncate`` (a caption that is too long keeps its first ``max_tokens - 2`` words, one that
    is too short goes), ``none``. ``raw_lengths`` (``text.length_counts=raw``): the rule counts
    these (each caption's whitespace tokens as written, punctuation tokens included: recipe
    A's count) instead of the normalised words; a caption must still fit ``max_tokens`` in
    normalised words, so that its end token is never cut.
    """
    kept, removed = [], Counter()
    for i, caps in enumerate(captions_per_image):
        raw = raw_lengths[i] if raw_lengths is not None else None
        kept.append([c for _, c in _filter_one(caps, raw, policy, min_tokens, max_tokens,
                                               removed)])
    return kept, removed


def filter_indexed(captions_per_image, policy, min_tokens, max_tokens, raw_lengths=None):
    """``filter_captions``, with each kept caption's index in its image's list:
    ``[[(index, caption), ...], ...]``."""
    removed: Counter = Counter()
    kept = [_filter_one(caps, raw_lengths[i] if raw_lengths is not None else None, policy,
                        min_tokens, max_tokens, removed)
            for i, caps in enumerate(captions_per_image)]
    return kept, removed


def _filter_one(caps, raw, policy, low, high, removed) -> list[tuple[int, str]]:
    """One image's captions through the length rule (see ``filter_captions``)."""
    if policy not in FILTERS:
        raise ConfigError(
            f"text.filter must be drop_caption, drop_image, truncate or none. "
            f"Received: text.filter={policy!r}")
    nonempty = [(j, c) for j, c in enumerate(caps) if c]
    removed["empty captions"] += len(caps) - len(nonempty)
    words = [len(c.split()) + 2 for _, c in nonempty]
    counted = words if raw is None else [raw[j] + 2 for j, _ in nonempty]
    short = [n < low for n in counted]
    ok = [low <= n <= high and w <= high for n, w in zip(counted, words, strict=True)]
    if policy == "none":
        return nonempty
    if policy == "drop_image" and not all(ok):
        removed["images (a caption broke the length rule)"] += 1
        removed["captions (with their image)"] += len(nonempty)
        return []
    if policy == "truncate":
        out = [(j, c if good else " ".join(c.split()[: high - 2]))
               for (j, c), good, s in zip(nonempty, ok, short, strict=True) if not s]
        removed["captions (too short)"] += sum(short)
        removed["captions truncated (kept)"] += len(out) - sum(ok)
        return out
    removed["captions (length rule)"] += ok.count(False)
    return [jc for jc, good in zip(nonempty, ok, strict=True) if good]


class Vocabulary:
    """Token <-> id mapping, learned on training captions only, saved with every run.

    Wraps ``keras.layers.TextVectorization`` (whitespace split, no standardisation: captions
    arrive normalised). Id 0 is padding, 1 is unknown, then tokens by decreasing frequency.
    """

    def __init__(self, tokens: Sequence[str], seq_len: int):
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError(
                f"A vocabulary starts with {PAD!r}, {UNK!r}. Received: {list(tokens[:2])}")
        self.tokens = list(tokens)
        self.seq_len = int(seq_len)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.start_id, self.end_id = self.index[START], self.index[END]
        self._vectorizer = None

    @classmethod
    def build(cls, wrapped_captions: Sequence[str], size: int | None, seq_len: int,
              min_count: int = 1) -> Vocabulary:
        """Learn the ``size`` most frequent tokens (including pad/unk) that occur at least
        ``min_count`` times in the wrapped captions (Karpathy's threshold is 5); ``size`` None:
        no cap. Rarer tokens become [UNK]."""
        if size is not None and size < 4:
            raise ConfigError(
                f"text.vocab_size must be at least 4 (pad, unk, start, end). Received: {size}")
        if min_count < 1:
            raise ConfigError(f"text.min_count must be >= 1. Received: text.min_count={min_count}")
        # Counting in Python is exact and fast for caption corpora; it gives the same order as
        # TextVectorization.adapt (frequency, ties broken by first appearance is not guaranteed
        # there, so we sort ties by token for determinism across runs).
        counts = Counter(tok for c in wrapped_captions for tok in c.split())
        for special in (START, END):
            counts[special] = max(counts[special], min_count)
        ordered = sorted(((t, n) for t, n in counts.items() if n >= min_count),
                         key=lambda kv: (-kv[1], kv[0]))
        keep = ordered if size is None else ordered[: size - 2]
        return cls([PAD, UNK] + [t for t, _ in keep], seq_len)

    @property
    def size(self) -> int:
        return len(self.tokens)

    def vectorizer(self):
        """The Keras layer (built lazily: importing Keras is slow)."""
        if self._vectorizer is None:
            import keras

            self._vectorizer = keras.layers.TextVectorization(
                standardize=None, split="whitespace", output_mode="int",
                output_sequence_length=self.seq_len, vocabulary=self.tokens[2:])
        return self._vectorizer

    def encode(self, wrapped_captions: Sequence[str]) -> np.ndarray:
        """(N,) wrapped captions -> (N, seq_len) int32 ids, padded with 0, truncated at seq_len."""
        if len(wrapped_captions) == 0:
            return np.zeros((0, self.seq_len), np.int32)
        return np.asarray(self.vectorizer()(np.asarray(wrapped_captions, dtype=object)), np.int32)

    def decode(self, ids) -> list[str]:
        """(N, T) ids -> N captions: stops at the first end token, drops start/pad tokens."""
        out = []
        for row in np.asarray(ids):
            words = []
            for i in row:
                i = int(i)
                if i == self.end_id:
                    break
                if i in (0, self.start_id):
                    continue
                words.append(self.tokens[i] if i < len(self.tokens) else UNK)
            out.append(" ".join(words))
        return out

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps({"seq_len": self.seq_len, "tokens": self.tokens},
                                                 ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["tokens"], data["seq_len"])
