"""The composed config's values, checked in one pass, in pure Python.

``check_config(cfg)`` runs before TensorFlow is imported and before anything is read or
written, so a wrong type or a nonsense hyperparameter costs the user a second, not a model
build. Each rule names the key, what it must be, and the value received. Hydra and OmegaConf
already refuse unknown keys (struct mode); YAML cannot pin a type, so the types are here too.

Each leaf key's own rule (type, range, allowed values) is in the table ``RULES``
(``captioning/config_rules.py``, which the model and data code call as well); the rules
between keys come after it, here (``_cross_rules`` and its neighbours).
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from captioning import CaptioningError, ConfigError
from captioning.config_rules import (
    CAPTION_SCORES,
    HOLDOUT,
    LIMITS,
    PROFILE,
    RULES,
    WEIGHTS,
    check_values,
    hub_rules,
    is_number,
    small_cnn_rules,
)
from captioning.data.classes import class_loss_problem
from captioning.evaluation.rewards import SCORES
from captioning.models.registry import HUB_BACKBONES, rerank_problem
from captioning.plugins import check_plugins
from captioning.runs.files import averaged_epochs

# The smallest input side keras.applications accepts (imagenet_utils.obtain_input_shape's
# min_size in each model's source); 32 for every other one (EfficientNet, ResNet, ...).
KERAS_MIN_SIZE = {"inceptionresnetv2": 75, "inceptionv3": 75, "xception": 71}


def check_config(cfg) -> None:
    """Raise one ConfigError naming the first wrong value; return None when all is well."""
    _required(cfg)
    plugin_names = check_plugins(cfg)       # unknown keys, _target_ imports and signatures
    v = _values(cfg)
    check_values({k: x for k, x in v.items() if k not in plugin_names})   # in RULES order
    reward = cfg.trainer.get("scst_reward")
    reward = OmegaConf.to_container(reward, resolve=True) if OmegaConf.is_config(reward) else reward
    for ok, message in [_reward_rule(reward), *_cross_rules(v), *_backbone_rules(v),
                        *_debug_rules(v)]:
        if not ok:
            raise ConfigError(message)


def _required(cfg) -> None:
    """A required value (``???``) left unset is one message naming the key and how to set it.
    (OmegaConf.missing_keys would resolve paths.output_dir, which needs a Hydra run.)"""
    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            elif value == "???":
                yield f"{prefix}{key}"

    missing = sorted(walk(OmegaConf.to_container(cfg, resolve=False), ""))
    if missing:
        key, group = missing[0], missing[0].split(".")[0]
        choice = f"{group}={cfg[group].name} " if group in ("dataset", "backbone",
                                                            "decoder") else ""
        raise ConfigError(f"{key} is required for {choice or 'this run '}but not set (???). "
                          f"Set it on the command line, python run.py {choice}{key}=VALUE, or "
                          f"once for this machine in conf/local/default.yaml.")


def _values(cfg) -> dict:
    """{key: value} for the keys of RULES that this config has, interpolations resolved; a
    ``???`` value is left out (the data readers say how to set a required path)."""
    tree, out = OmegaConf.to_container(cfg, resolve=False), {}
    for key in RULES:
        node = tree
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if isinstance(node, str) and "${" in node:        # resolved one by one: paths.output_dir
            parent, _, name = key.rpartition(".")         # resolves only inside a Hydra run
            try:
                node = (OmegaConf.select(cfg, parent) if parent else cfg)[name]
            except InterpolationResolutionError as e:
                raise ConfigError(f"{key}={node} cannot be resolved: {e}") from None
        if node is not _ABSENT and node != "???":
            out[key] = node
    return out


_ABSENT = object()


def _cross_rules(v: dict) -> list[tuple[bool, str]]:
    """Rules between keys (each key's own type and range passed already)."""
    monitor, dim = v["callbacks.early_stopping.monitor"], v["decoder.dim"]
    filt, low, high = v["text.filter"], v["text.min_tokens"], v["text.seq_len"]
    val, test = v.get("dataset.val_fraction", 0), v.get("dataset.test_fraction", 0)
    rules = [
        (monitor not in CAPTION_SCORES or v["callbacks.val_captions.every_n_epochs"] >= 1,
         f"callbacks.early_stopping.monitor={monitor} is computed by captioning the validation "
         f"images during training: set callbacks.val_captions.every_n_epochs=1 (or N), or "
         f"monitor val_loss."),
        (monitor in CAPTION_SCORES or not monitor.startswith("val_")
         or v["trainer.check_val_every_n_epoch"] <= v["trainer.max_epochs"],
         f"trainer.check_val_every_n_epoch={v['trainer.check_val_every_n_epoch']} is more than "
         f"trainer.max_epochs={v['trainer.max_epochs']}: {monitor}, which "
         f"callbacks.early_stopping.monitor names, would never be computed in the "
         f"cross-entropy epochs. Lower it."),
        (v["monitor"] != "spice" or v["evaluation.spice"],
         "monitor=spice needs evaluation.spice=true (SPICE is computed only then)."),
        (v["monitor"] != "meteor" or v["evaluation.meteor"],
         "monitor=meteor needs evaluation.meteor=true (METEOR is computed only then)."),
        (filt == "none" or low <= high,
         f"text.min_tokens must be <= text.seq_len, or no caption passes text.filter={filt}. "
         f"Received: min_tokens={low}, seq_len={high}"),
        (v.get("decode.num_captions", 1) == 1 or v["decode.method"] in ("top_k", "top_p"),
         f"decode.num_captions={v.get('decode.num_captions')} gives that many different captions "
         f"per image only by sampling: set decode.method=top_k or top_p, or "
         f"decode.num_captions=1 (method={v['decode.method']} gives one caption)."),
        *_rerank_rules(v),
        *_head_rules(v),
        *_class_rules(v),
        (v.get("dataset.split") != "random" or val + test < 1,
         f"dataset.val_fraction and test_fraction must be in (0, 1) with a sum below 1. "
         f"Received: val_fraction={val}, test_fraction={test}"),
        *_holdout_and_clock_rules(v),
        *_select_rules(v),
    ]
    if v["decoder.name"] == "transformer":
        layers, block = v["decoder.num_layers"], v.get("decode.attention_block", -1)
        rules.append((layers == 0 or -layers <= block < layers,
                      f"decode.attention_block must name one of the decoder's {layers} blocks "
                      f"(0 .. {layers - 1}, or -1 for the last). Received: {block}"))
    if v["decoder.name"] == "transformer" and v.get("decoder.key_dim") is None:
        rules.append((dim % v["decoder.num_heads"] == 0,
                      f"decoder.dim must be divisible by decoder.num_heads (an integer >= 1). "
                      f"Received: dim={dim}, num_heads={v['decoder.num_heads']}"))
    if v.get("decoder.encoder.num_layers"):
        heads = v["decoder.encoder.num_heads"]
        rules.append((dim % heads == 0,
                      f"decoder.dim must be divisible by decoder.encoder.num_heads (an integer "
                      f">= 1). Received: dim={dim}, num_heads={heads}"))
    return rules


def _rerank_rules(v: dict) -> list[tuple[bool, str]]:
    if v.get("decode.rerank", "none") == "none":
        return []
    problem = rerank_problem(v["decode.method"], v.get("decode.tta", "none"),
                             v.get("decode.num_captions", 1))
    return [(problem is None, problem or "")]


def _class_rules(v: dict) -> list[tuple[bool, str]]:
    problem = class_loss_problem(v.get("trainer.class_loss"), v.get("dataset.classes"))
    return [(problem is None, problem or "")]


def _head_rules(v: dict) -> list[tuple[bool, str]]:
    """An early-stopping monitor on a head's figures needs that head (trainer.word_loss,
    trainer.class_loss > 0): otherwise the figure never appears in the logs."""
    monitor = v["callbacks.early_stopping.monitor"]
    head = next((h for h in ("word", "class") if monitor.removeprefix("val_").startswith(h)),
                None)
    key = f"trainer.{head}_loss"
    return [] if head is None else [
        (bool(v.get(key)), f"callbacks.early_stopping.monitor={monitor} is logged only with "
                           f"{key} > 0 (received {v.get(key)}): set it, or monitor val_loss.")]


def _select_rules(v: dict) -> list[tuple[bool, str]]:
    """callbacks.checkpoints.select: best, last or mean:A-B (runs.files.averaged_epochs parses it;
    that import is why this syntax rule is here and not in RULES, which the model code imports).
    mean:A-B averages epochs A..B's own checkpoints (kept for it whatever every_epoch says):
    the schedule must reach them."""
    select = v.get("callbacks.checkpoints.select", "best")
    try:
        known = select in ("best", "last") or bool(averaged_epochs(select))
    except CaptioningError:
        known = False
    if not known:
        return [(False, f"callbacks.checkpoints.select must be {WEIGHTS}. "
                        f"Received: callbacks.checkpoints.select={select!r}")]
    if not select.startswith("mean:"):
        return []
    planned = v["trainer.max_epochs"] + v.get("trainer.scst_epochs", 0)
    key = f"callbacks.checkpoints.select={select}"
    return [
        (max(averaged_epochs(select)) <= planned,
         f"{key} names epochs after the last one planned ({planned}: trainer.max_epochs + "
         f"trainer.scst_epochs)."),
    ]


def _holdout_and_clock_rules(v: dict) -> list[tuple[bool, str]]:
    """dataset.holdout as a float is a fraction (< 1); train_on_holdout needs a holdout;
    trainer.lr_follows_clock=true needs a clock (trainer.max_minutes) and a schedule that can
    follow it (cosine)."""
    holdout, t = v.get("dataset.holdout"), "trainer.lr_follows_clock=true"
    return [
        (holdout is None or not v.get("dataset.holdout_list"),
         f"dataset.holdout={holdout} and dataset.holdout_list={v.get('dataset.holdout_list')} "
         f"both choose the held-out images: set one, the other to null."),
        (not v.get("dataset.train_on_holdout") or holdout is not None
         or v.get("dataset.holdout_list"),
         "dataset.train_on_holdout=true trains on the holdout, and there is none "
         "(dataset.holdout and dataset.holdout_list are null): set one, or "
         "dataset.train_on_holdout=false."),
        (not isinstance(holdout, float) or holdout < 1,
         f"dataset.holdout must be {HOLDOUT}: a float of 1 or more is neither. Use an integer "
         f"for a number of images. Received: dataset.holdout={holdout}"),
        (not v.get("trainer.lr_follows_clock") or v.get("trainer.max_minutes") is not None,
         f"{t} makes the learning-rate schedule follow the share of trainer.max_minutes used, "
         f"and trainer.max_minutes is null: set it (trainer.max_minutes=N), or "
         f"trainer.lr_follows_clock=false."),
        (not v.get("trainer.lr_follows_clock") or v["trainer.lr_schedule"] == "cosine",
         f"{t} changes only a cosine schedule: set trainer.lr_schedule=cosine, or "
         f"trainer.lr_follows_clock=false. Received: trainer.lr_schedule="
         f"{v['trainer.lr_schedule']}"),
    ]


def _debug_rules(v: dict) -> list[tuple[bool, str]]:
    """A float limit is a fraction (<= 1); a profile window is [first, last], first <= last."""
    rules = []
    for key in ("trainer.limit_train_batches", "trainer.limit_val_batches",
                "trainer.limit_test_batches", "trainer.overfit_batches"):
        x = v.get(key)
        rules.append((not isinstance(x, float) or x <= 1,
                      f"{key} must be {LIMITS}: a float above 1 is neither. Use an integer for "
                      f"a number of batches. Received: {key}={x}"))
    window = v.get("trainer.profile_batches")
    rules.append((not isinstance(window, list) or (len(window) <= 2 and window[0] <= window[-1]),
                  f"trainer.profile_batches must be {PROFILE}, first <= last. "
                  f"Received: trainer.profile_batches={window}"))
    return rules


def _backbone_rules(v: dict) -> list[tuple[bool, str]]:
    """small_cnn's own rules between its keys (config_rules.small_cnn_rules, which backbones.py
    runs too) and each backbone's smallest input side."""
    name, size = str(v["backbone.name"]).lower(), v["backbone.image_size"]
    if name == "small_cnn":
        filters, stem, stride = (v.get("backbone.filters"), v.get("backbone.stem"),
                                 v.get("backbone.stem_stride", 2))
        n = len(filters or [0] * 4)
        # Each stage halves the side (max-pool, floor); a stem divides it by its stride (ceil).
        minimum, why = ((stride * (2 ** (n - 1) - 1) + 1,
                         f"a stride-{stride} stem, then {n - 1} halving stages")
                        if stem else (2**n, f"{n} stages, each halves the side"))
    elif name in HUB_BACKBONES:
        minimum, why = v.get("backbone.patch_size", 16), "one patch"
    else:
        minimum = KERAS_MIN_SIZE.get(name, 32)
        why = "the smallest input keras.applications accepts"
    minimum = max(minimum, 16)
    return [*small_cnn_rules(v), *hub_rules(v),
            (size >= minimum,
             f"backbone.image_size must be >= {minimum} for backbone={name} ({why}). "
             f"Received: backbone.image_size={size}")]


def _reward_rule(weights) -> tuple[bool, str]:
    """``trainer.scst_reward``: weights >= 0 of known scores, at least one > 0."""
    example = "e.g. trainer.scst_reward={cider:1,bleu_4:2}"
    if not isinstance(weights, Mapping) or not weights:
        return False, (f"trainer.scst_reward must map scores to weights, {example}. "
                       f"Received: {weights!r}")
    unknown = sorted(set(weights) - set(SCORES))
    if unknown:
        return False, (f"trainer.scst_reward has unknown score(s) {unknown}: use "
                       f"{list(SCORES)}. Received: {dict(weights)}")
    numbers = all(is_number(w) for w in weights.values())
    if not numbers or min(weights.values()) < 0 or max(weights.values()) <= 0:
        return False, (f"trainer.scst_reward weights must be numbers >= 0, at least one > 0, "
                       f"{example}. Received: {dict(weights)}")
    return True, ""
