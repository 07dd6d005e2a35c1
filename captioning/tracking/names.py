"""Which loggers a config asks for (pure Python: run.py reads it before TensorFlow loads).

The ``logger`` group composes several options into one ``logger`` node, Hydra's list of
options in a group: ``logger=[comet,tensorboard]``. So that they merge without clashing:

- Comet keeps its keys at the top of ``logger`` (``logger.project``, ``logger.online``, ...:
  the names existing command lines use), and is on when ``logger.name`` is ``comet``;
- every other logger is one block ``logger.<its name>``: ``logger.tensorboard``, or a logger of
  your own, a block with ``_target_`` (``+logger.mine._target_=my_pkg.MyLogger``, or a file
  ``conf/logger/mine.yaml`` holding ``mine: {_target_: ...}``, then ``logger=[comet,mine]``).

``logger=none`` (``name: none``) and no block: no logger; the run folder has everything anyway.
"""

from __future__ import annotations

from collections.abc import Mapping

BUILT_IN = ("tensorboard",)     # blocks with a logger of this package behind them


def logger_names(logger) -> list[str]:
    """The loggers ``logger`` (the config node) turns on, in order: comet, then the blocks."""
    names = ["comet"] if logger.get("name") == "comet" else []
    for key in logger:
        block = logger.get(key)
        if isinstance(block, Mapping) and (key in BUILT_IN or "_target_" in block):
            names.append(str(key))
    return names


def disable_loggers(logger) -> None:
    """Turn every logger off in ``logger`` (opened for writing: ``open_dict``)."""
    logger.name = "none"
    for key in logger_names(logger):
        if key != "comet":
            logger.pop(key)
