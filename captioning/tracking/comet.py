"""Comet experiments that never cost a run: online with credentials, offline otherwise, and
every call guarded so a network failure, a bad key or a Comet bug is a warning, not a crash.

An online experiment that does not start (no connection, a rejected key: ``comet_ml`` does not
raise, it only leaves the experiment not ``alive``) falls back to an offline archive. The API key
is never printed or written: Comet's own messages and ours are scrubbed of it (Comet itself
prints a key that its server rejected).

``comet_ml`` must be imported before TensorFlow/Keras for its auto-logging hooks; ``run.py``
does that when ``logger=comet``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from captioning.privacy import no_phone_home

log = logging.getLogger("captioning")

# The entry points call this first; here too in case comet_ml is reached another way (a
# notebook, a test): no cloud-metadata probes, usage pings or error reports (see privacy.py).
no_phone_home()

MASK = "***"


def api_keys() -> set[str]:
    """The Comet API key(s) this process may use: COMET_API_KEY and Comet's own config."""
    keys = {os.environ.get("COMET_API_KEY")}
    try:
        import comet_ml

        keys.add(comet_ml.get_config().get_string(None, "comet.api_key"))
    except Exception:  # noqa: BLE001
        pass
    # Strings this short are not keys, and masking them would garble every message.
    return {k.strip() for k in keys if k and len(k.strip()) >= 8}


def redact(text: str, keys: set[str] | None = None) -> str:
    """``text`` with every API key replaced by ``***``."""
    for key in api_keys() if keys is None else keys:
        text = text.replace(key, MASK)
    return text


class _Redact(logging.Filter):
    """A handler filter that masks the API keys in a record's message and traceback."""

    def __init__(self):
        super().__init__()
        self.keys: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.keys:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is its handler's business
            return True
        if any(k in message for k in self.keys):
            record.msg, record.args = redact(message, self.keys), ()
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            if any(k in text for k in self.keys):
                record.exc_text = redact(text, self.keys)   # formatters print exc_text as is
        if record.stack_info and any(k in record.stack_info for k in self.keys):
            record.stack_info = redact(record.stack_info, self.keys)
        return True


_REDACT = _Redact()


def scrub_logs() -> None:
    """Mask the API keys in everything Comet's logger (which does not propagate) and the root
    logger's handlers (console, Hydra's run log) write."""
    _REDACT.keys = api_keys()
    for logger in (logging.getLogger("comet_ml"), logging.getLogger()):
        for handler in logger.handlers:
            if _REDACT not in handler.filters:
                handler.addFilter(_REDACT)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def api_key_configured() -> bool:
    """COMET_API_KEY or Comet's own config file (~/.comet.config)."""
    try:
        import comet_ml

        return bool(comet_ml.get_config().get_string(None, "comet.api_key"))
    except Exception:  # noqa: BLE001
        return bool(os.environ.get("COMET_API_KEY"))


class CometLogger:
    """A thin, failure-proof wrapper over a Comet experiment."""

    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg.logger, Path(run_dir)
        self.exp, self.offline, self.archive = None, True, None
        self._warned = False
        self._start(cfg)

    def _start(self, cfg):
        try:
            import comet_ml
        except ImportError as e:
            self._warn(f"comet_ml is not installed ({e}); logging only to the run directory")
            return
        scrub_logs()
        c = self.cfg
        common = dict(project_name=c.project, workspace=c.workspace, log_code=False,
                      log_graph=False, auto_param_logging=False, auto_metric_logging=False,
                      parse_args=False, log_git_metadata=False, log_git_patch=False,
                      display_summary_level=0, log_env_network=False, log_env_host=False)
        failure = None
        want_online = c.online is True or (c.online == "auto" and api_key_configured())
        if want_online:
            failure = self._start_online(comet_ml, common)
        if self.exp is None:
            directory = Path(c.offline_directory or self.run_dir / "comet")
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self.exp = comet_ml.OfflineExperiment(offline_directory=str(directory), **common)
            except Exception as e:  # noqa: BLE001
                what = f"Comet online logging {failure}, and offline" if failure else \
                    "Comet offline"
                self._warn(f"{what} logging failed ({e}); logging only to the run directory")
                return
            if failure:
                self._warn(f"Comet online logging {failure}; logging offline instead, to "
                           f"{directory / f'{self.exp.id}.zip'} (`comet upload` it later)")
        if not getattr(self.exp, "log_env_details", True):
            # Comet's environment logging is off (privacy.py: it probes the cloud metadata
            # address); the package lists it would have logged are local, so log those here.
            self.call("set_pip_packages")
            self.call("set_os_packages")
        from omegaconf import OmegaConf

        self.call("set_name", c.experiment_name or self.run_dir.name)
        if c.tags:
            self.call("add_tags", list(c.tags))
        self.call("log_parameters", flatten(OmegaConf.to_container(cfg, resolve=True)))
        import platform

        self.call("log_others", {"run_dir": str(self.run_dir), "host": platform.node()})

    def _start_online(self, comet_ml, common: dict) -> str | None:
        """An online experiment in ``self.exp``; or what went wrong, with ``self.exp`` None."""
        try:
            exp = comet_ml.Experiment(**common)
        except Exception as e:  # noqa: BLE001 - a missing key, server errors
            return f"failed ({type(e).__name__}: {e})"
        if exp.alive or exp.disabled:        # disabled: the user switched Comet off (a no-op)
            self.exp, self.offline = exp, False
            return None
        # comet_ml does not raise when its server cannot be reached or rejects the key: it
        # logs an error and leaves the experiment not alive, and every later call is dropped.
        try:
            exp.end()
        except Exception:  # noqa: BLE001
            pass
        return ("did not start (the Comet server could not be reached or rejected the API key; "
                "Comet's message is above)")

    def _warn(self, message: str) -> None:
        message = redact(message)
        log.warning(message)
        print(f"warning: {message}")

    def call(self, method: str, *args, **kwargs):
        """Call an Experiment method; any exception becomes one warning and logging goes on."""
        if self.exp is None:
            return None
        try:
            return getattr(self.exp, method)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                self._warn(f"Comet {method} failed ({type(e).__name__}: {e}); the run continues")
                self._warned = True
            return None

    def log_epoch(self, epoch: int, logs: dict) -> None:
        self.call("log_metrics", {k: float(v) for k, v in logs.items()}, step=epoch, epoch=epoch)

    def end(self) -> Path | None:
        """Close the experiment; for offline runs return the archive to ``comet upload``."""
        if self.exp is None:
            return None
        self.call("end")
        if self.offline:
            directory = Path(self.cfg.offline_directory or self.run_dir / "comet")
            zips = sorted(directory.glob("*.zip"), key=lambda p: p.stat().st_mtime)
            self.archive = zips[-1] if zips else None
        self.exp = None
        return self.archive

    def close_and_report(self) -> Path | None:
        """``end()``, then say where an offline archive is and how to upload it."""
        from captioning.console import console

        archive = self.end()
        if archive is not None:
            console.print(f"[bold]Comet offline archive:[/] {archive}\n"
                          f"  upload it with: comet upload {archive}")
        return archive

    def log_outputs(self, run_dir: Path, results: dict, log_model: bool = False) -> None:
        """The end of a run: final scores as metrics, the run's files as assets, its plots as
        images and, with ``log_model``, the best weights as a model."""
        run_dir = Path(run_dir)
        for split in ("val", "test"):
            for k, v in results.get(split, {}).items():
                self.call("log_metric", f"{split}_{k}" if split == "test" else f"final_val_{k}", v)
        for f in ("metrics.json", "history.csv", "predictions.csv", "data.json", "config.yaml"):
            if (run_dir / f).exists():
                self.call("log_asset", str(run_dir / f), file_name=f)
        for png in sorted((run_dir / "plots").glob("*.png")):
            self.call("log_image", str(png), name=f"plots/{png.stem}")
        best = run_dir / "checkpoints" / "best.weights.h5"
        if log_model and best.exists():
            self.call("log_model", "captioner", str(best))


def open_tracker(cfg, run_dir: Path, data) -> CometLogger | None:
    """The run's Comet experiment (with the dataset's counts logged), or None for logger=none."""
    if cfg.logger.name != "comet":
        return None
    tracker = CometLogger(cfg, run_dir)
    counts = {f"images_{k}": v for k, v in data.report.counts.items()}
    tracker.call("log_others", {"vocab_size": data.vocab.size, **counts})
    return tracker
