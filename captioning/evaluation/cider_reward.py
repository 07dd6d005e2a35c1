"""CIDEr-D on token ids: the reward of self-critical training (``trainer.scst_epochs``).

The same formula as pycocoevalcap's ``Cider`` (n-grams 1..4, tf-idf vectors, clipped
products, Gaussian length penalty with sigma 6, x10; ``tests/test_metrics.py`` checks the two
agree), with two differences that a training reward needs and the toolkit's scorer lacks, so
it is our own code:
- document frequencies come once from the whole training set (``CiderD(train_refs)``), as in
  self-critical training papers, where the toolkit recomputes them from whatever references it
  is handed on each call (a batch's 32 images would make every n-gram look rare);
- it works on the ids the model samples, with reference vectors cached per image, so a step's
  160 rewards take milliseconds, not a round trip through strings and the PTB tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

N = 4
SIGMA = 6.0


def ngrams(tokens: Sequence[int], n: int = N) -> Counter:
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def strip(row: Iterable[int], start_id: int, end_id: int) -> tuple[int, ...]:
    """A row of ids -> the caption's words: up to the first end token, without start/padding."""
    out = []
    for i in row:
        i = int(i)
        if i == end_id:
            break
        if i not in (0, start_id):
            out.append(i)
    return tuple(out)


def references(rows: Iterable[Iterable[int]], start_id: int, end_id: int) -> tuple[tuple[int, ...], ...]:
    """One image's (C, L) caption rows -> its references; all-padding rows (absent captions) dropped."""
    return tuple(r for r in (strip(row, start_id, end_id) for row in rows) if r)


class CiderD:
    """``CiderD(train_refs)(candidates, refs)`` -> one CIDEr-D per candidate.

    train_refs: for each training image, its reference captions as token sequences (words
    only, no start/end). The document frequency of an n-gram is the number of training images
    whose references contain it.
    """

    def __init__(self, train_refs: Sequence[Sequence[Sequence[int]]], n: int = N, sigma: float = SIGMA):
        if not train_refs:
            raise ValueError("CiderD needs the training references to count document frequencies")
        self.n, self.sigma = n, sigma
        df: Counter = Counter()
        for refs in train_refs:
            df.update(set(g for r in refs for g in ngrams(r, n)))
        self.log_df = {g: math.log(c) for g, c in df.items()}
        self.ref_len = math.log(float(len(train_refs)))
        self._ref_cache: dict = {}

    def _vec(self, tokens):
        vec = [defaultdict(float) for _ in range(self.n)]
        norm = [0.0] * self.n
        for g, tf in ngrams(tokens, self.n).items():
            k = len(g) - 1
            v = tf * (self.ref_len - self.log_df.get(g, 0.0))     # log(max(1, df)): unseen -> 0
            vec[k][g] = v
            norm[k] += v * v
        # The toolkit's "length" counts bigrams (its n == 1 branch); only differences are used.
        return vec, [math.sqrt(x) for x in norm], max(len(tokens) - 1, 0)

    def _sim(self, hyp, ref) -> float:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * self.sigma ** 2))
        total = 0.0
        for k in range(self.n):
            val = sum(min(v, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, v in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                val /= nh[k] * nr[k]
            total += val * penalty
        return total / self.n

    def score(self, candidate: Sequence[int], refs: Sequence[Sequence[int]]) -> float:
        """One candidate against its references (token sequences) -> CIDEr-D (x10, as reported)."""
        key = tuple(refs)
        cooked = self._ref_cache.get(key)
        if cooked is None:
            cooked = self._ref_cache[key] = [self._vec(r) for r in refs]
        if not cooked:
            return 0.0
        hyp = self._vec(candidate)
        return 10.0 * sum(self._sim(hyp, r) for r in cooked) / len(cooked)

    def batch(self, samples: np.ndarray, captions: np.ndarray, start_id: int, end_id: int) -> np.ndarray:
        """samples (B*K, L) ids, an image's K samples together; captions (B, C, L) ids of the
        references (all-padding rows are absent captions) -> (B*K,) float32 rewards."""
        b = captions.shape[0]
        k = samples.shape[0] // max(b, 1)
        out = np.zeros(samples.shape[0], np.float32)
        for i in range(b):
            refs = references(captions[i], start_id, end_id)
            for j in range(i * k, (i + 1) * k):
                out[j] = self.score(strip(samples[j], start_id, end_id), refs)
        return out

