"""Training callbacks: the validation captions' diversity and its one warning."""

from __future__ import annotations

from tests.conftest import compose_config


def test_one_warning_when_validation_captions_stop_differing(tmp_path, capsys):
    from types import SimpleNamespace

    from captioning.data.text import END, START, Vocabulary, wrap
    from captioning.training.callbacks import ValidationCaptions

    captions = ["a red square on grey", "a blue circle", "the green tree", "a yellow sun"]
    vocab = Vocabulary.build([wrap(c) for c in captions], 100, 12)
    data = SimpleNamespace(splits={"val": []}, vocab=vocab)
    cb = ValidationCaptions(data, compose_config("debug=tiny", "logger=none"), tmp_path)
    logs = {}
    cb._diversity(1, ["a red square"] * 18 + ["a blue circle", "the tree"], logs)   # 15%
    cb._diversity(2, ["a red square"] * 19 + ["a blue circle"], logs)               # 10%
    cb._diversity(3, ["a red square"] * 20, logs)                                   # 5%
    cb._diversity(4, ["a red square"] * 20, logs)
    assert logs["val_distinct"] == 1 / 20
    words = {t for t in vocab.tokens if t not in ("", "[UNK]", START, END)}
    assert logs["val_vocab_used"] == len({"a", "red", "square"}) / len(words)
    out = capsys.readouterr().out
    assert out.count("warning:") == 1                                  # once, when under 10%
    assert "epoch 3: only 5% of 20 validation captions are distinct" in out
