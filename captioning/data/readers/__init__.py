"""One reader per on-disk layout: ``reader(cfg, report) -> (records, official_split)``, one
``Record`` per image, and ``{image name: train | val | test}`` where the layout ships its own
split lists (Flickr8k's original release), else ``None``. What a reader skips goes into the
``DataReport`` it is given. Nothing downstream knows which layout the data came from.

Every problem with the data is found here, while indexing, and reported as one message that
names the file (and line) and the fix, never as a traceback from inside tf.data.

Modules: ``flickr8k`` (Kaggle captions.txt or the original Flickr8k.token.txt),
``flickr30k`` (Kaggle results.csv), ``karpathy`` (dataset_*.json), ``coco_json`` (raw COCO
annotations), ``tfds_coco`` (TFDS coco_captions), and ``common`` for what they share. A
reader module imports only ``common``; this file imports the readers and names them in
``READERS`` (``dataset.name`` -> reader).
"""

from __future__ import annotations

from captioning.data.readers import coco_json, flickr8k, flickr30k
from captioning.data.readers.coco_json import read_coco_json
from captioning.data.readers.common import MAX_NAMED, require_dir
from captioning.data.readers.flickr8k import read_captions_csv, read_flickr8k, read_token_file
from captioning.data.readers.flickr30k import read_flickr30k
from captioning.data.readers.karpathy import read_karpathy
from captioning.data.readers.tfds_coco import read_coco_tfds

READERS = {
    "coco": read_coco_tfds,
    "flickr8k": read_flickr8k,
    "synthetic": read_flickr8k,     # written to disk in the Kaggle Flickr8k layout
    "flickr30k": read_flickr30k,
    "karpathy": read_karpathy,
    "coco_json": read_coco_json,
}

# The layouts read from one folder, dataset.root, and what it holds.
ROOTS = {"flickr8k": flickr8k.CONTENTS, "flickr30k": flickr30k.CONTENTS,
         "coco_json": coco_json.CONTENTS}


def check_location(cfg) -> None:
    """``dataset.root`` exists, for the layouts in ``ROOTS`` (the reader checks what is in it):
    run.py calls this with the config check, so a missing folder is an error before
    TensorFlow starts, not after."""
    if cfg.name in ROOTS:
        require_dir(cfg.root, ROOTS[cfg.name], cfg.name)


__all__ = [
    "MAX_NAMED", "READERS", "ROOTS", "check_location", "read_captions_csv", "read_coco_json",
    "read_coco_tfds", "read_flickr8k", "read_flickr30k", "read_karpathy", "read_token_file",
]
