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

START, END = "<start>", "<end>"
PAD, UNK = "", "[UNK]"   # ids 0 and 1, as TextVectorization assigns them

# Everything that is not a letter, a digit or whitespace is punctuation (Unicode-aware:
# \w covers letters of every script; the underscore is removed separately).
_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACES = re.compile(r"\s+")


def normalize(caption: str) -> str:
    """Lower-case, strip punctuation, collapse spaces; non-ASCII letters survive.

    >>> normalize("A dog, running -- in the Straße!")
    'a dog running in the straße'
    """
    text = unicodedata.normalize("NFC", caption).lower()
    text = _PUNCT.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def wrap(caption: str) -> str:
    """Add start/end tokens to a normalised caption."""
    return f"{START} {caption} {END}"


def filter_captions(
    captions_per_image: Sequence[Sequence[str]], policy: str, min_tokens: int, max_tokens: int
) -> tuple[list[list[str]], Counter]:
    """Apply a length rule to normalised captions; returns kept captions and what was removed.

    Lengths count the start and end tokens, as recipe A does (``seq_len`` 25 = 23 words).
    ``policy``: ``drop_image`` (recipe A: an image goes if any caption breaks the rule),
    ``drop_caption`` (only the offending caption goes; images left with none go too), ``none``.
    """
    if policy not in ("drop_image", "drop_caption", "none"):
        raise ConfigError(
            f"text.filter must be drop_image, drop_caption or none. "
            f"Received: text.filter={policy!r}")
    removed: Counter = Counter()
    kept: list[list[str]] = []
    for caps in captions_per_image:
        nonempty = [c for c in caps if c]
        removed["empty captions"] += len(caps) - len(nonempty)
        ok = [min_tokens <= len(c.split()) + 2 <= max_tokens for c in nonempty]
        if policy == "none":
            kept.append(nonempty)
        elif policy == "drop_image" and not all(ok):
            removed["images (a caption broke the length rule)"] += 1
            removed["captions (with their image)"] += len(nonempty)
            kept.append([])
        else:
            kept.append([c for c, good in zip(nonempty, ok, strict=True) if good])
            removed["captions (length rule)"] += ok.count(False)
    return kept, removed


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
    def build(cls, wrapped_captions: Sequence[str], size: int, seq_len: int) -> Vocabulary:
        """Learn the ``size`` most frequent tokens (including pad/unk) from wrapped captions."""
        if size < 4:
            raise ConfigError(
                f"text.vocab_size must be at least 4 (pad, unk, start, end). Received: {size}")
        # Counting in Python is exact and fast for caption corpora; it gives the same order as
        # TextVectorization.adapt (frequency, ties broken by first appearance is not guaranteed
        # there, so we sort ties by token for determinism across runs).
        counts = Counter(tok for c in wrapped_captions for tok in c.split())
        for special in (START, END):
            counts[special] = max(counts[special], 1)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([PAD, UNK] + [t for t, _ in ordered[: size - 2]], seq_len)

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
        from captioning.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps({"seq_len": self.seq_len, "tokens": self.tokens},
                                                 ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["tokens"], data["seq_len"])
