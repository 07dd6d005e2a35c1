"""Evaluation: the COCO caption metrics (pycocoevalcap), corpus-level and per image."""
