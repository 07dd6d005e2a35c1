"""The project's Hydra config outside a run: ``compose(overrides)`` gives what ``run.py`` with
those overrides would compose (``conf/config.yaml``), for the tools that build a config
themselves (``bench``, ``bench_epochs``, ``browse``)."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import OmegaConf

from captioning import ConfigError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides=()):
    """``conf/config.yaml`` with ``overrides`` (Hydra's override syntax), not resolved. An
    override Hydra refuses (a misspelt key or group option) is one ``ConfigError`` with
    Hydra's own message, which names the key and the fix."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as e:
        raise ConfigError(" ".join(str(e).split())) from None


def group_names() -> list[str]:
    """The config groups: the folders of ``conf/`` (``conf/experiment`` links to experiments/)."""
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def check_group_names(overrides) -> None:
    """A mistyped group name (``decodr=gru``) is one ``ConfigError`` naming the nearest group
    (``did you mean decoder=gru?``). Hydra would advise ``+decodr=gru``, which adds a key nobody
    reads. A name that is a group, a top-level key or close to no group is left to Hydra."""
    groups = group_names()
    top = set(OmegaConf.load(CONF_DIR / "config.yaml").keys())
    for arg in overrides:
        name, eq, value = str(arg).partition("=")
        if not eq or name.startswith(("-", "+", "~")) or "." in name or "/" in name:
            continue
        if name in groups or name in top:
            continue
        near = difflib.get_close_matches(name, groups, n=1, cutoff=0.7)
        if near:
            raise ConfigError(f"There is no config group '{name}': did you mean "
                              f"{near[0]}={value}? (groups: {', '.join(groups)})")
