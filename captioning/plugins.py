"""Plug-ins: code named by Hydra's ``_target_``, the built-in options' and a user's alike.

An option of the ``backbone``, ``decoder`` or ``dataset`` group, and each entry of
``callbacks.extra``, names the function or class that builds it with ``_target_`` (a dotted
path, ``my_module.MyDecoder``); ``build(group, node, ...)`` calls it the Hydra way
(``hydra.utils.get_object``, its keyword arguments through ``hydra.utils.instantiate``, so an
argument may itself be a ``_target_`` dict). The built-in options are the first users:
``conf/decoder/gru.yaml`` says ``_target_: captioning.models.build.gru_decoder``. A config
saved before ``_target_`` existed names its code by ``name`` (``DEFAULT_TARGETS``).

What each group's target receives and returns (``GROUPS``; docs/architecture.md):

- ``backbone``: every key but ``image_size``, ``weights``, ``trainable``, ``blind`` (what
  ``build_backbone`` does for every backbone) -> a ``captioning.models.backbones.Backbone``.
- ``decoder``: ``vocab_size``, ``max_len`` and every key but ``encoder`` (the ImageEncoder's
  block) -> a layer implementing ``captioning.models.decoder.Decoder``.
- ``dataset``: ``(cfg, report)`` (the ``dataset`` node, the ``DataReport``) and the keys no
  built-in option has -> records, or ``(records, official_split)``.
- ``callbacks.extra[i]``: its keys -> a ``keras.callbacks.Callback``.

``name`` is the option's label (``decoder.name``: tags, tables); it, and any other key the
framework reads itself (``backbone.weights``, ...), is passed only to a target with a parameter
of that name (the keras-hub encoders take ``name`` and ``weights``). A key is accepted when it
names a parameter of the target; ``**kwargs`` do not count (a Keras layer passes them to ``Layer``).

``check_plugins(cfg)`` runs in the config check, before TensorFlow: each target imports (a
user's module may import Keras: that is its own cost), is callable, has the members its group
needs, gets every required argument; every key of the config is one the option knows, else
one message names the nearest known key (``difflib``). The built-in targets live in modules that
import Keras, so the check reads their keys from ``RULES`` and ``build`` checks their signature
when it calls them. Pure Python: this module imports no TensorFlow.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf

from captioning import ConfigError
from captioning.config_rules import RULES
from captioning.data.readers import READERS
from captioning.models.decoder import CLASS_MEMBERS
from captioning.models.registry import BACKBONE_TARGET, DECODERS, HUB_BACKBONES
from captioning.tracking.names import BUILT_IN as BUILT_IN_LOGGERS


@dataclass(frozen=True)
class Group:
    framework: tuple[str, ...]   # keys the framework reads itself and does not pass
    given: tuple[str, ...]       # arguments the framework passes (by keyword; dataset: by place)
    returns: str                 # what the target must return, for messages
    members: tuple[str, ...] = ()  # what a class target must have
    positional: bool = False     # ``given`` goes first, by place (a reader's cfg, report)


GROUPS = {
    "backbone": Group(("image_size", "weights", "trainable", "blind"), (),
                      "a captioning.models.backbones.Backbone"),
    "decoder": Group(("encoder",), ("vocab_size", "max_len"),
                     "a layer implementing captioning.models.decoder.Decoder", CLASS_MEMBERS),
    # the reader reads its keys from the node; the keys RULES has are the framework's
    "dataset": Group(tuple(sorted({k.split(".")[1] for k in RULES if k.startswith("dataset.")})),
                     ("cfg", "report"), "records, or (records, official_split)", positional=True),
}
EXTRA = "callbacks.extra"
# The code an option names when its config has no _target_ (a run saved before it existed).
DEFAULT_TARGETS = {"backbone": lambda name: HUB_BACKBONES.get(name, BACKBONE_TARGET),
                   "decoder": DECODERS.get,
                   "dataset": lambda name: f"captioning.data.readers.{READERS[name].__name__}"
                   if name in READERS else None}
# Built-in targets whose modules import Keras: the check takes their keys from RULES.
HEAVY = {BACKBONE_TARGET, *HUB_BACKBONES.values(), *DECODERS.values()}
# Leaves no rule of RULES covers: Hydra's run directory, the scst_reward mapping.
NOT_IN_RULES = ("paths.output_dir", "trainer.scst_reward.")


def target_of(group: str, node) -> str | None:
    """The dotted path an option builds with: its ``_target_``, else its name's built-in."""
    target = node.get("_target_")
    return target if target is not None else DEFAULT_TARGETS[group](str(node.get("name")))


def load(key: str, target) -> object:
    """``target`` (a dotted path) imported, or one ConfigError naming ``key`` and the fix."""
    if not isinstance(target, str) or not target.strip(". "):
        raise ConfigError(f"{key} must be a dotted path to a class or function, e.g. "
                          f"my_module.MyDecoder. Received: {key}={target!r}")
    quiet = logging.getLogger("hydra.utils")     # get_object logs the error too: say it once
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        obj = get_object(target)
    except Exception as e:  # noqa: BLE001 - any error while importing the user's module
        cause = e.__cause__ or e
        raise ConfigError(
            f"{key}={target} cannot be imported ({type(cause).__name__}: {cause}). Put the "
            f"folder that holds its module on PYTHONPATH (e.g. PYTHONPATH=$PWD), or fix the "
            f"path.") from None
    finally:
        quiet.setLevel(level)
    if not callable(obj):
        raise ConfigError(f"{key}={target} is a {type(obj).__name__}, not a class or function.")
    return obj


def parameters(group: str, obj) -> list[inspect.Parameter]:
    """The named parameters of a function or a class's constructor (no ``*args``/``**kw``),
    without those the framework passes by place."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    named = [p for p in sig.parameters.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    spec = GROUPS.get(group)
    return named[len(spec.given):] if spec and spec.positional else named


def _takes(obj, n: int) -> bool:
    """Whether ``obj`` can be called with ``n`` arguments by place."""
    try:
        inspect.signature(obj).bind_partial(*range(n))
    except (TypeError, ValueError):
        return False
    return True


def passed_keys(group: str, node: Mapping, params) -> list[str]:
    """The keys of an option that its target receives."""
    names = {p.name for p in params}
    framework = (*GROUPS[group].framework, "_target_", "name") if group in GROUPS else ("_target_",)
    keys = [k for k in node if k not in framework]
    # a framework key (name, weights, ...) goes to a target that asks for it by name too
    return keys + [k for k in framework if k != "_target_" and k in node and k in names]


def check_target(key: str, group: str, node: Mapping, obj) -> None:
    """The target's interface: the members a class needs, every required argument given."""
    spec, target = GROUPS.get(group), node.get("_target_")
    if spec and inspect.isclass(obj):
        missing = [m for m in spec.members if not hasattr(obj, m)]
        if missing:
            raise ConfigError(f"{key}={target} lacks {', '.join(missing)}: a {group} must be "
                              f"{spec.returns}.")
    if spec and spec.positional and not _takes(obj, len(spec.given)):
        raise ConfigError(f"{key}={target} must take ({', '.join(spec.given)}) first: a "
                          f"{group} target is called with them, by place.")
    params = parameters(group, obj)
    given = (*(spec.given if spec else ()), *passed_keys(group, node, params))
    needed = [p.name for p in params if p.default is p.empty and p.name not in given]
    if needed:
        where = _option(group, node) if spec else key.rsplit(".", 1)[0]
        raise ConfigError(f"{key}={target} needs {', '.join(needed)}, which {where} does not "
                          f"set: add {'it' if len(needed) == 1 else 'them'} to the option's YAML "
                          f"(or give {'it' if len(needed) == 1 else 'them'} a default).")


def build(group: str, node, *args, **given):
    """Call the option's target (``group``: backbone, decoder, dataset or callbacks.extra[i])
    with its keys (interpolations resolved, nested ``_target_`` dicts instantiated) and what
    the framework passes (``args``, ``given``)."""
    base = group.split("[")[0]
    target = target_of(base, node) if base in GROUPS else node.get("_target_")
    key = f"{group}._target_"
    obj = load(key, target)
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    check_target(key, group, plain, obj)
    params = parameters(group, obj)
    names = [p.name for p in params]
    passed = passed_keys(group, plain, params)
    unknown = [k for k in passed if k not in names]
    if unknown:
        raise ConfigError(_unknown(f"{group}.{unknown[0]}", [f"{group}.{n}" for n in names],
                                   _option(group, node),
                                   f" {target} takes {', '.join(names) or 'no arguments'}."))
    kwargs = instantiate({k: plain[k] for k in passed}, _convert_="all") if passed else {}
    return obj(*args, **given, **kwargs)


def _option(group: str, node) -> str:
    name = node.get("name") if isinstance(node, Mapping) or OmegaConf.is_config(node) else None
    return f"{group}={name}" if name is not None else group


def _unknown(key: str, known, where: str, note: str = "") -> str:
    """The message for ``key``, nothing reads it: the nearest of ``known`` (full keys)."""
    near = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f": did you mean {near[0]}?" if near else "."
    return f"{key} is not a key of {where}{hint}{note}"


def _leaves(tree: Mapping, prefix: str = ""):
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            yield from _leaves(v, key + ".")
        else:
            yield key


def check_plugins(cfg) -> set[str]:
    """Each plug-in target and every key of ``cfg``, checked before TensorFlow (see the module
    docstring); returns the ``<group>.name`` keys whose option is a user's plug-in (any label,
    not one of the built-in names)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    free, accepted = set(), {k for k in RULES}
    for group in GROUPS:
        node = tree.get(group) or {}
        target = target_of(group, node)
        accepted.add(f"{group}._target_")
        if (target is None and "_target_" not in node) or (isinstance(target, str)
                                                           and target in HEAVY):
            continue                      # an unknown name (RULES says so), or a built-in
        obj = load(f"{group}._target_", target)
        check_target(f"{group}._target_", group, node, obj)
        if obj not in READERS.values():
            free.add(f"{group}.name")
        params = parameters(group, obj)
        names = [p.name for p in params]
        own = [k for k in passed_keys(group, node, params) if k != "name"]
        for k in own:
            if k not in names:
                known = [f"{group}.{n}" for n in (*names, *GROUPS[group].framework)]
                raise ConfigError(_unknown(f"{group}.{k}", known, _option(group, node),
                                           f" An option's own keys are the parameters of its "
                                           f"_target_ ({target}: {', '.join(names) or 'none'})."))
        accepted |= {f"{group}.{k}" for k in own}
    _check_extra(tree)
    accepted |= _check_loggers(tree)
    for leaf in _leaves(tree):
        if leaf not in accepted and not leaf.startswith(NOT_IN_RULES) and not any(
                leaf.startswith(f"{a}.") for a in accepted):
            group = leaf.split(".")[0]
            known = [k for k in accepted if k.split(".")[0] == group] if "." in leaf else [
                k for k in accepted if "." not in k]
            where = _option(group, tree.get(group) or {}) if group in tree and "." in leaf \
                else "the config"
            raise ConfigError(_unknown(leaf, known, where, " (Hydra adds a key given with +; "
                                                           "nothing reads this one.)"))
    return free


def _check_extra(tree: Mapping) -> None:
    """``callbacks.extra``: a list of ``_target_`` dicts, each importable with its arguments."""
    extra = (tree.get("callbacks") or {}).get("extra") or []
    if not isinstance(extra, list) or not all(isinstance(x, Mapping) and "_target_" in x
                                              for x in extra):
        raise ConfigError(f"{EXTRA} must be a list of callbacks, each a dict with _target_, "
                          f"e.g. [{{_target_: my_module.MyCallback, every: 2}}]. "
                          f"Received: {EXTRA}={extra!r}")
    for i, item in enumerate(extra):
        _check_block(f"{EXTRA}[{i}]", item)


def _check_loggers(tree: Mapping) -> set[str]:
    """A user's ``logger.<name>`` block (``tracking/names.py``): its ``_target_`` imports and takes
    the block's other keys and ``run_dir``; returns the block's keys (the built-in loggers' keys
    are in RULES)."""
    accepted = set()
    for name, block in (tree.get("logger") or {}).items():
        if not isinstance(block, Mapping) or "_target_" not in block or name in BUILT_IN_LOGGERS:
            continue
        _check_block(f"logger.{name}", block, given={"run_dir": "."})
        accepted |= {f"logger.{name}.{k}" for k in block}
    return accepted


def _check_block(where: str, block: Mapping, given: Mapping = {}) -> None:  # noqa: B006 - read only
    """A ``_target_`` dict outside the groups (a callback, a logger): it imports, gets every
    required argument (its keys and ``given``, what the framework passes), and each of its keys
    is a parameter, else one message names the nearest."""
    obj = load(f"{where}._target_", block["_target_"])
    check_target(f"{where}._target_", where, {**block, **given}, obj)
    params = parameters(where, obj)
    names = [p.name for p in params]
    for k in passed_keys(where, block, params):
        if k not in names:
            raise ConfigError(_unknown(f"{where}.{k}", [f"{where}.{n}" for n in names], where,
                                       f" {block['_target_']} takes {', '.join(names)}."))
