"""Models: the backbone registry, the image encoder, the two decoders (Transformer, GRU with
attention), the ``Captioner`` keras.Model (train_step / test_step), and decoding."""
