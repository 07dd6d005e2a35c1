"""Each leaf key's own rule (type, range, allowed values): the table ``RULES``, in pure Python.

``captioning.config_check.check_config`` runs this table on the composed config, then the
rules between keys. Code that is handed a value without a checked config (a ``Generator``
built by hand, ``build_backbone`` in a test, ``build_data``) runs a key's rule by calling
``check_values`` (or ``check_backbone``) rather than restating it, so each rule and its
message are written once, here. This module imports no TensorFlow and nothing that does (nor
anything that imports the model code, which calls it: no import cycle); its choice lists are
derived from the registries (``READERS``, ``captioning.models.registry``).

A key that only one group option has (``decoder.num_heads``, ``dataset.root``, ...) is checked
when it is present.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from captioning import ConfigError
from captioning.data.classes import CLASS_RULES
from captioning.data.readers import READERS
from captioning.models.registry import DECODE_METHODS, DECODERS, HUB_BACKBONES, TTA_VIEWS

# The epoch scores ValidationCaptions adds to the logs (only on the epochs it runs).
CAPTION_SCORES = ("val_cider", "val_bleu_4")
DATASETS = tuple(sorted(READERS))            # dataset.name: the readers' registry
# What run.py can return (the final validation summary) and what early stopping can follow
# (the epoch logs: Captioner's metrics, val_ from Keras, CAPTION_SCORES from our callback).
FINAL_SCORES = ("loss", "accuracy", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor",
                "rouge_l", "cider", "spice")
EPOCH_LOGS = ("loss", "accuracy", "word_loss", "class_loss", "class_accuracy", "val_loss",
              "val_accuracy", "val_word_loss", "val_class_loss", "val_class_accuracy",
              *CAPTION_SCORES)
_VIEWS = [f"{name} ({what})" if what else name for name, (_, what) in TTA_VIEWS.items()]
_TTA = f"{', '.join(_VIEWS[:-1])} or {_VIEWS[-1]}"      # none, flip (...) or dihedral (...)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_list(v, item) -> bool:
    return (isinstance(v, Sequence) and not isinstance(v, str) and len(v) > 0
            and all(item(x) for x in v))


def _is_codec(v) -> bool:
    try:
        return isinstance(v, str) and bool(codecs.lookup(v))
    except LookupError:
        return False


KINDS = {   # kind -> (test, description)
    "int": (_is_int, "an integer"),
    "number": (is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "path": (lambda v: isinstance(v, str) and v != "", "a path"),
    "codec": (_is_codec, "a text encoding Python knows, e.g. utf-8, latin-1, cp1252 or utf-16"),
    "ints": (lambda v: _is_list(v, _is_int), "a list of integers"),
    "strs": (lambda v: isinstance(v, Sequence) and not isinstance(v, str)
             and all(isinstance(x, str) for x in v), "a list of strings"),
    "targets": (lambda v: isinstance(v, Sequence) and not isinstance(v, str)
                and all(isinstance(x, Mapping) and "_target_" in x for x in v),
                "a list of dicts, each with _target_ (a class or function) and its arguments, "
                "e.g. [{_target_: my_module.MyCallback, every: 2}]"),
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
        return all(not is_number(x)
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
            kind = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
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
LIMITS = ("null (all batches), a number of batches (an integer >= 1) or a fraction of them "
          "(a float in (0, 1], e.g. 0.25)")
PROFILE = "null (no profiling), a batch number >= 1 or [first, last], e.g. [2, 4]"
# callbacks.checkpoints.select (eval.py's ``which`` syntax; runs.files.averaged_epochs parses it)
WEIGHTS = "best, last or mean:FIRST-LAST (the mean of those epochs' weights, e.g. mean:28-30)"
# dataset.holdout (captioning/data/records.py holdout_size)
HOLDOUT = ("null (no held-out split), a number of train images (an integer >= 1, e.g. 210) or "
            "a fraction of them (a float in (0, 1), e.g. 0.1)")
BOOL, STR, PATH = Rule("bool"), Rule("str"), Rule("path")
PATH_OR_NULL, STR_OR_NULL = Rule("path", null=True), Rule("str", null=True)
# an option's _target_ (captioning/plugins.py imports it and checks its signature)
TARGET = Rule("str", what="a dotted path to a class or function, e.g. my_module.MyDecoder")

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
    "augment.cached_views": _int(0, hint=" (augmented views cached per training image; "
                                         "0: none, the CNN runs every step)"),
    "augment.mixup": _num(0, hint=": the Beta(alpha, alpha) parameter, e.g. 0.2 "
                                  "(0 turns it off)"),
    # decode
    "decode.method": _one_of(*DECODE_METHODS),
    "decode.beam_size": _int(1),
    "decode.length_penalty": _num(0, hint=" (GNMT alpha: 0 = none, 1 = per-token average)"),
    "decode.k": _int(1),
    "decode.p": _num(0, 1, lo_open=True),
    "decode.temperature": _num(0, lo_open=True),
    "decode.jit_compile": _one_of(True, False, "auto", "loop"),
    "decode.tta": _one_of(*TTA_VIEWS, what=_TTA),
    "decode.rerank": _one_of("none", "consensus"),
    "decode.rerank_neighbours": _int(1),
    "decode.rerank_views": _one_of(*TTA_VIEWS, what=_TTA),
    "decode.attention_block": _int(hint=" (whose cross-attention the attention maps show; "
                                        "-1: the last block)"),
    "decode.num_captions": _int(1),
    # evaluation
    "evaluation.batch_size": _int(1),
    "evaluation.spice": BOOL,
    "evaluation.meteor": BOOL,
    "evaluation.show": _int(0),
    # dataset (the keys of each reader's option); a plug-in's name is any label (plugins.py)
    "dataset._target_": TARGET,
    "dataset.name": _one_of(*DATASETS),
    "dataset.split": _one_of("random", "karpathy"),
    "dataset.val_fraction": _num(0, 1, lo_open=True, hi_open=True),
    "dataset.test_fraction": _num(**FRACTION),
    "dataset.holdout": _num(0, lo_open=True, null=True, what=HOLDOUT),
    "dataset.holdout_seed": _int(0, 2**32 - 1, hint=" (which train images are held out; "
                                                   "not the run's seed)"),
    "dataset.holdout_list": PATH_OR_NULL,
    "dataset.untouched_list": PATH_OR_NULL,
    "dataset.classes": _one_of(*CLASS_RULES, null=True),
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
    "dataset.train_on_holdout": BOOL,
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
    "backbone._target_": TARGET,
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
    # the keras-hub encoders (vit, clip): a preset, or the architecture for weights=null
    "backbone.preset": Rule("str", null=True, what="a keras-hub preset name, a local preset "
                            "folder, or null"),
    "backbone.patch_size": _int(1),
    "backbone.num_layers": _int(1),
    "backbone.num_heads": _int(1),
    "backbone.hidden_dim": _int(1),
    "backbone.mlp_dim": _int(1),
    # decoder
    "decoder._target_": TARGET,
    "decoder.name": _one_of(*DECODERS),
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
    "trainer.class_loss": _num(0, hint=" (0 turns it off; needs dataset.classes)"),
    "trainer.backbone_lr_multiplier": _num(0, lo_open=True,
                                           hint=" (1 = the same learning rate as the rest)"),
    "trainer.scst_epochs": _int(0, hint=" (0 turns self-critical training off)"),
    "trainer.scst_samples": _int(2, hint=": each sample's baseline is the mean reward of the "
                                         "image's other samples"),
    "trainer.scst_learning_rate": _num(0, lo_open=True),
    "trainer.ema": _num(**FRACTION, hint=": the averaging momentum, e.g. 0.99 "
                                         "(0 turns it off)"),
    "trainer.clipnorm": _num(0, lo_open=True, null=True, hint=" (null: no clipping)"),
    "trainer.precision": _one_of("float32", "auto", "mixed_float16", "mixed_bfloat16"),
    "trainer.jit_compile": BOOL,
    "trainer.deterministic": BOOL,
    "trainer.feature_cache": BOOL,
    "trainer.strategy": _one_of("auto", "mirrored", "multi_worker"),
    "trainer.cluster_port": _int(1024, 65535, null=True,
                                 hint=" (null: derived from the SLURM job id)"),
    "trainer.devices": Rule("strs", null=True, hint=', e.g. ["/gpu:0", "/gpu:1"]'),
    "trainer.limit_train_batches": _num(0, lo_open=True, null=True, what=LIMITS),
    "trainer.limit_val_batches": _num(0, lo_open=True, null=True, what=LIMITS),
    "trainer.limit_test_batches": _num(0, lo_open=True, null=True, what=LIMITS),
    "trainer.overfit_batches": _num(0, what="0 (off), " + LIMITS[len("null (all batches), "):]),
    "trainer.profile_batches": Rule("int", 1, null=True, also=("ints",), what=PROFILE),
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
    "callbacks.checkpoints.select": Rule("str", what=WEIGHTS),   # its syntax: check_config
    "callbacks.extra": Rule("targets"),                          # imports: plugins.py
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
    "logger.tensorboard.log_dir": PATH_OR_NULL,
    "logger.tensorboard.histogram_freq": _int(0),
    "logger.tensorboard.max_captions": _int(0),
}
# trainer.scst_reward is a mapping with a rule of its own (_reward_rule).


def check_values(values: Mapping[str, object]) -> None:
    """Raise one ConfigError for the first of ``values`` ({key of RULES: value}) that breaks
    its rule, the message check_config gives; return None when all pass."""
    for key, value in values.items():
        problem = RULES[key].problem(value)
        if problem:
            raise ConfigError(f"{key} must be {problem}. Received: {key}={value!r}")


def small_cnn_rules(v: Mapping[str, object]) -> list[tuple[bool, str]]:
    """small_cnn's rules between its keys, as (ok, message); ``v``: {backbone.* key: value},
    each past its own rule, a key left out at small_cnn's default (none for another backbone).
    A stem_stride other than 2 needs a stem, convs_per_stage is one count or one per stage,
    and there are no ImageNet weights."""
    if str(v.get("backbone.name", "small_cnn")).lower() != "small_cnn":
        return []
    stride, convs = v.get("backbone.stem_stride", 2), v.get("backbone.convs_per_stage", 1)
    n = len(v.get("backbone.filters") or [0] * 4)
    return [
        (bool(v.get("backbone.stem")) or stride == 2,
         f"backbone.stem_stride={stride} needs a stem: set backbone.stem to its channels "
         f"(e.g. backbone.stem=32), or leave stem_stride at 2."),
        (_is_int(convs) or len(convs) == n,
         f"backbone.convs_per_stage must be >= 1, one number or one per stage "
         f"(backbone.filters has {n}). Received: {convs}"),
        (v.get("backbone.weights") != "imagenet",
         "backbone=small_cnn has no ImageNet weights: set backbone.weights=null (train from "
         "scratch) or a path to weights saved from a small_cnn run."),
    ]


def hub_rules(v: Mapping[str, object]) -> list[tuple[bool, str]]:
    """The keras-hub encoders' rules between keys (``v`` as for ``small_cnn_rules``):
    ``weights=preset`` is theirs alone; they have no ``imagenet`` file and no layer count to
    fine-tune; patches tile the image; heads divide the width."""
    name, weights = str(v.get("backbone.name", "small_cnn")).lower(), v.get("backbone.weights")
    if name not in HUB_BACKBONES:
        return [(weights != "preset", f"backbone.weights=preset is for the keras-hub encoders "
                 f"({', '.join(HUB_BACKBONES)}); backbone={name} takes imagenet, null or a "
                 f"path.")]
    size, patch = v.get("backbone.image_size"), v.get("backbone.patch_size", 16)
    heads, dim = v.get("backbone.num_heads", 12), v.get("backbone.hidden_dim", 768)
    trainable = v.get("backbone.trainable", False)
    tiles = size is None or weights == "preset" or size % patch == 0
    return [
        (weights != "imagenet", f"backbone={name} has no imagenet file: set "
         f"backbone.weights=preset (backbone.preset's weights), null (random) or a path."),
        (isinstance(trainable, bool), f"backbone.trainable must be true or false for "
         f"backbone={name} (a number of top layers is for CNNs). Received: "
         f"backbone.trainable={trainable}"),
        (tiles, f"backbone.image_size must be a multiple of backbone.patch_size={patch} "
         f"for backbone={name}, e.g. {max(patch, size - size % patch) if size else patch}. "
         f"Received: backbone.image_size={size}"),
        (weights == "preset" or dim % heads == 0, f"backbone.hidden_dim must be a multiple of "
         f"backbone.num_heads={heads}. Received: backbone.hidden_dim={dim}"),
    ]


def check_backbone(**values) -> None:
    """The backbone.* rules for a backbone built without a checked config (backbones.py calls
    it): ``values`` by short name (``name``, ``image_size``, ``stem_stride``, ...; None: the
    default), each key's own rule, then small_cnn's rules between its keys."""
    v = {f"backbone.{k}": list(x) if isinstance(x, Sequence) and not isinstance(x, str) else x
         for k, x in values.items() if x is not None}
    check_values(v)
    for ok, message in [*small_cnn_rules(v), *hub_rules(v)]:
        if not ok:
            raise ConfigError(message)
