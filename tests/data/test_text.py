"""Caption text: normalisation (punctuation deleted or spaced, non-ASCII kept), the length rules
(recipe A's raw count, truncation), the vocabulary (round trip, minimum word count), and the
first caption only."""

from __future__ import annotations

import pytest

from captioning import ConfigError
from captioning.data.text import Vocabulary, filter_captions, normalize, wrap
from tests.conftest import CAPTIONS, compose_config


def test_punctuation_delete_is_recipe_a_and_space_stays_the_default():
    assert normalize("A dog's T-shirt, wet.", "delete") == "a dogs tshirt wet"
    assert normalize("A dog's T-shirt, wet.") == "a dog s t shirt wet"
    assert normalize("Ein grüner Baum -- über der Straße!", "delete") == (
        "ein grüner baum über der straße")
    assert compose_config().text.punctuation == "space"
    with pytest.raises(ConfigError, match="text.punctuation must be space or delete"):
        normalize("a dog", "drop")


def test_raw_length_count_is_recipe_a_rule():
    """Recipe A counts the caption's whitespace tokens as written (" ." is one) plus <start>
    and <end>: 5..25. Counting normalised words keeps what it drops, and the reverse."""
    long = " ".join(["w"] * 23) + " ."          # 24 tokens as written, 23 words
    short = "a dog ."                             # 3 tokens as written, 2 words
    caps = [[normalize(long, "delete")], [normalize(short, "delete")]]
    raw = [[len(long.split())], [len(short.split())]]
    kept, _ = filter_captions(caps, "drop_image", 5, 25)
    assert kept == [caps[0], []]
    kept, removed = filter_captions(caps, "drop_image", 5, 25, raw_lengths=raw)
    assert kept == [[], caps[1]] and removed["images (a caption broke the length rule)"] == 1


def test_truncate_cuts_long_captions_and_keeps_their_end_token():
    caps = [["a b c d e f g h i j", "a b c", "a"]]
    kept, removed = filter_captions(caps, "truncate", 4, 8)
    assert kept == [["a b c d e f", "a b c"]]
    assert removed["captions (too short)"] == 1 and removed["captions truncated (kept)"] == 1
    vocab = Vocabulary.build([wrap(c) for c in kept[0]], 50, 8)
    ids = vocab.encode([wrap(kept[0][0])])
    assert ids[0, -1] == vocab.end_id                            # not cut by seq_len


def test_min_count_sends_rare_words_to_unk():
    corpus = [wrap("a red square"), wrap("a red circle"), wrap("a blue square")]
    vocab = Vocabulary.build(corpus, None, 8, min_count=2)
    assert set(vocab.tokens[2:]) == {"<start>", "<end>", "a", "red", "square"}
    assert vocab.decode(vocab.encode([wrap("a blue circle")])) == ["a [UNK] [UNK]"]
    assert Vocabulary.build(corpus, 5, 8, min_count=2).size == 5         # top-K still applies
    assert Vocabulary.build(corpus, 10000, 8).tokens == Vocabulary.build(corpus, None, 8).tokens


def test_one_caption_per_image_is_the_first(flickr8k_kaggle):
    cfg = compose_config("dataset=flickr8k", f"dataset.root={flickr8k_kaggle}",
                         "dataset.captions_per_image=1", "dataset.val_fraction=0.25",
                         "text.filter=none", "text.punctuation=delete")
    data = build(cfg)
    train = data.splits["train"]
    ids = data.encode(train)
    assert ids.shape[1] == 1
    assert data.vocab.decode(ids[:, 0]) == [normalize(r.captions[0], "delete") for r in train]
    # the vocabulary is learned from the captions training uses: the first ones
    firsts = {w for r in train for w in normalize(r.captions[0], "delete").split()}
    assert set(data.vocab.tokens[2:]) - {"<start>", "<end>"} == firsts


def build(cfg):
    from captioning.data.datamodule import build_data

    return build_data(cfg, progress=False)


def test_normalize_keeps_non_ascii_letters():
    assert normalize("Ein grüner Baum, über der Straße!") == "ein grüner baum über der straße"
    assert normalize("Một con chó đang chạy.") == "một con chó đang chạy"
    assert normalize("A dog's ball -- <odd> _x_") == "a dog s ball odd x"


def test_length_filters_count_what_they_remove():
    caps = [["a b c", "a b c d e f g h"], ["a", "a b c"]]
    kept, removed = filter_captions(caps, "drop_caption", min_tokens=5, max_tokens=8)
    assert kept == [["a b c"], ["a b c"]] and removed["captions (length rule)"] == 2
    kept, removed = filter_captions(caps, "drop_image", min_tokens=5, max_tokens=8)
    assert kept == [[], []] and removed["images (a caption broke the length rule)"] == 2


def test_vocabulary_encodes_decodes_and_reloads_identically(tmp_path):
    corpus = [wrap(normalize(c)) for caps in CAPTIONS.values() for c in caps]
    vocab = Vocabulary.build(corpus, size=50, seq_len=12)
    ids = vocab.encode([wrap("the red square"), wrap("grüner unseenword")])
    assert ids.shape == (2, 12) and ids[0, 0] == vocab.start_id and ids[0, 4] == vocab.end_id
    assert vocab.decode(ids) == ["the red square", "grüner [UNK]"]
    vocab.save(tmp_path / "v.json")
    again = Vocabulary.load(tmp_path / "v.json")
    assert again.tokens == vocab.tokens
    assert (again.encode([wrap("the red square")]) == ids[:1]).all()
