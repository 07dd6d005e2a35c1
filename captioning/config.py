"""The project's Hydra config outside a run: ``compose(overrides)`` gives what ``run.py`` with
those overrides would compose (``conf/config.yaml``), for the tools that build a config
themselves (``bench``, ``bench_epochs``, ``browse``)."""

from __future__ import annotations

from pathlib import Path

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
