"""Models: the backbone registry, the image encoder, the two decoders (Transformer, GRU with
attention), the ``Captioner`` keras.Model (train_step / test_step), and decoding."""

from captioning.quiet import import_tensorflow

import_tensorflow()   # TensorFlow loads with this package: without its start-up noise (quiet.py)
