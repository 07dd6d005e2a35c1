"""Every value rule of the composed config, in one place, in pure Python.

``check_config(cfg)`` runs before TensorFlow is imported and before anything is read or
written, so a wrong type or a nonsense hyperparameter costs the user a second, not a model
build. Each rule names the key, what it must be, and the value received. Hydra and OmegaConf
already refuse unknown keys (struct mode); YAML cannot pin a type, so the types are here too.

``RULES`` holds one rule per leaf key (type, range, allowed values); a key that only one group
option has (``decoder.num_heads``, ``dataset.root``, ...) is checked when it is present. The
rules between keys come after it, in ``_cross_rules``.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from captioning import ConfigError

# The epoch scores ValidationCaptions adds to the logs (only on the epochs it runs).
CAPTION_SCORES = ("val_cider", "val_bleu_4")
TTA_VIEWS = ("none", "flip", "dihedral")                  # captioning.models.decoding.TTA
DECODE_METHODS = ("greedy", "beam", "top_k", "top_p")     # captioning.models.decoding.METHODS
DATASETS = ("coco", "coco_json", "flickr30k", "flickr8k", "karpathy", "synthetic")  # READERS
# What run.py can return (the final validation summary) and what early stopping can follow
# (the epoch logs: Captioner's metrics, val_ from Keras, CAPTION_SCORES from our callback).
FINAL_SCORES = ("loss", "accuracy", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor",
                "rouge_l", "cider", "spice")
EPOCH_LOGS = ("loss", "accuracy", "word_loss", "val_loss", "val_accuracy", "val_word_loss",
              *CAPTION_SCORES)
# The smallest input side keras.applications accepts (imagenet_utils.obtain_input_shape's
# min_size in each model's source); 32 for every other one (EfficientNet, ResNet, ...).
KERAS_MIN_SIZE = {"inceptionresnetv2": 75, "inceptionv3": 75, "xception": 71}
_TTA = ("none, flip (each image and its mirror image) or dihedral (its 8 flips and 90-degree "
        "rotations, for overhead imagery)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_list(v, item) -> bool:
    return (isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
            and all(item(x) for x in v))


def _is_codec(v) -> bool:
    try:
        return isinstance(v, str) and bool(codecs.lookup(v))
    except LookupError:
        return False


def _is_weights(v) -> bool:
    """callbacks.checkpoints.select: best, last or mean:A-B (eval.py's ``which`` syntax)."""
    from captioning import CaptioningError
    from captioning.runs.files import averaged_epochs

    if not isinstance(v, str):
        return False
    try:
        return v in ("best", "last") or bool(averaged_epochs(v))
    except CaptioningError:
        return False


KINDS = {   # kind -> (test, description)
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "path": (lambda v: isinstance(v, str) and v != "", "a path"),
    "codec": (_is_codec, "a text encoding Python knows, e.g. utf-8, latin-1, cp1252 or utf-16"),
    "ints": (lambda v: _is_list(v, _is_int), "a list of integers"),
    "weights": (_is_weights, "best, last or mean:FIRST-LAST (the mean of those epochs' "
                "weights, e.g. mean:28-30)"),
    "strs": (lambda v: isinstance(v, Sequence) and not isinstance(v, str)
             and all(isinstance(x, str) for x in v), "a list of strings"),
}


def _show(x) -> str:
    return str(x).lower() if isinstance(x, bool) else str(x)


@dataclass(frozen=True)
class Rule:
    """One key's rule: its kind (a key of KINDS, or ``enum`` with ``choices``), a range for
    numbers (and the items of a list), whether null is allowed, and how to say it."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    null: bool = False
    also: tuple = ()             # other kinds accepted (e.g. backbone.trainable: bool or int)
    hint: str = ""               # said after the range, e.g. " (0 turns it off)"
    what: str = ""               # the whole description, instead of the generated one

    def _type_ok(self, v) -> bool:
        if self.kind == "enum":
            return any(type(v) is type(c) and v == c for c in self.choices)
        return any(KINDS[k][0](v) for k in (self.kind, *self.also))

    def _range_ok(self, v) -> bool:
        items = v if isinstance(v, Sequence) and not isinstance(v, str) else [v]
        return all(not _is_number(x)
                   or ((self.lo is None or (x > self.lo if self.lo_open else x >= self.lo))
                       and (self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)))
                   for x in items)

    def bounds(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f"in {'(['[not self.lo_open]}{lo}, {hi}{')]'[not self.hi_open]}"
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        return "" if hi is None else f"<= {hi}"

    def describe(self) -> str:
        if self.what:
            return self.what
        if self.kind == "enum":
            names = [_show(c) for c in self.choices]
            kind = f"{', '.join(names[:-1])} or {names[-1]}"
        else:
            kind = KINDS[self.kind][1]
        rule = f"{kind} {self.bounds()}".rstrip() + self.hint
        return f"null or {rule}" if self.null else rule

    def problem(self, v) -> str | None:
        """What ``v`` breaks (the words after "must be"), or None when it is fine."""
        if v is None and self.null:
            return None
        type_ok = self._type_ok(v)
        if type_ok and self._range_ok(v):
            return None
        if type_ok and not (self.what or self.null or self.kind in ("ints", "strs")):
            return self.bounds() + self.hint          # the type is right: say the range only
        return self.describe()


def _int(lo=None, hi=None, **kw) -> Rule:
    return Rule("int", lo, hi, **kw)


def _num(lo=None, hi=None, **kw) -> Rule:
    return Rule("number", lo, hi, **kw)


def _one_of(*choices, **kw) -> Rule:
    return Rule("enum", choices=choices, **kw)


FRACTION = {"lo": 0, "hi": 1, "hi_open": True}                      # [0, 1)
# trainer.limit_*_batches / overfit_batches / profile_batches (captioning/training/debug.py)
_LIMIT = ("null (all batches), a number of batches (an integer >= 1) or a fraction of them "
          "(a float in (0, 1], e.g. 0.25)")
_PROFILE = "null (no profiling), a batch number >= 1 or [first, last], e.g. [2, 4]"
# dataset.holdout (captioning/data/records.py holdout_size)
_HOLDOUT = ("null (no held-out split), a number of train images (an integer >= 1, e.g. 210) or "
            "a fraction of them (a float in (0, 1), e.g. 0.1)")
BOOL, STR, PATH = Rule("bool"), Rule("str"), Rule("path")
PATH_OR_NULL, STR_OR_NULL = Rule("path", null=True), Rule("str", null=True)

RULES: dict[str, Rule] = {
    # paths first: other keys interpolate them (paths.output_dir is Hydra's run directory,
    # set by Hydra; it resolves only inside a run)
    "paths.cache_dir": PATH,
    "paths.data_dir": PATH,
    "seed": _int(0, 2**32 - 1),
    "monitor": _one_of(*FINAL_SCORES, hint=" (a score of the final validation summary)"),
    "resume": Rule("path", also=("bool",), null=True,
                   what="true (the newest unfinished run with the same overrides), false or "
                        "a run directory"),
    # text
    "text.vocab_size": _int(4, null=True, hint=" (null: no cap, text.min_count decides)"),
    "text.seq_len": _int(3, hint=" (it counts <start> and <end>)"),
    "text.filter": _one_of("drop_image", "drop_caption", "truncate", "none"),
    "text.min_tokens": _int(0, hint=" (it counts <start> and <end>)"),
    "text.length_counts": _one_of("words", "raw"),
    "text.min_count": _int(1, hint=" (Karpathy's threshold: 5)"),
    "text.punctuation": _one_of("space", "delete"),
    # augment
    "augment.flip": _one_of("none", "horizontal", "vertical", "both"),
    "augment.rot90": BOOL,
    "augment.rotation": _num(0, 1, hint=": a fraction of a full turn"),
    "augment.contrast": _num(0, 1, hint=": the random contrast factor"),
    "augment.zoom": _num(**FRACTION, hint=": a fraction of the image side"),
    "augment.translate": _num(**FRACTION, hint=": a fraction of the image side"),
    "augment.mixup": _num(0, hint=": the Beta(alpha, alpha) parameter, e.g. 0.2 "
                                  "(0 turns it off)"),
    # decode
    "decode.method": _one_of(*DECODE_METHODS),
    "decode.beam_size": _int(1),
    "decode.length_penalty": _num(0, hint=" (GNMT alpha: 0 = none, 1 = per-token average)"),
    "decode.k": _int(1),
    "decode.p": _num(0, 1, lo_open=True),
    "decode.temperature": _num(0, lo_open=True),
    "decode.jit_compile": BOOL,
    "decode.tta": _one_of(*TTA_VIEWS, what=_TTA),
    "decode.attention_block": _int(hint=" (whose cross-attention the attention maps show; "
                                        "-1: the last block)"),
    "decode.num_captions": _int(1),
    # evaluation
    "evaluation.batch_size": _int(1),
    "evaluation.spice": BOOL,
    "evaluation.meteor": BOOL,
    "evaluation.show": _int(0),
    # dataset (the keys of each reader's option)
    "dataset.name": _one_of(*DATASETS),
    "dataset.split": _one_of("random", "karpathy"),
    "dataset.val_fraction": _num(0, 1, lo_open=True, hi_open=True),
    "dataset.test_fraction": _num(**FRACTION),
    "dataset.holdout": _num(0, lo_open=True, null=True, what=_HOLDOUT),
    "dataset.holdout_seed": _int(0, 2**32 - 1, hint=" (which train images are held out; "
                                                   "not the run's seed)"),
    "dataset.holdout_list": PATH_OR_NULL,
    "dataset.captions_per_image": _int(1),
    "dataset.max_images": _int(1, null=True),
    "dataset.on_missing": _one_of("error", "skip"),
    "dataset.on_malformed": _one_of("error", "skip"),
    "dataset.verify_images": BOOL,
    "dataset.layout": _one_of("auto", "kaggle", "original"),
    "dataset.root": PATH_OR_NULL,
    "dataset.json": PATH_OR_NULL,
    "dataset.images": PATH_OR_NULL,
    "dataset.data_dir": PATH_OR_NULL,
    "dataset.cache_dir": PATH,
    "dataset.restval": BOOL,
    "dataset.train_on_val": BOOL,
    "dataset.year": _one_of(2014, 2017),
    "dataset.download": BOOL,
    "dataset.tfds_name": STR,
    "dataset.num_images": _int(1),
    "dataset.image_size": _int(1),
    "dataset.seed": _int(),
    "dataset.encoding": Rule("codec", null=True),
    "dataset.max_image_pixels": _num(1, null=True, what="a positive number of pixels or null "
                                                        "(Pillow's limit)"),
    "dataset.allow_outside_images": BOOL,
    # backbone
    "backbone.name": STR,
    "backbone.image_size": _int(16),
    "backbone.weights": Rule("str", null=True, what="imagenet, null or a path to a weights file"),
    "backbone.trainable": _int(0, also=("bool",), what="true, false or a number of top layers "
                                                       "to fine-tune (an integer >= 0)"),
    "backbone.blind": BOOL,
    "backbone.filters": Rule("ints", 1, hint=": channels per stage"),
    "backbone.convs_per_stage": Rule("int", 1, also=("ints",),
                                     what="an integer >= 1, or one per stage (a list)"),
    "backbone.stem": _int(0, null=True, hint=" (0 or null: no stem)"),
    "backbone.stem_stride": _one_of(1, 2, 3, 4, hint=" (4: a patchify stem)"),
    "backbone.dropout": _num(**FRACTION),
    # decoder
    "decoder.name": _one_of("gru", "transformer"),
    "decoder.dim": _int(1),
    "decoder.num_layers": _int(0),
    "decoder.num_heads": _int(1),
    "decoder.ff_dim": _int(1),
    "decoder.dropout": _num(**FRACTION),
    "decoder.output_dropout": _num(**FRACTION),
    "decoder.key_dim": _int(1, null=True, hint=" (null: decoder.dim / decoder.num_heads)"),
    "decoder.ff_dropout": _num(**FRACTION),
    "decoder.encoder.num_layers": _int(0),
    "decoder.encoder.num_heads": _int(1),
    "decoder.encoder.dropout": _num(**FRACTION),
    "decoder.encoder.input_norm": BOOL,
    # trainer
    "trainer.max_epochs": _int(1),
    "trainer.check_val_every_n_epoch": _int(1, hint=" (1: every epoch)"),
    "trainer.max_minutes": _num(0, lo_open=True, null=True,
                                what="a number of minutes > 0, or null (no time budget)"),
    "trainer.lr_follows_clock": BOOL,
    "trainer.batch_size": _int(1),
    "trainer.sample_captions": _int(1, null=True, what="null (all of an image's captions "
                                                       "every step) or an integer >= 1"),
    "trainer.learning_rate": _num(0, lo_open=True),
    "trainer.lr_schedule": _one_of("constant", "cosine"),
    "trainer.warmup_steps": _int(0),
    "trainer.weight_decay": _num(0),
    "trainer.label_smoothing": _num(**FRACTION),
    "trainer.word_loss": _num(0, hint=" (0 turns it off)"),
    "trainer.backbone_lr_multiplier": _num(0, lo_open=True,
                                           hint=" (1 = the same learning rate as the rest)"),
    "trainer.scst_epochs": _int(0, hint=" (0 turns self-critical training off)"),
    "trainer.scst_samples": _int(2, hint=": each sample's baseline is the mean reward of the "
                                         "image's other samples"),
    "trainer.scst_learning_rate": _num(0, lo_open=True),
    "trainer.ema": _num(**FRACTION, hint=": the averaging momentum, e.g. 0.99 "
                                         "(0 turns it off)"),
    "trainer.clipnorm": _num(0, lo_open=True, null=True, hint=" (null: no clipping)"),
    "trainer.precision": _one_of("float32", "mixed_float16", "mixed_bfloat16"),
    "trainer.jit_compile": BOOL,
    "trainer.deterministic": BOOL,
    "trainer.feature_cache": BOOL,
    "trainer.strategy": _one_of("auto", "mirrored", "multi_worker"),
    "trainer.cluster_port": _int(1024, 65535, null=True,
                                 hint=" (null: derived from the SLURM job id)"),
    "trainer.devices": Rule("strs", null=True, hint=', e.g. ["/gpu:0", "/gpu:1"]'),
    "trainer.limit_train_batches": _num(0, lo_open=True, null=True, what=_LIMIT),
    "trainer.limit_val_batches": _num(0, lo_open=True, null=True, what=_LIMIT),
    "trainer.limit_test_batches": _num(0, lo_open=True, null=True, what=_LIMIT),
    "trainer.overfit_batches": _num(0, what="0 (off), " + _LIMIT[len("null (all batches), "):]),
    "trainer.profile_batches": Rule("int", 1, null=True, also=("ints",), what=_PROFILE),
    # callbacks
    "callbacks.early_stopping.monitor": _one_of(*EPOCH_LOGS),
    "callbacks.early_stopping.mode": _one_of("auto", "min", "max"),
    "callbacks.early_stopping.patience": _int(0),
    "callbacks.early_stopping.min_delta": _num(0),
    "callbacks.val_captions.every_n_epochs": _int(0),
    "callbacks.val_captions.max_images": _int(0),
    "callbacks.val_captions.method": _one_of(*DECODE_METHODS, null=True, what=(
        f"null (use decode.method) or one of {list(DECODE_METHODS)}")),
    "callbacks.val_captions.tta": _one_of(*TTA_VIEWS, null=True,
                                          what=f"{_TTA} or null (use decode.tta)"),
    "callbacks.kangas.enabled": BOOL,
    "callbacks.kangas.every_n_epochs": _int(0),
    "callbacks.kangas.max_rows": _int(0),
    "callbacks.kangas.attention": BOOL,
    "callbacks.checkpoints.every_epoch": BOOL,
    "callbacks.checkpoints.select": Rule("weights"),
    # logger
    "logger.name": _one_of("comet", "none"),
    "logger.project": STR,
    "logger.workspace": STR_OR_NULL,
    "logger.online": _one_of("auto", True, False),
    "logger.offline_directory": PATH_OR_NULL,
    "logger.experiment_name": STR_OR_NULL,
    "logger.tags": Rule("strs", null=True),
    "logger.log_model": BOOL,
    "logger.sample_images": _int(0),
}
# trainer.scst_reward is a mapping with a rule of its own (_reward_rule).


def check_config(cfg) -> None:
    """Raise one ConfigError naming the first wrong value; return None when all is well."""
    _required(cfg)
    v = _values(cfg)
    for key, rule in RULES.items():
        problem = rule.problem(v[key]) if key in v else None
        if problem:
            raise ConfigError(f"{key} must be {problem}. Received: {key}={v[key]!r}")
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


def _select_rules(v: dict) -> list[tuple[bool, str]]:
    """callbacks.checkpoints.select=mean:A-B averages epochs A..B's own checkpoints (kept for
    it whatever every_epoch says): the schedule must reach them."""
    from captioning.runs.files import averaged_epochs

    select = v.get("callbacks.checkpoints.select", "best")
    if not str(select).startswith("mean:"):
        return []
    planned = v["trainer.max_epochs"] + v.get("trainer.scst_epochs", 0)
    key = f"callbacks.checkpoints.select={select}"
    return [
        (max(averaged_epochs(select)) <= planned,
         f"{key} names epochs after the last one planned ({planned}: trainer.max_epochs + "
         f"trainer.scst_epochs)."),
    ]


def _holdout_and_clock_rules(v: dict) -> list[tuple[bool, str]]:
    """dataset.holdout as a float is a fraction (< 1); trainer.lr_follows_clock=true needs a
    clock (trainer.max_minutes) and a schedule that can follow it (cosine)."""
    holdout, t = v.get("dataset.holdout"), "trainer.lr_follows_clock=true"
    return [
        (holdout is None or not v.get("dataset.holdout_list"),
         f"dataset.holdout={holdout} and dataset.holdout_list={v.get('dataset.holdout_list')} "
         f"both choose the held-out images: set one, the other to null."),
        (not isinstance(holdout, float) or holdout < 1,
         f"dataset.holdout must be {_HOLDOUT}: a float of 1 or more is neither. Use an integer "
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
                      f"{key} must be {_LIMIT}: a float above 1 is neither. Use an integer for "
                      f"a number of batches. Received: {key}={x}"))
    window = v.get("trainer.profile_batches")
    rules.append((not isinstance(window, list) or (len(window) <= 2 and window[0] <= window[-1]),
                  f"trainer.profile_batches must be {_PROFILE}, first <= last. "
                  f"Received: trainer.profile_batches={window}"))
    return rules


def _backbone_rules(v: dict) -> list[tuple[bool, str]]:
    """small_cnn's own layout rules (backbones.py, pure Python) and each backbone's smallest
    input side."""
    name, size = str(v["backbone.name"]).lower(), v["backbone.image_size"]
    if name == "small_cnn":
        from captioning.models.backbones import get_backbone  # no Keras import for small_cnn

        filters, stem, stride = (v.get("backbone.filters"), v.get("backbone.stem"),
                                 v.get("backbone.stem_stride", 2))
        get_backbone(name, filters=filters, dropout=v.get("backbone.dropout", 0.0),
                     convs_per_stage=v.get("backbone.convs_per_stage", 1), stem=stem,
                     stem_stride=stride)
        if v.get("backbone.weights") == "imagenet":
            return [(False, "backbone=small_cnn has no ImageNet weights: set "
                            "backbone.weights=null (train from scratch) or a path to weights "
                            "saved from a small_cnn run.")]
        n = len(filters or [0] * 4)
        # Each stage halves the side (max-pool, floor); a stem divides it by its stride (ceil).
        minimum, why = ((stride * (2 ** (n - 1) - 1) + 1,
                         f"a stride-{stride} stem, then {n - 1} halving stages")
                        if stem else (2**n, f"{n} stages, each halves the side"))
    else:
        minimum = KERAS_MIN_SIZE.get(name, 32)
        why = "the smallest input keras.applications accepts"
    minimum = max(minimum, 16)
    return [(size >= minimum,
             f"backbone.image_size must be >= {minimum} for backbone={name} ({why}). "
             f"Received: backbone.image_size={size}")]


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
    numbers = all(_is_number(w) for w in weights.values())
    if not numbers or min(weights.values()) < 0 or max(weights.values()) <= 0:
        return False, (f"trainer.scst_reward weights must be numbers >= 0, at least one > 0, "
                       f"{example}. Received: {dict(weights)}")
    return True, ""
