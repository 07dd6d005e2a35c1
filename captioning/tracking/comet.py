"""Comet experiments that never cost a run: online with credentials, offline otherwise, and
every call guarded so a network failure, a bad key or a Comet bug is a warning, not a crash.

``comet_ml`` must be imported before TensorFlow/Keras for its auto-logging hooks; ``run.py``
does that when ``logger=comet``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("captioning")

# Comet reports its own internal errors to a third-party service at import time; a run must
# not phone anywhere it was not asked to (and offline machines would retry and log noise).
os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")


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
        c = self.cfg
        common = dict(project_name=c.project, workspace=c.workspace, log_code=False,
                      log_graph=False, auto_param_logging=False, auto_metric_logging=False,
                      parse_args=False, log_git_metadata=False, log_git_patch=False,
                      display_summary_level=0, log_env_network=False, log_env_host=False)
        want_online = c.online is True or (c.online == "auto" and api_key_configured())
        if want_online:
            try:
                self.exp, self.offline = comet_ml.Experiment(**common), False
            except Exception as e:  # noqa: BLE001 - network, bad key, server errors
                self._warn(f"Comet online logging failed ({type(e).__name__}: {e}); "
                           "logging offline instead")
        if self.exp is None:
            directory = Path(c.offline_directory or self.run_dir / "comet")
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self.exp = comet_ml.OfflineExperiment(offline_directory=str(directory), **common)
            except Exception as e:  # noqa: BLE001
                self._warn(f"Comet offline logging failed too ({e}); "
                           "logging only to the run directory")
                return
        from omegaconf import OmegaConf

        self.call("set_name", c.experiment_name or self.run_dir.name)
        self.call("add_tags", list(c.tags or []))
        self.call("log_parameters", flatten(OmegaConf.to_container(cfg, resolve=True)))
        import platform

        self.call("log_others", {"run_dir": str(self.run_dir), "host": platform.node()})

    def _warn(self, message: str) -> None:
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
