"""keras-hub image encoders as backbones: ``vit`` (``keras_hub.models.ViTBackbone``) and
``clip`` (CLIP's vision tower, ``keras_hub.models.CLIPVisionEncoder``).

Each maps images to patch tokens ``(B, (H/p) * (W/p), D)`` that go to the decoder as they are
(no feature map to flatten). The class token is dropped: what remains is the patch grid,
row-major, which ``captioning.models.attention`` lays over the image as it does a CNN's feature
map. Each has its own preprocessing, keras-hub's image converter (``ViTImageConverter``,
``CLIPImageConverter``): a preset's own, or the published scale and offset of the family.

``backbone.weights``: ``preset`` loads ``backbone.preset`` with ``from_preset`` (a keras-hub
preset name, fetched from Kaggle, or a local preset folder); ``null`` builds the architecture
from ``patch_size``, ``num_layers``, ``num_heads``, ``hidden_dim``, ``mlp_dim`` with random
weights (no network); a file is loaded into that architecture by ``build_backbone``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from captioning import ConfigError
from captioning.models.backbones import Backbone

# CLIP's published image normalisation (OpenAI CLIP; keras-hub's CLIP presets use it too).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class HubFamily:
    backbone: str        # keras_hub.models.<backbone>.from_preset(preset)
    converter: str       # keras_hub.layers.<converter>
    scale: tuple         # 0..255 -> the network's input, without a preset: x * scale + offset
    offset: tuple
    kaggle: str          # where its presets are published


FAMILIES = {
    # google/vit presets: pixels to [-1, 1]
    "vit": HubFamily("ViTBackbone", "ViTImageConverter", (1 / 127.5,) * 3, (-1.0,) * 3,
                     "https://www.kaggle.com/models/keras/vit"),
    "clip": HubFamily("CLIPBackbone", "CLIPImageConverter",
                      tuple(1 / (255 * s) for s in CLIP_STD),
                      tuple(-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)),
                      "https://www.kaggle.com/models/keras/clip"),
}
ARCH_KEYS = ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")


def hub_options(b) -> dict:
    """The keys of a ``backbone`` config node that a keras-hub backbone reads."""
    return {k: b.get(k) for k in ("preset", "weights", *ARCH_KEYS) if b.get(k) is not None}


def _encoder(name: str, image_shape, arch: dict):
    """The family's network with random weights, from the architecture keys."""
    import keras_hub

    if name == "vit":
        return keras_hub.models.ViTBackbone(
            image_shape=image_shape, patch_size=arch["patch_size"],
            num_layers=arch["num_layers"], num_heads=arch["num_heads"],
            hidden_dim=arch["hidden_dim"], mlp_dim=arch["mlp_dim"])
    return keras_hub.models.CLIPVisionEncoder(
        patch_size=arch["patch_size"], hidden_dim=arch["hidden_dim"],
        num_layers=arch["num_layers"], num_heads=arch["num_heads"],
        intermediate_dim=arch["mlp_dim"], image_shape=image_shape)


def _from_preset(name: str, what: str, preset: str):
    """``keras_hub.<what>.from_preset(preset)``; a preset that cannot be found or fetched is one
    ConfigError that says where to put a downloaded copy."""
    import keras_hub

    family = FAMILIES[name]
    cls_name = family.backbone if what == "models" else family.converter
    cls = getattr(getattr(keras_hub, what), cls_name)
    local = Path(os.path.expanduser(preset))
    if ("/" in preset and "://" not in preset) and not local.is_dir():
        raise ConfigError(f"backbone.preset={preset}: no such folder. A local keras-hub preset "
                          f"is a folder holding config.json and model.weights.h5.")
    try:
        return cls.from_preset(str(local) if local.is_dir() else preset)
    except Exception as e:  # noqa: BLE001 - kagglehub/requests raise many kinds offline
        raise ConfigError(
            f"Could not load the keras-hub preset backbone.preset={preset} for backbone={name} "
            f"({type(e).__name__}: {str(e)[:160]}). Without a network: on a machine with one, "
            f"run keras_hub.models.{family.backbone}.from_preset('{preset}') (keras-hub keeps "
            f"it in ~/.cache/kagglehub/models/keras/{name}/keras/{preset}/<version>/) or "
            f"download it from {family.kaggle}; copy that folder here and pass its path, "
            f"backbone.preset=/path/to/{preset} (keras-hub loads a preset from a local folder "
            f"holding config.json and model.weights.h5). Or build the architecture with "
            f"random weights: backbone.weights=null.") from None


def _preprocess(name: str, preset: str | None):
    """keras-hub's image converter for the family: the preset's own, or the published scale
    and offset. No resizing: the data pipeline already gives backbone.image_size."""
    import keras_hub

    family = FAMILIES[name]
    if preset is not None:
        converter = _from_preset(name, "layers", preset)
        # the pipeline resizes (to the preset's size, which build checks); this only rescales
        converter.resizing.height = converter.resizing.width = None
        return converter
    return getattr(keras_hub.layers, family.converter)(
        image_size=None, scale=list(family.scale), offset=list(family.offset))


def _image_size(encoder) -> int:
    shape = encoder.image_shape
    return int(shape[0])


def hub_backbone(name: str, preset: str | None = None, weights=None, patch_size=16,
                 num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072) -> Backbone:
    """The ``_target_`` of the ``vit`` and ``clip`` options (conf/backbone/vit.yaml, clip.yaml),
    called with the option's name, weights and keys by ``build_backbone``."""
    arch = dict(patch_size=int(patch_size), num_layers=int(num_layers),
                num_heads=int(num_heads), hidden_dim=int(hidden_dim), mlp_dim=int(mlp_dim))
    use_preset = weights == "preset"
    if use_preset and not preset:
        raise ConfigError(f"backbone.weights=preset needs backbone.preset (a keras-hub preset "
                          f"name or folder) for backbone={name}; or set backbone.weights=null.")
    preprocess = _preprocess(name, preset if use_preset else None)

    def build(input_shape, weights=None):
        import keras

        if weights == "preset":
            encoder = _from_preset(name, "models", preset)
            if name == "clip":
                encoder = encoder.vision_encoder
            if _image_size(encoder) != input_shape[0]:
                raise ConfigError(f"backbone.preset={preset} takes {_image_size(encoder)}-px "
                                  f"images: set backbone.image_size={_image_size(encoder)}. "
                                  f"Received: backbone.image_size={input_shape[0]}")
        else:
            encoder = _encoder(name, tuple(input_shape), arch)
        inputs = keras.Input(input_shape, name="pixels")
        # (B, 1 + h*w, D); CLIPVisionEncoder takes a dict of inputs
        tokens = encoder({"images": inputs} if name == "clip" else inputs)
        # Drop the class token (position 0 in both families): the rest is the patch grid.
        cls = 1 if getattr(encoder, "use_class_token", True) else 0
        patches = keras.layers.Cropping1D((cls, 0), name="patch_tokens")(tokens)
        return keras.Model(inputs, patches, name=name)

    dim = None if use_preset else arch["hidden_dim"]
    return Backbone(name, build, preprocess, dim, 224)
