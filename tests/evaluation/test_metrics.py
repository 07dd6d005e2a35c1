"""The COCO caption metrics: same numbers as pycocoevalcap used directly, sane extremes,
empty predictions, and the no-Java tokenizer against Stanford's on real captions."""

from __future__ import annotations

import csv

import pytest

from captioning.evaluation.metrics import java_available, python_tokenize, score, tokenize
from tests.conftest import SHARED_DATA

REFS = {
    "1": ["A dog runs across the grass.", "a brown dog running on a lawn",
          "The dog is running outside."],
    "2": ["Two people ride bikes down a street.", "cyclists on a city road",
          "two men riding bicycles"],
    "3": ["A child's red ball sits on the floor.", "a red ball on a wooden floor",
          "a ball that is red"],
}
PREDS = {"1": "a dog running on the grass", "2": "two people riding bikes on a road",
         "3": "a red ball"}
needs_java = pytest.mark.skipif(not java_available(), reason="Java is not installed")


@needs_java
def test_scores_equal_pycocoevalcap_run_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours = score(REFS, PREDS)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    bleu, _ = Bleu(4).compute_score(gts, res)
    assert [ours.corpus[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-9)
    assert ours.corpus["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)
    assert ours.corpus["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert ours.corpus["meteor"] == pytest.approx(Meteor().compute_score(gts, res)[0], abs=1e-6)
    assert set(ours.per_image) == set(REFS) and {"bleu_4", "cider"} <= set(ours.per_image["1"])
    # The METEOR Java process is kept for the next score (its start costs ~10 s), and scores
    # the same; a dead one is replaced.
    from captioning.evaluation import metrics

    java = metrics._METEOR.meteor_p
    assert score(REFS, PREDS).corpus["meteor"] == ours.corpus["meteor"]
    assert metrics._METEOR.meteor_p is java and java.poll() is None
    java.kill()
    java.wait()
    assert score(REFS, PREDS).corpus["meteor"] == ours.corpus["meteor"]
    assert metrics._METEOR.meteor_p is not java


@pytest.mark.parametrize("use_java", [pytest.param(True, marks=needs_java), False])
def test_a_perfect_caption_outscores_an_unrelated_one(use_java):
    perfect = score(REFS, {k: v[0] for k, v in REFS.items()}, use_java=use_java)
    unrelated = score(REFS, {k: "an airplane parked at the gate" for k in REFS}, use_java=use_java)
    assert perfect.corpus["bleu_4"] == pytest.approx(1.0)
    assert perfect.corpus["cider"] > 1.0 > unrelated.corpus["cider"]
    if not use_java:
        assert "meteor" not in perfect.corpus and any("Java not found" in n for n in perfect.notes)


@pytest.mark.parametrize("use_java", [pytest.param(True, marks=needs_java), False])
def test_empty_prediction_is_scored_not_a_crash(use_java):
    s = score(REFS, {**PREDS, "2": ""}, use_java=use_java)
    assert s.per_image["2"]["cider"] == 0.0
    assert s.per_image["2"]["bleu_4"] == pytest.approx(0.0, abs=1e-6)
    assert s.per_image["1"]["cider"] > 0


def test_mismatched_ids_are_an_error():
    with pytest.raises(ValueError, match="same images"):
        score(REFS, {"1": "a dog"})


def test_python_tokenizer_splits_clitics_and_drops_punctuation():
    assert (python_tokenize("A child's red ball, on the floor.")
            == "a child 's red ball on the floor")
    assert python_tokenize("Don't stop -- \"now\"!") == "do n't stop now"
    assert python_tokenize("A man in a t-shirt") == "a man in a t-shirt"


@needs_java
@pytest.mark.skipif(not (SHARED_DATA / "flickr8k_sample").is_dir(), reason="../shared/data absent")
def test_python_tokenizer_agrees_with_java_on_real_captions():
    with open(SHARED_DATA / "flickr8k_sample" / "captions.txt", encoding="utf-8") as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    caps = {str(i): [c] for i, c in enumerate(captions)}
    java, py = tokenize(caps, use_java=True), tokenize(caps, use_java=False)
    differ = [(caps[k][0], java[k][0], py[k][0]) for k in caps if java[k] != py[k]]
    # Report the disagreements (if any) so a regression names the caption.
    assert len(differ) <= len(caps) * 0.01, differ[:10]


def test_cider_reward_equals_pycocoevalcap_cider():
    """The self-critical reward (CIDEr-D on ids, document frequencies from given references)
    is the toolkit's Cider when both count document frequencies over the same references."""
    import numpy as np
    from pycocoevalcap.cider.cider import Cider

    from captioning.evaluation.rewards import CiderD, Reward, references, strip

    gts = {"a": ["a man rides a horse on the beach", "a person riding a horse",
                 "horse and rider near the sea"],
           "b": ["two dogs play in the snow", "dogs running through snow",
                 "two brown dogs in a snowy field"],
           "c": ["a plane on a runway", "an airplane parked at the airport",
                 "a white plane on the tarmac"]}
    res = {"a": ["a man riding a horse on a beach"], "b": ["a dog in the snow"],
           "c": ["a plane on a runway"]}
    corpus, per_image = Cider().compute_score(gts, res)
    words = sorted({w for caps in [*gts.values(), *res.values()] for c in caps for w in c.split()})
    ids = {w: i + 4 for i, w in enumerate(words)}           # 0 pad, 1 unk, 2 start, 3 end
    enc = lambda c: tuple(ids[w] for w in c.split())  # noqa: E731
    reward = CiderD([[enc(c) for c in gts[k]] for k in gts])
    ours = [reward.score(enc(res[k][0]), [enc(c) for c in gts[k]]) for k in gts]
    np.testing.assert_allclose(ours, per_image, rtol=1e-6)
    assert ours[2] > ours[1] > 0                               # a near copy beats a partial match
    # score_all: several candidates against one reference set, the same figures
    cands = [enc(res[k][0]) for k in gts]
    np.testing.assert_allclose(reward.score_all(cands, [enc(c) for c in gts["c"]]),
                               [reward.score(c, [enc(x) for x in gts["c"]]) for c in cands])
    assert reward.score_all(cands, []) == [0.0, 0.0, 0.0]

    # batch(): rows with start/end/padding, an image's samples together, absent captions skipped.
    row = lambda c, n=12: np.array([2, *enc(c), 3] + [0] * (n - len(c.split()) - 2), np.int32)  # noqa: E731
    captions = np.stack([np.stack([row(c) for c in gts[k]] + [np.zeros(12, np.int32)])
                         for k in ("a", "c")])
    samples = np.stack([row(res["a"][0]), row("horse"), row(res["c"][0]), row("two dogs")])
    got = Reward({"cider": 1.0, "bleu_4": 0.0}, [[enc(c) for c in gts[k]] for k in gts]).batch(
        samples, captions, start_id=2, end_id=3)
    assert got.shape == (4,) and got.dtype == np.float32
    assert got[0] == pytest.approx(ours[0], rel=1e-6) and got[2] == pytest.approx(ours[2], rel=1e-6)
    assert got[3] == 0.0 and strip([2, 5, 6, 3, 7, 0], 2, 3) == (5, 6)
    assert references([[2, 5, 6, 3, 0], [0, 0, 0, 0, 0], [2, 7, 3, 0, 0]], 2, 3) == ((5, 6), (7,))


def test_bleu_reward_equals_pycocoevalcap_sentence_bleu():
    """The BLEU part of trainer.scst_reward is the toolkit's per-sentence BLEU-1..4 (its
    smoothing, brevity penalty against the closest reference), and Reward sums the weighted
    scores."""
    import numpy as np
    from pycocoevalcap.bleu.bleu import Bleu

    from captioning.evaluation.rewards import Reward, SentenceBleu

    gts = {"a": ["a man rides a horse on the beach", "a person riding a horse",
                 "horse and rider near the sea"],
           "b": ["two dogs play in the snow", "dogs running through snow",
                 "two brown dogs in a snowy field"],
           "c": ["a plane on a runway", "an airplane parked at the airport",
                 "a white plane on the tarmac"],
           "d": ["a red bus on a city street", "a double decker bus", "a bus parked by the road"]}
    # A near copy, a short partial match (brevity penalty), an exact copy, no 4-gram match.
    res = {"a": ["a man riding a horse on a beach"], "b": ["a dog"], "c": ["a plane on a runway"],
           "d": ["a bus on the road near a city"]}
    _, per_image = Bleu(4).compute_score(gts, res, verbose=0)
    words = sorted({w for caps in [*gts.values(), *res.values()] for c in caps for w in c.split()})
    ids = {w: i + 4 for i, w in enumerate(words)}
    enc = lambda c: tuple(ids[w] for w in c.split())  # noqa: E731
    bleu = SentenceBleu()
    # (images, 4)
    ours = np.array([bleu.score(enc(res[k][0]), [enc(c) for c in gts[k]]) for k in gts])
    np.testing.assert_allclose(ours, np.array(per_image).T, rtol=1e-9, atol=1e-12)
    assert ours[2, 3] == pytest.approx(1.0) and ours[3, 3] < 1e-3 < ours[3, 1]
    assert bleu.score(enc("a dog"), []) == [0.0] * 4

    refs = [[enc(c) for c in gts[k]] for k in gts]
    mixed = Reward({"cider": 1.0, "bleu_4": 2.0, "bleu_1": 0.5}, refs)
    cider_only = Reward({"cider": 1.0, "bleu_4": 0.0}, refs)
    assert str(mixed) == "CIDEr-D + 2×BLEU-4 + 0.5×BLEU-1" and str(cider_only) == "CIDEr-D"
    for i, k in enumerate(gts):
        hyp, r = enc(res[k][0]), [enc(c) for c in gts[k]]
        expected = cider_only.score(hyp, r) + 2 * ours[i, 3] + 0.5 * ours[i, 0]
        assert mixed.score(hyp, r) == pytest.approx(expected)
    assert Reward({"bleu_4": 1.0}, refs).cider is None        # unweighted scores are not computed
    with pytest.raises(ValueError, match="unknown reward"):
        Reward({"rouge": 1.0}, refs)
