"""The recipes' text and data rules (issue 22): punctuation deleted or spaced, recipe A's length
count, truncation, a minimum word count, the first caption only, and N sampled captions."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from captioning import ConfigError
from captioning.config_check import check_config
from captioning.data.text import Vocabulary, filter_captions, normalize, wrap
from tests.conftest import compose_config


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


def test_presets_carry_the_recipes_text_and_decoding():
    a = compose_config("experiment=flickr8k_transformer", "dataset.root=/data/flickr8k")
    assert (a.text.punctuation, a.text.length_counts, a.text.filter, a.text.min_tokens,
            a.text.seq_len, a.text.min_count) == ("delete", "raw", "drop_image", 5, 25, 1)
    b = compose_config("experiment=coco_gru")
    assert (b.dataset.captions_per_image, b.dataset.restval) == (1, False)
    assert (b.decode.method, b.decode.k, b.decode.num_captions) == ("top_k", 10, 5)
    assert b.text.punctuation == "delete" and b.text.seq_len == 64
    for cfg in (a, b):
        check_config(cfg)


def test_several_captions_need_sampling():
    with pytest.raises(ConfigError, match="decode.num_captions=3 .*decode.method=top_k or top_p"):
        check_config(compose_config("decode.num_captions=3", "decode.method=beam"))
    check_config(compose_config("decode.num_captions=3", "decode.method=top_p"))


def test_n_sampled_captions_per_image_reach_csv_and_grid(flickr8k_kaggle, tmp_path):
    """A tiny untrained model: 3 top-k captions per image; the first is the prediction, the
    others go to prediction_2/3 of predictions.csv and all to the grid's samples column."""
    import kangas
    import keras

    from captioning.evaluation.evaluate import write_predictions
    from captioning.models.build import build_model
    from captioning.models.decoding import Generator, sample_records
    from captioning.tracking.kangas_grids import write_predictions_grid

    cfg = compose_config("debug=tiny", "dataset=flickr8k", f"dataset.root={flickr8k_kaggle}",
                         "dataset.val_fraction=0.5", "decode.method=top_k", "decode.k=10",
                         "decode.num_captions=3", "decode.temperature=3.0", "text.seq_len=8",
                         "logger=none")
    data = build(cfg)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, data.vocab.size)
    records = data.splits["val"]
    generator = Generator.from_config(model, data.vocab, cfg.decode, seed=0)
    samples = sample_records(generator, data, records, 4, 3)
    assert len(samples) == len(records) and all(len(s) == 3 for s in samples)
    r = SimpleNamespace(records=records, samples=samples, predictions=[s[0] for s in samples],
                        per_image={})
    assert any(len(set(s)) > 1 for s in r.samples)               # sampled, not repeated
    write_predictions(tmp_path / "p.csv", r.records, r.predictions, r.per_image, r.samples)
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    assert list(rows[0]) == ["image", "references", "prediction", "bleu_4", "cider",
                             "prediction_2", "prediction_3"]
    assert [[x["prediction"], x["prediction_2"], x["prediction_3"]] for x in rows] == r.samples
    grid = write_predictions_grid(tmp_path / "g.datagrid", r.records, r.predictions, r.per_image,
                                  1, "run", samples=r.samples)
    shown = [g["samples"] for g in kangas.read_datagrid(str(grid)).to_dicts()]
    assert shown == [" | ".join(s) for s in r.samples]
