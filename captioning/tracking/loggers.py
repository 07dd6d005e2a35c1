"""The run's loggers behind one interface: ``RunLogger`` (what a logger may implement) and
``LoggerSet`` (what training calls: each call goes to every logger, and a logger's failure is
one warning, never the end of the run).

Built in: Comet (``tracking/comet.py``, adapted by ``CometRunLogger``) and TensorBoard
(``tracking/tensorboard.py``). A logger of your own is a class named by ``_target_`` in a
``logger.<name>`` block (``tracking/names.py``), built as ``Class(**block, run_dir=Path)``; it
defines any of ``RunLogger``'s methods (the others are skipped), e.g.::

    class PrintLogger:
        def __init__(self, run_dir, prefix="epoch"):
            self.prefix = prefix
        def log_epoch(self, epoch, logs):
            print(self.prefix, epoch, logs)
"""

from __future__ import annotations

import logging
from pathlib import Path

from captioning import ConfigError
from captioning.tracking.comet import CometLogger
from captioning.tracking.names import BUILT_IN, logger_names
from captioning.tracking.tensorboard import TensorBoardLogger

log = logging.getLogger("captioning")


class RunLogger:
    """What a run tells its loggers; every method is optional. The verbs are Comet's
    (``log_image``, ``log_text``, ``log_asset``, ``log_others``), which the code calls through
    ``LoggerSet.call``."""

    def callbacks(self) -> list:
        """Keras callbacks of this logger's own (TensorBoard's), added after the run's own."""
        return []

    def log_epoch(self, epoch: int, logs: dict) -> None:
        """An epoch's logs (1-based epoch): loss, accuracy, val_* and the caption scores."""

    def log_captions(self, epoch: int, records, captions: list[str]) -> None:
        """The validation captions made at the end of an epoch (``callbacks.val_captions``)."""

    def log_image(self, path, name: str | None = None, **kwargs) -> None:
        """An image file (a validation image, an attention plot)."""

    def log_text(self, text: str, metadata: dict | None = None, **kwargs) -> None:
        """A line of text (a final validation caption; ``metadata``: its references)."""

    def log_outputs(self, run_dir: Path, results: dict, log_model: bool = False) -> None:
        """The end of the run: the final scores (``metrics.json``'s) and the run's files."""

    def close_and_report(self):
        """Close; say where the logs are."""


class CometRunLogger(RunLogger):
    """``CometLogger`` behind ``RunLogger``: the calls it had before, and nothing new (no
    per-epoch captions: Comet gets the final ones)."""

    def __init__(self, comet: CometLogger):
        self.comet = comet

    def __getattr__(self, method):            # log_asset, log_others, ... (Experiment methods)
        if not method.startswith("log_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self.comet.call(method, *args, **kwargs)

    def log_epoch(self, epoch, logs):
        self.comet.log_epoch(epoch, logs)

    def log_image(self, path, name=None, **kwargs):
        self.comet.call("log_image", path, name=name, **kwargs)

    def log_text(self, text, metadata=None, **kwargs):
        self.comet.call("log_text", text, metadata=metadata, **kwargs)

    def log_outputs(self, run_dir, results, log_model=False):
        self.comet.log_outputs(run_dir, results, log_model=log_model)

    def close_and_report(self):
        return self.comet.close_and_report()


class LoggerSet:
    """Several loggers as one: ``call(method, ...)`` (and the named methods) reach each logger
    that has ``method``; an exception is one warning per logger and the run goes on."""

    def __init__(self, loggers: dict):
        self.loggers = loggers                # {name: logger}, in the config's order
        self._warned: set[str] = set()

    def call(self, method: str, *args, **kwargs) -> None:
        for name, logger in self.loggers.items():
            fn = getattr(logger, method, None)
            if fn is None:
                continue
            try:
                fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - a logger must not end the run
                if name not in self._warned:
                    self._warned.add(name)
                    message = (f"logger {name}: {method} failed ({type(e).__name__}: {e}); "
                               f"the run continues")
                    log.warning(message)
                    print(f"warning: {message}")

    def callbacks(self) -> list:
        return [cb for logger in self.loggers.values()
                for cb in (getattr(logger, "callbacks", None) or (lambda: []))()]

    def log_epoch(self, epoch: int, logs: dict) -> None:
        self.call("log_epoch", epoch, logs)

    def log_captions(self, epoch: int, records, captions) -> None:
        self.call("log_captions", epoch, records, captions)

    def log_outputs(self, run_dir, results: dict, log_model: bool = False) -> None:
        self.call("log_outputs", run_dir, results, log_model=log_model)

    def close_and_report(self) -> None:
        self.call("close_and_report")


def _user_logger(name: str, block, run_dir: Path):
    """``logger.<name>._target_``'s class, built with the block's other keys and ``run_dir``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = block.get("_target_")
    try:
        return instantiate(block, run_dir=Path(run_dir), _convert_="all")
    except InstantiationException as e:
        what = str(e).split("\n")[0].split(", set env var")[0]     # Hydra's first line
        cause = e.__cause__
        cause = f" ({type(cause).__name__}: {' '.join(str(cause).split())})" if cause else ""
        raise ConfigError(f"logger.{name}._target_={target} could not be built: "
                          f"{what}{cause}. It must name an importable class or function "
                          f"(module.Name; your module on PYTHONPATH) that takes the block's "
                          f"other keys and run_dir.") from None


def open_loggers(cfg, run_dir: Path, data) -> LoggerSet | None:
    """The run's loggers (``tracking/names.py`` says which), or None when there are none."""
    loggers: dict = {}
    for name in logger_names(cfg.logger):
        if name == "comet":
            comet = CometLogger(cfg, run_dir)
            counts = {f"images_{k}": v for k, v in data.report.counts.items()}
            comet.call("log_others", {"vocab_size": data.vocab.size, **counts})
            loggers[name] = CometRunLogger(comet)
        elif name in BUILT_IN:
            loggers[name] = TensorBoardLogger(cfg, run_dir)
        else:
            loggers[name] = _user_logger(name, cfg.logger[name], run_dir)
    return LoggerSet(loggers) if loggers else None
