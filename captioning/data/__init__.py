"""Data: one ``Record`` type for every dataset, one reader per on-disk layout, text
normalisation and vocabulary, the tf.data pipeline, and the embedded synthetic dataset."""
