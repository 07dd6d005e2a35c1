"""From the composed config to a built Captioner (the only place models are assembled)."""

from __future__ import annotations

from captioning import ConfigError
from captioning.data.classes import class_loss_problem, class_names
from captioning.models.augment import build_augmentation
from captioning.models.backbones import build_backbone
from captioning.models.captioner import Captioner
from captioning.models.decoder import INSTANCE_MEMBERS
from captioning.models.encoder import ImageEncoder
from captioning.models.gru import GRUDecoder
from captioning.models.transformer import TransformerDecoder
from captioning.plugins import build as build_target
from captioning.plugins import target_of


def build_model(cfg, vocab_size: int):
    """Backbone + encoder + decoder (+ augmentation) per ``cfg``; variables created."""
    import numpy as np

    d = cfg.decoder
    max_len = int(cfg.text.seq_len) - 1            # decoder positions: <start> .. last input token
    decoder = build_decoder(d, vocab_size, max_len)
    e = d.encoder
    # The scene-class head (trainer.class_loss) has one output per dataset.classes class.
    class_loss = float(cfg.trainer.get("class_loss", 0.0))
    if problem := class_loss_problem(class_loss, cfg.dataset.get("classes")):
        raise ConfigError(problem)
    classes = class_names(cfg.dataset.get("classes")) if class_loss else ()
    encoder = ImageEncoder(d.dim, e.num_layers, e.num_heads, e.dropout, e.input_norm,
                           name="encoder")
    model = Captioner(build_backbone(cfg), encoder, decoder, build_augmentation(cfg, cfg.seed),
                      blind=bool(cfg.backbone.get("blind", False)),
                      label_smoothing=float(cfg.trainer.label_smoothing),
                      word_loss=float(cfg.trainer.get("word_loss", 0.0)),
                      mixup=float(cfg.augment.get("mixup", 0.0)), seed=cfg.seed,
                      class_loss=class_loss, num_classes=len(classes), name="captioner")
    size = int(cfg.backbone.image_size)
    # Create the variables.
    model((np.zeros((1, size, size, 3), "float32"), np.ones((1, max_len), "int32")))
    return model


def build_decoder(d, vocab_size: int, max_len: int):
    """The ``decoder`` option's ``_target_`` (a built-in below, or a user's), called with
    ``vocab_size``, ``max_len`` and the option's keys; it must build a ``Decoder``."""
    if target_of("decoder", d) is None:
        raise ConfigError(f"decoder={d.get('name')} has no decoder._target_ and is not a "
                          f"built-in decoder: add _target_ (a class or function) to its YAML.")
    decoder = build_target("decoder", d, vocab_size=vocab_size, max_len=max_len)
    missing = [m for m in INSTANCE_MEMBERS if not hasattr(decoder, m)]
    if missing:
        raise ConfigError(f"decoder._target_={target_of('decoder', d)} built a "
                          f"{type(decoder).__name__} without {', '.join(missing)}: a decoder "
                          f"implements the Decoder interface (captioning/models/decoder.py).")
    return decoder


# The built-in decoders' _target_ (conf/decoder/*.yaml; registry.DECODERS by name). The sizes
# were checked by captioning.config_check (each key's rule is in captioning/config_rules.py);
# key_dim / ff_dropout are absent from runs saved before they existed (the defaults then).
def transformer_decoder(vocab_size: int, max_len: int, dim: int, num_layers: int,
                        num_heads: int, ff_dim: int, dropout: float, output_dropout: float,
                        key_dim: int | None = None, ff_dropout: float = 0.0):
    return TransformerDecoder(vocab_size, max_len, dim, num_layers, num_heads, ff_dim, dropout,
                              output_dropout, key_dim=int(key_dim) if key_dim is not None else None,
                              ff_dropout=float(ff_dropout), name="decoder")


def gru_decoder(vocab_size: int, max_len: int, dim: int, dropout: float):
    return GRUDecoder(vocab_size, max_len, dim, dropout, name="decoder")
