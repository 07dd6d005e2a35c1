"""The names ``decoder.name``, ``decode.method``, ``decode.tta`` and the keras-hub
``backbone.name`` may take, each list written once, with what each name builds; and the built-in
options' ``_target_`` paths.

Pure Python on purpose. ``captioning.config_rules`` derives its allowed values from these
names, and the config check must run before TensorFlow is imported (composing a config and
every config error stay instant); the code they name imports Keras. So an entry names what it
builds as data (a dotted path, the ``_target_`` of the option's YAML; a number of views), which
the heavy code resolves when it builds (``captioning.plugins.build``). Strings rather than
imports also keep this module a leaf of the import graph: the builders' modules import the
config rules, which import this.

(``dataset.name``'s registry is ``READERS`` in ``captioning/data/readers/__init__.py``: the
readers are pure Python already, so that mapping of functions is its own list.)
"""

from __future__ import annotations

# decoder.name -> the _target_ of conf/decoder/<name>.yaml: a builder in captioning/models/build.py
# (the one place models are assembled), called with vocab_size, max_len and the option's keys.
# A config saved without _target_ is built from its name through this table.
DECODERS = {
    "gru": "captioning.models.build.gru_decoder",
    "transformer": "captioning.models.build.transformer_decoder",
}
# The _target_ of every built-in backbone option: the registry of small_cnn and any
# keras.applications model by name.
BACKBONE_TARGET = "captioning.models.backbones.get_backbone"

# backbone.name -> the _target_ of conf/backbone/<name>.yaml for the keras-hub image encoders
# (patch tokens, their own preprocessing), called with the name, weights and the option's keys.
HUB_BACKBONES = {
    "vit": "captioning.models.hub_backbones.hub_backbone",
    "clip": "captioning.models.hub_backbones.hub_backbone",
}

# decode.method -> how decoding.Generator decodes: keras-hub's greedy, top-k and top-p
# samplers, or our own beam search.
DECODE_METHODS = ("greedy", "beam", "top_k", "top_p")

# decode.tta -> (views per image, what they are), for decoding.test_time_views.
TTA_VIEWS = {
    "none": (1, ""),
    "flip": (2, "each image and its mirror image"),
    "dihedral": (8, "its 8 flips and 90-degree rotations, for overhead imagery"),
}


def rerank_problem(method: str, tta: str, num_captions: int) -> str | None:
    """Why ``decode.rerank`` cannot choose among these beams, or None: it needs beam search on
    the image alone, one caption per image (``check_config`` and ``Generator.check_rerank``)."""
    if method == "beam" and tta == "none" and num_captions == 1:
        return None
    return (f"decode.rerank needs decode.method=beam (its beams are the candidates), "
            f"decode.tta=none and decode.num_captions=1. Received: decode.method={method}, "
            f"decode.tta={tta}, decode.num_captions={num_captions}")
