"""captioning.export: the exported text matches the vocabulary's decode."""

from __future__ import annotations


def test_export_text_matches_the_vocabulary_decode_unk_included():
    import numpy as np
    import tensorflow as tf

    from captioning.data.text import Vocabulary
    from captioning.export import ids_to_text

    vocab = Vocabulary(["", "[UNK]", "<start>", "<end>", "a", "dog"], seq_len=8)
    ids = np.array([[2, 4, 1, 5, 3, 4, 0], [2, 5, 0, 4, 3, 0, 0], [2, 3, 4, 4, 4, 4, 4]])
    got = [t.decode() for t in ids_to_text(tf.constant(ids), tf.constant(vocab.tokens),
                                           vocab.start_id, vocab.end_id).numpy()]
    assert got == vocab.decode(ids) == ["a [UNK] dog", "dog a", ""]
