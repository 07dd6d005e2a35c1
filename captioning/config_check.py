"""Every value rule of the composed config, in one place, in pure Python.

``check_config(cfg)`` runs before TensorFlow is imported and before anything is read or
written, so a wrong type or a nonsense hyperparameter costs the user a second, not a model
build. Each rule names the key, what it must be, and the value received. Hydra and OmegaConf
already refuse unknown keys (struct mode); YAML cannot pin a type, so the types are here too.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import OmegaConf

from captioning import ConfigError

# The epoch scores ValidationCaptions adds to the logs (only on the epochs it runs).
CAPTION_SCORES = ("val_cider", "val_bleu_4")

# Keys whose type YAML cannot pin down.
TYPES = {
    "seed": int, "trainer.max_epochs": int, "trainer.batch_size": int,
    "trainer.learning_rate": float, "trainer.warmup_steps": int, "trainer.weight_decay": float,
    "trainer.label_smoothing": float, "trainer.word_loss": float, "trainer.ema": float,
    "trainer.backbone_lr_multiplier": float, "augment.mixup": float, "trainer.scst_epochs": int,
    "trainer.scst_samples": int, "trainer.scst_learning_rate": float, "text.vocab_size": int,
    "text.seq_len": int, "text.min_tokens": int, "decoder.dim": int, "backbone.image_size": int,
    "dataset.captions_per_image": int, "evaluation.batch_size": int, "decode.beam_size": int,
    "decode.k": int, "decode.p": float, "decode.temperature": float,
    "decode.length_penalty": float, "callbacks.early_stopping.patience": int,
}

TTA_VIEWS = ("none", "flip", "dihedral")                  # captioning.models.decoding.TTA
DECODE_METHODS = ("greedy", "beam", "top_k", "top_p")     # captioning.models.decoding.METHODS


def check_config(cfg) -> None:
    """Raise one ConfigError naming the first wrong value; return None when all is well."""
    _check_types(cfg)
    for ok, message in [*_trainer_rules(cfg.trainer), *_other_rules(cfg), *_decoder_rules(cfg)]:
        if not ok:
            raise ConfigError(message)
    _check_decoding(cfg)
    _check_split(cfg.dataset)


def _check_types(cfg) -> None:
    for key, kind in TYPES.items():
        value = OmegaConf.select(cfg, key)
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}. "
                              f"Received: {key}={value!r}")


def _trainer_rules(t) -> list[tuple[bool, str]]:
    sample = t.get("sample_captions")
    minutes = t.get("max_minutes")
    return [
        (t.batch_size >= 1, f"trainer.batch_size must be >= 1. Received: {t.batch_size}"),
        (t.max_epochs >= 1, f"trainer.max_epochs must be >= 1. Received: {t.max_epochs}"),
        (t.learning_rate > 0, f"trainer.learning_rate must be > 0. Received: {t.learning_rate}"),
        (t.warmup_steps >= 0, f"trainer.warmup_steps must be >= 0. Received: {t.warmup_steps}"),
        (0 <= t.label_smoothing < 1,
         f"trainer.label_smoothing must be in [0, 1). Received: {t.label_smoothing}"),
        (t.weight_decay >= 0, f"trainer.weight_decay must be >= 0. Received: {t.weight_decay}"),
        (t.word_loss >= 0,
         f"trainer.word_loss must be >= 0 (0 turns it off). Received: {t.word_loss}"),
        (isinstance(t.get("deterministic", False), bool),
         f"trainer.deterministic must be true or false. Received: {t.get('deterministic')!r}"),
        (sample is None or (isinstance(sample, int) and sample >= 1),
         f"trainer.sample_captions must be null (all of an image's captions every step) or an "
         f"integer >= 1. Received: {sample!r}"),
        (t.scst_epochs >= 0,
         f"trainer.scst_epochs must be >= 0 (0 turns self-critical training off). "
         f"Received: {t.scst_epochs}"),
        (t.scst_samples >= 2,
         f"trainer.scst_samples must be >= 2: each sample's baseline is the mean reward of "
         f"the image's other samples. Received: {t.scst_samples}"),
        (t.scst_learning_rate > 0,
         f"trainer.scst_learning_rate must be > 0. Received: {t.scst_learning_rate}"),
        _reward_rule(t.get("scst_reward")),
        (t.backbone_lr_multiplier > 0,
         f"trainer.backbone_lr_multiplier must be > 0 (1 = the same learning rate as the rest). "
         f"Received: {t.backbone_lr_multiplier}"),
        (0 <= t.ema < 1,
         f"trainer.ema must be in [0, 1): the averaging momentum, e.g. 0.99 (0 turns it off). "
         f"Received: {t.ema}"),
        (minutes is None or (isinstance(minutes, int | float) and minutes > 0),
         f"trainer.max_minutes must be a number of minutes > 0, or null. Received: {minutes!r}"),
        (t.lr_schedule in ("constant", "cosine"),
         f"trainer.lr_schedule must be constant or cosine. Received: {t.lr_schedule!r}"),
        (t.precision in ("float32", "mixed_float16", "mixed_bfloat16"),
         f"trainer.precision must be float32, mixed_float16 or mixed_bfloat16. "
         f"Received: {t.precision!r}"),
        (t.get("strategy", "auto") in ("auto", "mirrored", "multi_worker"),
         f"trainer.strategy must be auto, mirrored or multi_worker. "
         f"Received: {t.get('strategy')!r}"),
    ]


def _other_rules(cfg) -> list[tuple[bool, str]]:
    es, monitor = cfg.callbacks.early_stopping, cfg.callbacks.early_stopping.monitor
    every = int(cfg.callbacks.val_captions.every_n_epochs)
    return [
        (cfg.augment.mixup >= 0,
         f"augment.mixup must be >= 0: the Beta(alpha, alpha) parameter, e.g. 0.2 "
         f"(0 turns it off). Received: {cfg.augment.mixup}"),
        (es.patience >= 0,
         f"callbacks.early_stopping.patience must be >= 0. Received: {es.patience}"),
        (cfg.dataset.captions_per_image >= 1,
         f"dataset.captions_per_image must be >= 1. Received: {cfg.dataset.captions_per_image}"),
        (cfg.text.vocab_size >= 4,
         f"text.vocab_size must be >= 4. Received: {cfg.text.vocab_size}"),
        (cfg.text.seq_len >= 3,
         f"text.seq_len must be >= 3 (it counts <start> and <end>). "
         f"Received: {cfg.text.seq_len}"),
        (cfg.evaluation.batch_size >= 1,
         f"evaluation.batch_size must be >= 1. Received: {cfg.evaluation.batch_size}"),
        (str(monitor) not in CAPTION_SCORES or every >= 1,
         f"callbacks.early_stopping.monitor={monitor} is computed by captioning the validation "
         f"images during training: set callbacks.val_captions.every_n_epochs=1 (or N), or "
         f"monitor val_loss."),
    ]


def _decoder_rules(cfg) -> list[tuple[bool, str]]:
    """The decoder's sizes (the model code trusts them; it used to check some of them itself)."""
    d, e = cfg.decoder, cfg.decoder.encoder
    rules = [
        (d.dim > 0 and d.get("num_layers", 1) >= 0 and 0 <= d.dropout < 1,
         f"decoder.dim must be > 0, num_layers >= 0 and 0 <= dropout < 1. "
         f"Received: dim={d.dim}, num_layers={d.get('num_layers')}, dropout={d.dropout}"),
    ]
    if d.name == "transformer":
        rules.append((isinstance(d.num_heads, int) and d.num_heads >= 1
                      and d.dim > 0 and d.dim % d.num_heads == 0,
                      f"decoder.dim must be divisible by decoder.num_heads (an integer >= 1). "
                      f"Received: dim={d.dim}, num_heads={d.num_heads}"))
    if e.num_layers:
        rules.append((isinstance(e.num_heads, int) and e.num_heads >= 1
                      and d.dim > 0 and d.dim % e.num_heads == 0,
                      f"decoder.dim must be divisible by decoder.encoder.num_heads (an integer "
                      f">= 1). Received: dim={d.dim}, num_heads={e.num_heads}"))
    return rules


def _reward_rule(weights) -> tuple[bool, str]:
    """``trainer.scst_reward``: weights >= 0 of known scores, at least one > 0."""
    from captioning.evaluation.rewards import SCORES  # pure Python, no TF import

    example = "e.g. trainer.scst_reward={cider:1,bleu_4:2}"
    if not isinstance(weights, Mapping) or not weights:
        return False, (f"trainer.scst_reward must map scores to weights, {example}. "
                       f"Received: {weights!r}")
    unknown = sorted(set(weights) - set(SCORES))
    if unknown:
        return False, (f"trainer.scst_reward has unknown score(s) {unknown}: use "
                       f"{list(SCORES)}. Received: {dict(weights)}")
    numbers = all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights.values())
    if not numbers or min(weights.values()) < 0 or max(weights.values()) <= 0:
        return False, (f"trainer.scst_reward weights must be numbers >= 0, at least one > 0, "
                       f"{example}. Received: {dict(weights)}")
    return True, ""


def _check_decoding(cfg) -> None:
    for key, value in (("decode.tta", cfg.decode.get("tta", "none")),
                       ("callbacks.val_captions.tta", cfg.callbacks.val_captions.get("tta"))):
        if value is not None and value not in TTA_VIEWS:
            hint = " or null (use decode.tta)" if key.startswith("callbacks") else ""
            raise ConfigError(f"{key} must be none, flip (each image and its mirror image) or "
                              f"dihedral (its 8 flips and 90-degree rotations, for overhead "
                              f"imagery){hint}. Received: {value!r}")
    method = cfg.callbacks.val_captions.get("method")
    if method is not None and method not in DECODE_METHODS:
        raise ConfigError(f"callbacks.val_captions.method must be null (use decode.method) or "
                          f"one of {list(DECODE_METHODS)}. Received: {method!r}")


def _check_split(d) -> None:
    if d.get("split") == "random" and not (0 < d.val_fraction < 1 and 0 <= d.test_fraction < 1
                                           and d.val_fraction + d.test_fraction < 1):
        raise ConfigError(f"dataset.val_fraction and test_fraction must be in (0, 1) with a sum "
                          f"below 1. Received: val_fraction={d.val_fraction}, "
                          f"test_fraction={d.test_fraction}")
