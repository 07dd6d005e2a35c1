"""Rewards of self-critical training (``trainer.scst_epochs``, ``trainer.scst_reward``):
CIDEr-D and sentence BLEU on token ids, and their weighted sum.

CIDEr-D: the same formula as pycocoevalcap's ``Cider`` (n-grams 1..4, tf-idf vectors, clipped
products, Gaussian length penalty with sigma 6, x10; ``tests/evaluation/test_metrics.py``
checks the two agree), with two differences that a training reward needs and the toolkit's
scorer lacks, so it is our own code:
- document frequencies come once from the whole training set (``CiderD(train_refs)``), as in
  self-critical training papers, where the toolkit recomputes them from whatever references it
  is handed on each call (a batch's 32 images would make every n-gram look rare);
- it works on the ids the model samples, with reference vectors cached per image, so a step's
  160 rewards take milliseconds, not a round trip through strings and the PTB tokenizer.

BLEU-n: the toolkit's per-sentence BLEU (``Bleu().compute_score``'s second return value: clipped
n-gram precisions with its 1e-15/1e-9 smoothing, brevity penalty against the closest reference
length), on ids with cached references, for the same reasons
(``tests/evaluation/test_metrics.py`` checks the two agree).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

N = 4
SIGMA = 6.0
SCORES = ("cider", "bleu_1", "bleu_2", "bleu_3", "bleu_4")    # the keys of trainer.scst_reward


def ngrams(tokens: Sequence[int], n: int = N) -> Counter:
    return Counter(tuple(tokens[i:i + k])
                   for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


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


def references(rows: Iterable[Iterable[int]], start_id: int,
               end_id: int) -> tuple[tuple[int, ...], ...]:
    """One image's (C, L) caption rows -> its references; all-padding rows (absent captions)
    dropped."""
    return tuple(r for r in (strip(row, start_id, end_id) for row in rows) if r)


class CiderD:
    """``CiderD(train_refs).score(candidate, refs)`` -> the candidate's CIDEr-D.

    train_refs: for each training image, its reference captions as token sequences (words
    only, no start/end). The document frequency of an n-gram is the number of training images
    whose references contain it.
    """

    def __init__(self, train_refs: Sequence[Sequence[Sequence[int]]], n: int = N,
                 sigma: float = SIGMA):
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

    def score_all(self, candidates: Sequence[Sequence[int]],
                  refs: Sequence[Sequence[int]]) -> list[float]:
        """Each candidate against the same references, which are cooked once and not kept
        (``score`` keeps them per reference set: right for a training set's images, not for
        the one-off sets of a consensus vote)."""
        cooked = [self._vec(r) for r in refs]
        if not cooked:
            return [0.0] * len(candidates)
        return [10.0 * sum(self._sim(hyp, r) for r in cooked) / len(cooked)
                for hyp in (self._vec(c) for c in candidates)]

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


class SentenceBleu:
    """``SentenceBleu().score(candidate, refs)`` -> BLEU-1..4 of one candidate, as pycocoevalcap's
    ``Bleu`` scores each sentence (its per-image list)."""

    TINY, SMALL = 1e-15, 1e-9                                # the toolkit's smoothing constants

    def __init__(self, n: int = N):
        self.n = n
        self._ref_cache: dict = {}

    def _refs(self, refs):
        key = tuple(refs)
        cooked = self._ref_cache.get(key)
        if cooked is None:
            most: Counter = Counter()
            for r in refs:
                for g, c in ngrams(r, self.n).items():
                    most[g] = max(most[g], c)
            cooked = self._ref_cache[key] = ([len(r) for r in refs], most)
        return cooked

    def score(self, candidate: Sequence[int], refs: Sequence[Sequence[int]]) -> list[float]:
        if not refs:
            return [0.0] * self.n
        lens, most = self._refs(refs)
        length = len(candidate)
        correct, guess = [0] * self.n, [max(0, length - k) for k in range(self.n)]
        for g, c in ngrams(candidate, self.n).items():
            correct[len(g) - 1] += min(c, most.get(g, 0))
        # The "closest" reference length, ties to the shorter.
        ref_len = min(lens, key=lambda r: (abs(r - length), r))
        ratio = (length + self.TINY) / (ref_len + self.SMALL)
        brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
        out, product = [], 1.0
        for k in range(self.n):
            product *= (correct[k] + self.TINY) / (guess[k] + self.SMALL)
            out.append(product ** (1 / (k + 1)) * brevity)
        return out


class Reward:
    """``trainer.scst_reward``: a weighted sum of CIDEr-D and BLEU-n per sampled caption, e.g.
    ``{cider: 1, bleu_4: 2}``. ``batch`` has the signature ``Captioner.enable_self_critical``
    calls: samples (B*K, L) ids, an image's K samples together; captions (B, C, L) ids of the
    references (all-padding rows are absent captions) -> (B*K,) float32 rewards."""

    def __init__(self, weights: dict, train_refs: Sequence[Sequence[Sequence[int]]]):
        unknown = sorted(set(weights) - set(SCORES))
        if unknown:
            raise ValueError(f"unknown reward score(s) {unknown}; known: {list(SCORES)}")
        self.weights = {k: float(w) for k, w in weights.items() if float(w) != 0}
        self.cider = CiderD(train_refs) if "cider" in self.weights else None
        self.bleu = SentenceBleu() if any(k.startswith("bleu") for k in self.weights) else None

    def __str__(self) -> str:
        names = {"cider": "CIDEr-D", **{f"bleu_{n}": f"BLEU-{n}" for n in range(1, N + 1)}}
        return " + ".join(names[k] if w == 1 else f"{w:g}×{names[k]}"
                          for k, w in self.weights.items())

    def score(self, candidate: Sequence[int], refs: Sequence[Sequence[int]]) -> float:
        total = 0.0
        if self.cider is not None:
            total += self.weights["cider"] * self.cider.score(candidate, refs)
        if self.bleu is not None:
            bleu = self.bleu.score(candidate, refs)
            total += sum(w * bleu[int(k[-1]) - 1]
                         for k, w in self.weights.items() if k.startswith("bleu"))
        return total

    def batch(self, samples: np.ndarray, captions: np.ndarray, start_id: int,
              end_id: int) -> np.ndarray:
        b = captions.shape[0]
        k = samples.shape[0] // max(b, 1)
        out = np.zeros(samples.shape[0], np.float32)
        for i in range(b):
            refs = references(captions[i], start_id, end_id)
            for j in range(i * k, (i + 1) * k):
                out[j] = self.score(strip(samples[j], start_id, end_id), refs)
        return out
