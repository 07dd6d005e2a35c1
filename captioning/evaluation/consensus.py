"""Consensus reranking (``decode.rerank=consensus``): of the beam's ``decode.beam_size``
captions for an image, keep the one most like the captions of the training images nearest to it.

An image's neighbours are the ``decode.rerank_neighbours`` training images whose encoder memory
(its mean over positions, averaged over ``decode.rerank_views``: the image and its mirror, or its
8 flips and rotations) is closest in cosine; a candidate's consensus is its CIDEr-D against all
of their reference captions, with document frequencies from the training captions
(``rewards.CiderD``). Devlin et al. (2015, "Exploring Nearest Neighbor Approaches for Image
Captioning", arXiv:1505.04467) pick, by this consensus, one of the neighbours' own captions; here
the candidates are the model's beams, so every caption is still the model's and the neighbours
only vote. A tie keeps the beam with the higher score.

Our own code: the libraries of the field score captions (pycocoevalcap) or sample them
(keras-hub); none reranks a beam against retrieved captions.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from captioning.evaluation.rewards import CiderD, strip
from captioning.models.decoding import Generator, test_time_views


def memory_features(model, data, records, batch_size: int, views: str = "none") -> np.ndarray:
    """(N, D) float32: each record's encoder memory, averaged over its positions and over
    ``views``. Views are made from images, so with views the images are read even where the
    feature cache holds the backbone's tokens (the same figures as eval.py, which has no cache)."""
    return np.concatenate([batch_features(model, inputs, views) for inputs in
                           data.image_dataset(records, batch_size, use_features=views == "none")])


def batch_features(model, inputs, views: str = "none") -> np.ndarray:
    """One batch of model inputs -> (B, D) float32 (``memory_features``)."""
    n = ops.shape(inputs)[0]
    if views != "none":
        inputs = test_time_views(inputs, views)
    memory = ops.mean(ops.cast(model.encode(inputs, training=False), "float32"), axis=1)
    return ops.convert_to_numpy(ops.mean(ops.reshape(memory, (n, -1, ops.shape(memory)[-1])),
                                         axis=1))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class NeighbourVote:
    """The training images' features and captions; ``choose`` picks each query's candidate.
    ``ids`` (the training images' ids): a query that is itself a training image (val or the
    holdout, with ``dataset.train_on_val`` / ``train_on_holdout``) is never its own neighbour."""

    def __init__(self, features: np.ndarray, captions: list[list[tuple[int, ...]]], k: int,
                 ids: list[str] | None = None):
        self.features, self.captions = _unit(features), captions
        self.k = min(k, len(captions) - 1 if ids else len(captions))
        self.row_of = {i: r for r, i in enumerate(ids or [])}
        self.cider = CiderD(captions)

    def neighbours(self, query: np.ndarray, ids: list[str] | None = None) -> np.ndarray:
        """(B, D) -> (B, k) indices of the nearest training images, nearest first."""
        sims = _unit(query) @ self.features.T
        for b, i in enumerate(ids or []):
            if i in self.row_of:
                sims[b, self.row_of[i]] = -np.inf
        near = np.argpartition(-sims, self.k - 1, axis=1)[:, :self.k]
        order = np.argsort(-np.take_along_axis(sims, near, axis=1), axis=1)
        return np.take_along_axis(near, order, axis=1)

    def choose(self, query: np.ndarray, candidates: list[list[tuple[int, ...]]],
               scores: np.ndarray, ids: list[str] | None = None) -> list[int]:
        """Per query row, the index of its candidate with the highest consensus (ties: the higher
        beam score)."""
        picks = []
        for row, cands, beam in zip(self.neighbours(query, ids), candidates, scores, strict=True):
            refs = [c for j in row for c in self.captions[j]]
            vote = [v if c else -1.0 for v, c in zip(self.cider.score_all(cands, refs), cands,
                                                       strict=True)]
            picks.append(max(range(len(cands)), key=lambda i: (vote[i], beam[i])))
        return picks


def training_vote(model, data, decode_cfg, batch_size: int) -> NeighbourVote:
    """The vote of ``data``'s training images (their first C captions, as trained on)."""
    records = data.splits["train"]
    start, end = data.vocab.start_id, data.vocab.end_id
    captions = [[w for w in (strip(r, start, end) for r in caps) if w]
                for caps in data.encode(records)]
    features = memory_features(model, data, records, batch_size, str(decode_cfg.rerank_views))
    return NeighbourVote(features, captions, int(decode_cfg.rerank_neighbours),
                         [r.id for r in records])


def consensus_records(generator: Generator, data, records, vote: NeighbourVote,
                      batch_size: int, views: str = "none") -> list[str]:
    """One caption per record: its beam's candidate that ``vote`` chooses."""
    start, end = data.vocab.start_id, data.vocab.end_id
    # With views, the vote's features come from the images (``memory_features``), which the
    # feature cache does not hold: a second pass reads them; without, the batch serves both.
    pictures = (iter(data.image_dataset(records, batch_size, use_features=False))
                if views != "none" else None)
    out: list[str] = []
    for batch in data.image_dataset(records, batch_size):
        ids, scores = (ops.convert_to_numpy(x) for x in generator.n_best(batch))    # (B, K, L)
        names = [r.id for r in records[len(out):len(out) + len(ids)]]
        cands = [[strip(row, start, end) for row in beams] for beams in ids]
        pics = batch if pictures is None else next(pictures)
        picks = vote.choose(batch_features(generator.model, pics, views), cands, scores, names)
        out += data.vocab.decode(np.stack([ids[i, p] for i, p in enumerate(picks)]))
    return out
