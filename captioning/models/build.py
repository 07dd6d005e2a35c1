"""From the composed config to a built Captioner (the only place models are assembled)."""

from __future__ import annotations

from captioning import ConfigError
from captioning.models.augment import build_augmentation
from captioning.models.backbones import build_backbone
from captioning.models.captioner import Captioner
from captioning.models.encoder import ImageEncoder
from captioning.models.gru import GRUDecoder
from captioning.models.registry import DECODERS, resolve
from captioning.models.transformer import TransformerDecoder


def build_model(cfg, vocab_size: int):
    """Backbone + encoder + decoder (+ augmentation) per ``cfg``; variables created."""
    import numpy as np

    d = cfg.decoder
    max_len = int(cfg.text.seq_len) - 1            # decoder positions: <start> .. last input token
    if d.name not in DECODERS:
        raise ConfigError(f"Unknown decoder {d.name!r}. Known: {sorted(DECODERS)}")
    decoder = resolve(DECODERS[d.name])(d, vocab_size, max_len)
    e = d.encoder
    encoder = ImageEncoder(d.dim, e.num_layers, e.num_heads, e.dropout, e.input_norm,
                           name="encoder")
    model = Captioner(build_backbone(cfg), encoder, decoder, build_augmentation(cfg, cfg.seed),
                      blind=bool(cfg.backbone.get("blind", False)),
                      label_smoothing=float(cfg.trainer.label_smoothing),
                      word_loss=float(cfg.trainer.get("word_loss", 0.0)),
                      mixup=float(cfg.augment.get("mixup", 0.0)), seed=cfg.seed, name="captioner")
    size = int(cfg.backbone.image_size)
    # Create the variables.
    model((np.zeros((1, size, size, 3), "float32"), np.ones((1, max_len), "int32")))
    return model


# The builders registry.DECODERS names (decoder.name -> one of these). The sizes were checked by
# captioning.config_check (each key's rule is in captioning/config_rules.py).
def transformer_decoder(d, vocab_size: int, max_len: int):
    # key_dim / ff_dropout: absent from runs saved before they existed (the defaults then).
    key_dim = d.get("key_dim")
    return TransformerDecoder(vocab_size, max_len, d.dim, d.num_layers, d.num_heads, d.ff_dim,
                              d.dropout, d.output_dropout,
                              key_dim=int(key_dim) if key_dim is not None else None,
                              ff_dropout=float(d.get("ff_dropout", 0.0)), name="decoder")


def gru_decoder(d, vocab_size: int, max_len: int):
    return GRUDecoder(vocab_size, max_len, d.dim, d.dropout, name="decoder")
