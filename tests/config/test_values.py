"""Config values: every leaf key of every group option and preset is checked by
``check_config`` before TensorFlow is imported, with one ConfigError that names the key.

Each shipped config is composed once; every leaf key then gets wrong-typed values (what its
shipped values say it should not be) and, where ``RULES`` gives a range or a set of choices,
a value outside it. ``TRIED`` counts the (key, value) pairs tried (``pytest -s`` prints it).
"""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from captioning import ConfigError
from captioning.config_check import RULES, check_config
from tests.conftest import ROOT, compose_config

GROUPS = ("dataset", "backbone", "decoder", "trainer", "callbacks", "logger", "paths", "debug")
OPTIONS = [(f"{g}={p.stem}",) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]
PRESETS = [(f"experiment={p.stem}",) for p in sorted((ROOT / "experiments").glob("*.yaml"))]
CONFIGS = [(), *OPTIONS, *PRESETS]

# Leaves no rule of the table covers: Hydra's run directory (it resolves only inside a run)
# and the scst_reward weights (a mapping with a rule of its own, named after the mapping).
NOT_IN_TABLE = {"paths.output_dir"}
NAMED_BY = {"trainer.scst_reward.": "trainer.scst_reward"}

# Wrong values, as a user types them (Hydra's override parser turns them into values), by the
# kind of the shipped values: ints are numbers too, lists of ints are lists.
WRONG = {"int": ["abc", "1.5", "[1]", "true"], "number": ["abc", "[1.0]", "true", "nan"],
         "bool": ["maybe", "1", "[true]"], "str": ["12345", "[1]"], "list": ["abc", "[[a]]"]}
# Keys whose shipped values do not say their kind (null only, or more than one kind).
WRONG_FOR = {
    "dataset.holdout": ["abc", "-3", "1.5"],              # null, N images or a fraction (0, 1)
    "resume": ["12345", "1.5", "[1]"],                    # true, false or a run directory
    "backbone.trainable": ["maybe", "1.5", "[1]"],        # bool or a number of layers
    "decode.jit_compile": ["maybe", "1", "[1]"],        # true, false, auto or loop
    "backbone.convs_per_stage": ["abc", "1.5", "[a]"],    # an int or one per stage
    "trainer.max_minutes": ["abc", "[1]", "true"],        # null or a number
    "trainer.clipnorm": ["abc", "[1]", "true"],
    "trainer.cluster_port": ["abc", "[1]", "true", "80", "70000"],   # null or a port
    "dataset.max_image_pixels": ["abc", "[1]", "true"],
    "dataset.encoding": ["12345", "[1]", "no-such-codec"],    # null or a codec's name
    "trainer.devices": ["/gpu:0", "[1]"],                 # null or a list of strings
    "logger.tags": ["abc", "[1]"],
    **dict.fromkeys(["logger.workspace", "logger.offline_directory", "logger.experiment_name",
                     "logger.tensorboard.log_dir", "dataset.data_dir", "dataset.root",
                     "dataset.json", "dataset.images"],
                    ["12345", "[1]"]),
    **dict.fromkeys(["callbacks.val_captions.method", "callbacks.val_captions.tta",
                     "dataset.classes"],
                    ["bogus", "1", "[1]"]),
}
PARSER = OverridesParser.create()

TRIED: dict[str, int] = {}     # key -> values tried


def _filled(cfg):
    """The config as a user runs it: required values (``???``, e.g. dataset=karpathy's json and
    images) set on the command line. Leaving them out is its own test
    (tests/config/test_defaults.py)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    for key, value in _leaves(tree):
        if value == "???":
            OmegaConf.update(cfg, key, f"/data/{key}")
    return cfg


@pytest.fixture(scope="module")
def composed() -> dict[tuple, object]:
    return {c: _filled(compose_config(*c)) for c in CONFIGS}


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaves(v, key + ".")
        elif key not in NOT_IN_TABLE:
            yield key, v


def _kind(values: list) -> str | None:
    real = [v for v in values if v is not None and v != "???"]
    if not real:
        return None
    kinds = {"bool" if isinstance(v, bool) else "int" if isinstance(v, int)
             else "number" if isinstance(v, float) else "str" if isinstance(v, str)
             else "list" for v in real}
    return "number" if kinds == {"int", "number"} else kinds.pop() if len(kinds) == 1 else None


def _outside(key: str) -> list[str]:
    """Values outside the key's range or choices (none when its rule has neither)."""
    rule = RULES.get(key)
    if rule is None:
        return ["-1"] if key.startswith("trainer.scst_reward.") else []
    if rule.kind == "enum":
        return ["99" if all(isinstance(c, int) for c in rule.choices) else "bogus"]
    step = 1 if rule.kind in ("int", "ints") else 0.5
    out = [] if rule.lo is None else [rule.lo if rule.lo_open else rule.lo - step]
    out += [] if rule.hi is None else [rule.hi if rule.hi_open else rule.hi + step]
    return [f"[{x}]" if rule.kind == "ints" else str(x) for x in out]


def _parsed(key: str, text: str):
    """``text`` as ``python run.py key=text`` gives it."""
    return PARSER.parse_overrides([f"{key}={text}"])[0].value()


def test_every_option_and_preset_passes_the_checks(composed):
    failures = {}
    for overrides, cfg in composed.items():
        try:
            check_config(cfg)
        except ConfigError as e:
            failures[overrides] = str(e)
    assert failures == {}


def test_every_leaf_key_has_a_rule(composed):
    keys = {k for cfg in composed.values()
            for k, _ in _leaves(OmegaConf.to_container(cfg, resolve=False))}
    uncovered = {k for k in keys - set(RULES) if not k.startswith(tuple(NAMED_BY))}
    assert uncovered == set()
    assert set(RULES) <= keys                      # no rule for a key that no config has
    from captioning.data.readers import READERS  # dataset.name's choices are its names

    names = sorted(READERS)
    with pytest.raises(ConfigError, match=f"^dataset.name must be {', '.join(names[:-1])} or "
                                          f"{names[-1]}\\. Received: dataset.name='bogus'$"):
        check_config(OmegaConf.merge(composed[()], {"dataset": {"name": "bogus"}}))


def test_every_leaf_key_refuses_wrong_values(composed):
    shipped: dict[str, list] = {}
    for cfg in composed.values():
        for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False)):
            shipped.setdefault(key, []).append(value)
    done, failures = set(), []
    for cfg in composed.values():
        OmegaConf.set_struct(cfg, False)
        for key, original in _leaves(OmegaConf.to_container(cfg, resolve=False)):
            if (key, repr(original)) in done:           # the same key and value in another
                continue                                # config: the same check
            done.add((key, repr(original)))
            kind = _kind(shipped[key])
            wrong = WRONG_FOR.get(key, WRONG.get(kind))
            assert wrong, f"{key}: no wrong values for shipped {shipped[key]}: add to WRONG_FOR"
            for text in [*wrong, *_outside(key)]:
                failures += _try(cfg, key, _parsed(key, text))
            OmegaConf.update(cfg, key, original, merge=False, force_add=False)
        check_config(cfg)                               # restored: it passes again
    assert failures == []
    total = sum(TRIED.values())
    print(f"\nconfig values: {len(TRIED)} keys x wrong values = {total} tried")
    assert len(TRIED) >= 100 and total >= 500


def _try(cfg, key: str, value) -> list[str]:
    OmegaConf.update(cfg, key, value, merge=False, force_add=False)
    TRIED[key] = TRIED.get(key, 0) + 1
    named = next((v for k, v in NAMED_BY.items() if key.startswith(k)), key)
    try:
        check_config(cfg)
    except ConfigError as e:
        return [] if named in str(e) else [f"{key}={value!r}: message does not name it: {e}"]
    except Exception as e:  # noqa: BLE001 - any other exception is the failure reported
        return [f"{key}={value!r}: {type(e).__name__}: {e}"]
    return [f"{key}={value!r}: accepted"]


@pytest.mark.parametrize("overrides,message", [
    # Bad values users reported, composed as a user's command line composes them.
    (["dataset.val_fraction=abc"],
     r"^dataset.val_fraction must be a number in \(0, 1\). Received: dataset.val_fraction='abc'$"),
    (["decoder.num_heads=0"], r"^decoder.num_heads must be >= 1. Received: decoder.num_heads=0$"),
    (["decoder.dropout=abc"], r"^decoder.dropout must be a number in \[0, 1\)\. Received: "),
    (["trainer.clipnorm=abc"], r"^trainer.clipnorm must be null or a number > 0 \(null: no "),
    (["backbone=inceptionresnetv2", "backbone.image_size=32"],
     r"^backbone.image_size must be >= 75 for backbone=inceptionresnetv2 .* "
     r"Received: backbone.image_size=32$"),
    (["backbone=efficientnetb0", "backbone.image_size=31"],
     r"^backbone.image_size must be >= 32 for backbone=efficientnetb0"),
])
def test_reported_bad_values_get_one_message_naming_key_and_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(*overrides))


@pytest.mark.parametrize("overrides,message", [
    (["backbone.filters=[8,8,8,8,8]", "backbone.image_size=16"],
     r"^backbone.image_size must be >= 32 for backbone=small_cnn \(5 stages"),
    (["backbone.stem=8", "backbone.stem_stride=4", "backbone.image_size=16"],
     r"^backbone.image_size must be >= 29 for backbone=small_cnn \(a stride-4 stem"),
    (["backbone.image_size=8"], r"^backbone.image_size must be >= 16\."),
    (["trainer.batch_size=[1]"], r"^trainer.batch_size must be an integer >= 1\. "),
    (["trainer.learning_rate=true"], r"^trainer.learning_rate must be a number > 0\. "),
    (["decoder.dim=1.5"], r"^decoder.dim must be an integer >= 1\. "),
    (["augment.flip=3"], r"^augment.flip must be none, horizontal, vertical or both\. "),
    (["evaluation.spice=yes"], r"^evaluation.spice must be true or false\. "),
    (["logger.online=yes"], r"^logger.online must be auto, true or false\. "),
    (["backbone.trainable=maybe"], r"^backbone.trainable must be true, false or a number of "),
    (["trainer.devices=/gpu:0"], r"^trainer.devices must be null or a list of strings"),
    (["decode.p=0"], r"^decode.p must be in \(0, 1\]\. "),
    (["dataset.encoding=klingon"], r"^dataset.encoding must be null or a text encoding"),
    (["decoder.num_heads=3"], r"^decoder.dim must be divisible by decoder.num_heads"),
    (["text.min_tokens=30"], r"^text.min_tokens must be <= text.seq_len"),
    (["monitor=spice"], r"^monitor=spice needs evaluation.spice=true"),
    (["monitor=meteor", "evaluation.meteor=false"],
     r"^monitor=meteor needs evaluation.meteor=true"),
    (["backbone.weights=imagenet"], r"^backbone=small_cnn has no ImageNet weights"),
])
def test_each_bad_value_gets_the_message_of_its_rule(composed, overrides, message):
    """On the default config, with each value as Hydra parses it (composing each would take
    a third of a second)."""
    cfg = OmegaConf.create(OmegaConf.to_container(composed[()]))
    for override in overrides:
        key, text = override.split("=", 1)
        OmegaConf.update(cfg, key, _parsed(key, text), merge=False)
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_every_rule_rejects_a_wrong_value_naming_its_key(composed):
    """Each rule of the table, on a shipped config that has its key (the default one where it
    can): a value no kind of value accepts (a list of lists) is one ConfigError that starts
    with the key and shows the value received."""
    print(f"\nconfig values: {len(RULES)} rules")
    assert len(RULES) >= 100
    has = {c: {k for k, _ in _leaves(OmegaConf.to_container(cfg, resolve=False))}
           for c, cfg in composed.items()}
    failures = []
    for key in RULES:
        config = next(c for c in composed if key in has[c])
        cfg = OmegaConf.create(OmegaConf.to_container(composed[config]))
        OmegaConf.update(cfg, key, [[1]], merge=False)
        try:
            check_config(cfg)
            failures.append(f"{key} (in {config or 'the default config'}): [[1]] accepted")
        except ConfigError as e:
            if not (str(e).startswith(f"{key} must be ") and f"Received: {key}=[[1]]" in str(e)):
                failures.append(f"{key}: the message does not name it: {e}")
    assert failures == []
