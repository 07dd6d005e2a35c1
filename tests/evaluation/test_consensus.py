"""Consensus reranking (decode.rerank=consensus): the beam's every candidate, the vote of the
nearest training images' captions, and the whole path through evaluate_split and eval.py's names."""

from __future__ import annotations

import numpy as np
import pytest

from captioning import ConfigError
from tests.conftest import compose_config


def test_n_best_holds_every_beam_and_its_best_is_the_plain_caption():
    import keras

    from captioning.data.datamodule import build_data
    from captioning.models.build import build_model
    from captioning.models.decoding import Generator

    cfg = compose_config("debug=tiny", "decode.method=beam", "decode.beam_size=4",
                         "decode.length_penalty=0.6")
    data = build_data(cfg, progress=False)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, data.vocab.size)
    generator = Generator.from_config(model, data.vocab, cfg.decode)
    images = next(iter(data.image_dataset(data.splits["train"][:5], 5)))
    ids, scores = (keras.ops.convert_to_numpy(x) for x in generator.n_best(images))
    assert ids.shape == (5, 4, data.vocab.seq_len) and scores.shape == (5, 4)
    assert (ids[:, :, 0] == data.vocab.start_id).all()
    best = ids[np.arange(5), scores.argmax(1)]
    np.testing.assert_array_equal(best, keras.ops.convert_to_numpy(generator(images)))
    greedy = Generator.from_config(model, data.vocab, compose_config("debug=tiny").decode)
    with pytest.raises(ConfigError, match="decode.rerank needs decode.method=beam"):
        greedy.n_best(images)


def test_the_vote_picks_the_candidate_its_nearest_images_agree_with():
    from captioning.evaluation.consensus import NeighbourVote

    # Three training images: two near the query whose captions say 1 2 3, one far saying 4 5 6.
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]], "float32")
    caps = [[(1, 2, 3), (1, 2, 3, 7)], [(1, 2, 3)], [(4, 5, 6)]]
    vote = NeighbourVote(feats, caps, k=2)
    np.testing.assert_array_equal(vote.neighbours(np.array([[1.0, 0.05]])), [[0, 1]])
    # The beam prefers the far images' words; the neighbours vote for the other candidate.
    assert vote.choose(np.array([[1.0, 0.05]]), [[(4, 5, 6), (1, 2, 3)]],
                       np.array([[-0.1, -2.0]])) == [1]
    assert vote.choose(np.array([[0.0, 1.0]]), [[(4, 5, 6), (1, 2, 3)]],
                       np.array([[-2.0, -0.1]])) == [0]
    # Equal votes (the same caption twice, or an empty one against nothing): the beam's order.
    assert vote.choose(np.array([[1.0, 0.0]]), [[(1, 2, 3), (1, 2, 3)]],
                       np.array([[-3.0, -1.0]])) == [1]
    assert vote.choose(np.array([[1.0, 0.0]]), [[(), (9,)]], np.array([[0.0, -5.0]])) == [1]
    # A query that is a training image itself (val, trained on with train_on_val) is not its own
    # neighbour.
    named = NeighbourVote(feats, caps, k=2, ids=["a.jpg", "b.jpg", "c.jpg"])
    np.testing.assert_array_equal(named.neighbours(np.array([[1.0, 0.0]]), ["a.jpg"]), [[1, 2]])
    np.testing.assert_array_equal(named.neighbours(np.array([[1.0, 0.0]]), ["z.jpg"]), [[0, 1]])


def test_reranked_captions_are_beams_and_the_scores_say_how(tmp_path):
    import keras

    from captioning.data.datamodule import build_data
    from captioning.evaluation.consensus import training_vote
    from captioning.evaluation.evaluate import evaluate_split
    from captioning.models.build import build_model
    from captioning.models.decoding import Generator

    cfg = compose_config("debug=tiny", "decode.method=beam", "decode.beam_size=3",
                         "decode.rerank=consensus", "decode.rerank_neighbours=4",
                         "decode.rerank_views=flip", "evaluation.meteor=false")
    data = build_data(cfg, progress=False)
    keras.utils.set_random_seed(1)
    model = build_model(cfg, data.vocab.size)
    records = data.splits["val"]
    vote = training_vote(model, data, cfg.decode, 8)
    assert len(vote.captions) == len(data.splits["train"]) and vote.k == 4
    scores, preds = evaluate_split(model, data, records, cfg)
    assert len(preds) == len(records)
    assert any("reranked by consensus with the captions of its 4 nearest" in n
               for n in scores.notes)
    generator = Generator.from_config(model, data.vocab, cfg.decode)
    beams = []
    for images in data.image_dataset(records, 8):
        ids = keras.ops.convert_to_numpy(generator.n_best(images)[0])
        beams += [data.vocab.decode(b) for b in ids]
    assert all(p in b for p, b in zip(preds, beams, strict=True))


@pytest.mark.parametrize("bad", [["decode.method=greedy"],
                                 ["decode.method=beam", "decode.tta=flip"],
                                 ["decode.method=beam", "decode.rerank_neighbours=0"],
                                 ["decode.method=beam", "decode.rerank=vote"]])
def test_rerank_settings_that_cannot_work_are_one_clear_error(bad):
    from captioning.config_check import check_config

    with pytest.raises(ConfigError, match="decode.rerank"):
        check_config(compose_config("debug=tiny", "decode.rerank=consensus", *bad))


def test_eval_and_caption_paths_check_rerank_values_without_check_config():
    """eval.py and caption.py merge decode.* overrides without check_config: the Generator
    checks the rerank keys, and evaluate_split refuses a method it cannot rerank before the
    training images are encoded."""
    from omegaconf import OmegaConf

    from captioning.data.datamodule import build_data
    from captioning.evaluation.evaluate import evaluate_split
    from captioning.models.build import build_model
    from captioning.models.decoding import Generator

    cfg = compose_config("debug=tiny")
    data = build_data(cfg, progress=False)
    model = build_model(cfg, data.vocab.size)
    for key, value in (("rerank", "Consensus"), ("rerank_neighbours", 0),
                       ("rerank_views", "bogus")):
        bad = OmegaConf.merge(cfg.decode, {"method": "beam", key: value})
        with pytest.raises(ConfigError, match=f"decode.{key} must be"):
            Generator.from_config(model, data.vocab, bad)
    cfg.decode.rerank, cfg.decode.num_captions = "consensus", 2
    cfg.decode.method = "top_k"
    with pytest.raises(ConfigError, match="decode.num_captions=2"):
        evaluate_split(model, data, data.splits["val"], cfg)


def test_eval_names_a_reranked_result_apart():
    from omegaconf import OmegaConf

    from eval import result_name

    decode = OmegaConf.create({"method": "beam", "beam_size": 10, "length_penalty": 0.3,
                               "tta": "none", "rerank": "consensus", "rerank_neighbours": 10,
                               "rerank_views": "dihedral"})
    assert (result_name("untouched", decode, "best", ["decode.rerank=consensus"])
            == "untouched_beam10_lp0.3_consensus10_dihedral")
    decode.rerank = "none"
    assert result_name("untouched", decode, "best", []) == "untouched_beam10_lp0.3"
