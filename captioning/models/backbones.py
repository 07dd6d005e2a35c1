"""A registry that maps a backbone name to its constructor, its own preprocessing and its
feature width. Any ``keras.applications`` model is available by its lower-cased name.

A backbone takes images as float32 in 0..255 (what the data pipeline yields) and returns a
sequence of image tokens ``(B, S, C)``: its last feature map, flattened over space.

A backbone option's ``_target_`` returns a ``Backbone`` (``captioning/plugins.py``); every
built-in option names ``get_backbone``, a user's names their own function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from captioning import ConfigError
from captioning.config_rules import check_backbone
from captioning.models.registry import HUB_BACKBONES
from captioning.plugins import build as build_target


@dataclass(frozen=True)
class Backbone:
    name: str
    # (input_shape, weights) -> keras.Model producing a feature map (B, h, w, C) or tokens (B, S, C)
    build: Callable
    preprocess: Callable         # images in 0..255 -> what the network expects
    feature_dim: int | None      # C, when known without building
    default_size: int


def _small_cnn(filters=(32, 64, 128, 192), dropout=0.0, convs=1, stem=0, stem_stride=2):
    """A from-scratch CNN for the synthetic data and small real datasets. With n stages the
    output is 1/2^n of the input side (1/16 with the default four); a stem with
    ``stem_stride=s`` makes it 1/(s * 2^(n-1)).

    ``stem=0``: stages of ``convs`` x (3x3 conv + BatchNorm + ReLU), each followed by a 2x2
    max-pool. ``stem=N``: a stride-2 3x3 conv with N channels first (ResNet-style: the
    full-resolution layer is the costliest on a CPU), then the stages, pooling between them.
    ``stem_stride=4``: the stem is a 4x4 stride-4 "patchify" conv (ConvNeXt-style, non-overlapping
    patches) -- twice the input side for the same stage cost, so fine detail reaches the stages.
    A stage's convs after its first are residual (x + BN(conv(x)), then ReLU), so depth does
    not make it harder to train. ``convs`` is one count for every stage or one per stage.
    """
    check_backbone(name="small_cnn", filters=filters, convs_per_stage=convs, stem=stem,
                   stem_stride=stem_stride)
    per_stage = [int(convs)] * len(filters) if isinstance(convs, int) else [int(c) for c in convs]

    def build(input_shape, weights=None):
        import keras
        from keras import layers

        def conv_bn(x, f, conv_name, bn_name, stride=1, kernel=3):
            x = layers.Conv2D(f, kernel, strides=stride, padding="same", use_bias=False,
                              name=conv_name)(x)
            # momentum 0.9: short runs want fast-moving statistics.
            return layers.BatchNormalization(momentum=0.9, name=bn_name)(x)

        inputs = keras.Input(input_shape)
        x = inputs
        if stem:
            # Larger strides: non-overlapping patches.
            kernel = 3 if stem_stride <= 2 else stem_stride
            x = conv_bn(x, stem, "stem_conv", "stem_bn", stem_stride, kernel)
            x = layers.ReLU(name="stem_relu")(x)
        for i, (f, k) in enumerate(zip(filters, per_stage, strict=True)):
            if stem and i > 0:
                x = layers.MaxPooling2D(2, name=f"stage{i}_pool_in")(x)
            # The first conv keeps the original stage{i}_conv0/bn0 names (saved small_cnn
            # weights load).
            x = conv_bn(x, f, f"stage{i}_conv0", f"stage{i}_bn0")
            x = layers.ReLU(name=f"stage{i}_relu0")(x)
            for j in range(1, k):
                y = conv_bn(x, f, f"stage{i}_{j}_conv", f"stage{i}_{j}_bn")
                x = layers.Add(name=f"stage{i}_add{j}")([x, y])
                x = layers.ReLU(name=f"stage{i}_relu{j}")(x)
            if not stem:
                x = layers.MaxPooling2D(2, name=f"stage{i}_pool")(x)
            if dropout:
                x = layers.SpatialDropout2D(dropout, name=f"stage{i}_drop")(x)
        return keras.Model(inputs, x, name="small_cnn")

    return build


def _scale_pm1(x):
    return x / 127.5 - 1.0   # 0..255 -> [-1, 1]


def _application(name: str) -> Backbone:
    """Wrap a keras.applications constructor with its module's own preprocess_input."""
    import importlib

    import keras

    fn = APPLICATIONS()[name]
    module = importlib.import_module(fn.__module__)
    preprocess = getattr(module, "preprocess_input", _scale_pm1)
    sizes = {"inceptionresnetv2": 299, "inceptionv3": 299, "xception": 299, "efficientnetb0": 224}
    size = sizes.get(name, 224)

    def build(input_shape, weights="imagenet"):
        return fn(include_top=False, weights=weights, input_shape=input_shape)

    del keras
    return Backbone(name, build, preprocess, FEATURE_DIMS.get(name), size)


# The backbone.* keys of the keras-hub encoders (conf/backbone/vit.yaml, clip.yaml).
HUB_KEYS = ("preset", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")
FEATURE_DIMS = {"efficientnetb0": 1280, "inceptionresnetv2": 1536, "resnet50": 2048,
                "mobilenetv2": 1280}


def APPLICATIONS() -> dict[str, Callable]:
    import keras

    return {n.lower(): getattr(keras.applications, n) for n in dir(keras.applications)
            if n[0].isupper() and callable(getattr(keras.applications, n))}


def get_backbone(name: str, filters=None, dropout=0.0, convs_per_stage=1, stem=0,
                 stem_stride=2) -> Backbone:
    """``small_cnn`` (with its keys) or any keras.applications model by lower-cased name: the
    ``_target_`` of the built-in backbone options."""
    name = str(name).lower()
    if name == "small_cnn":
        convs = convs_per_stage if isinstance(convs_per_stage, int) else list(convs_per_stage)
        build = _small_cnn(tuple(filters or (32, 64, 128, 192)), dropout, convs,
                           int(stem or 0), stem_stride)
        return Backbone("small_cnn", build, _scale_pm1, (filters or [192])[-1], 64)
    known = APPLICATIONS()
    if name not in known:
        raise ConfigError(f"Unknown backbone {name!r}. Known: "
                          f"{['small_cnn'] + sorted(known)}, or the options "
                          f"backbone={'|'.join(HUB_BACKBONES)} (keras-hub encoders; or select a "
                          f"preset: backbone=small_cnn|efficientnetb0|inceptionresnetv2).")
    return _application(name)


def _keras_models_dir() -> Path:
    """Where ``keras.utils.get_file`` looks for (and saves) the ImageNet files: KERAS_HOME or
    ~/.keras, or /tmp/.keras when that is not writable; then ``models/``."""
    from keras.src.backend import config

    base = Path(os.path.expanduser(config.keras_home()))
    if not os.access(base, os.W_OK):
        base = Path("/tmp/.keras")
    return base / "models"


def _build_net(spec: Backbone, size: int, weights):
    """``spec.build``; offline, ``weights=imagenet`` is one message naming the file Keras
    wants, where it goes, and ``backbone.weights=/path``."""
    import re

    try:
        return spec.build((size, size, 3), weights)
    except Exception as e:  # noqa: BLE001 - keras raises plain Exception for failed downloads
        network = ("URL fetch failure", "HTTP", "urlopen", "Name or service", "Errno")
        if weights != "imagenet" or not any(word in str(e) for word in network):
            raise
        url = re.search(r"https?://\S+?\.h5", str(e))
        file = url.group(0).rsplit("/", 1)[-1] if url else f"{spec.name}_notop.h5"
        where = _keras_models_dir() / file
        source = f" from {url.group(0)}" if url else ""
        raise ConfigError(
            f"Could not download the ImageNet weights of backbone={spec.name} (no network?). "
            f"Keras wants the file {file}{source}: fetch it on a machine with network access "
            f"and put it at {where} (Keras then finds it), or pass it with "
            f"backbone.weights=/path/to/{file}, or train from scratch with "
            f"backbone.weights=null. ({str(e)[:200]})") from None


def _weights_file(weights: str, name: str) -> Path:
    """``backbone.weights`` as an existing file, checked before the network is built."""
    path = Path(os.path.expanduser(weights))
    if not path.is_file():
        raise ConfigError(f"backbone.weights={weights}: no such file. Give a .h5/.weights.h5 "
                          f"file saved from {name}, imagenet, or null.")
    return path


def build_backbone(cfg):
    """From ``cfg.backbone`` to a keras.Model: images (B, H, W, 3) 0..255 -> tokens (B, S, C).

    ``weights``: ``imagenet`` | null (random init) | path to a .weights.h5/.h5/.keras file.
    ``trainable``: false (frozen), true, or an int: fine-tune only the top N layers.

    A frozen backbone computes in float32 whatever ``trainer.precision`` says: it is a fixed
    feature extractor, so its features (and the feature cache, which runs of either precision
    share) do not depend on the precision; only the trained parts run in bfloat16.
    """
    import keras

    if cfg.backbone.get("trainable", False) is not False:
        return _build_backbone(cfg)
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        return _build_backbone(cfg)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)


def _build_backbone(cfg):
    import keras

    b = cfg.backbone
    spec = build_target("backbone", b)
    if not isinstance(spec, Backbone):
        raise ConfigError(f"backbone._target_={b.get('_target_')} returned a "
                          f"{type(spec).__name__}: a backbone option's _target_ returns a "
                          f"captioning.models.backbones.Backbone (its network and preprocessing).")
    size = int(b.image_size)
    weights = b.get("weights")
    weights = None if weights in (None, "null", "none", "None") else str(weights)
    check_backbone(name=spec.name, image_size=size, weights=weights, trainable=b.get("trainable"),
                   **{k: b.get(k) for k in HUB_KEYS})
    is_file = weights not in (None, "imagenet", "preset")
    path = _weights_file(weights, spec.name) if is_file else None
    net = _build_net(spec, size, None if is_file or spec.name == "small_cnn" else weights)
    if path is not None:
        try:
            net.load_weights(str(path))
        except (ValueError, OSError) as e:   # another network's file, or not a weights file
            raise ConfigError(f"backbone.weights={weights} cannot be loaded into {spec.name} "
                              f"at {size} px: {str(e)[:300]}. Give a file saved from "
                              f"{spec.name} (its Keras ImageNet .h5 or a .weights.h5), imagenet "
                              f"or null.") from None

    trainable = b.get("trainable", False)
    if isinstance(trainable, bool):
        net.trainable = trainable
    else:  # int: fine-tune the top N layers only
        net.trainable = True
        for layer in net.layers[: max(0, len(net.layers) - int(trainable))]:
            layer.trainable = False

    inputs = keras.Input((size, size, 3), name="images")
    x = keras.layers.Lambda(spec.preprocess, name="preprocess")(inputs)
    # A frozen backbone runs in inference mode (BatchNorm uses its moving statistics). Keras 3 lets
    # an outer training=True override this, so Captioner.encode also passes training=False to a
    # backbone with no trainable weights.
    x = net(x, training=False) if trainable is False else net(x)
    if len(x.shape) == 4:     # a feature map (B, h, w, C); a network may give tokens already
        # (B, S, C): cross-attention wants a sequence.
        x = keras.layers.Reshape((x.shape[1] * x.shape[2], x.shape[3]), name="to_tokens")(x)
    if len(x.shape) != 3:
        raise ConfigError(f"backbone={spec.name}'s network gives {tuple(x.shape)}: a backbone "
                          f"gives a feature map (B, h, w, C) or image tokens (B, S, C).")
    tokens = x
    return keras.Model(inputs, tokens, name=f"backbone_{spec.name}")
