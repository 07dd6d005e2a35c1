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

import json
import logging
import os
from pathlib import Path

from captioning.console import console
from captioning.io import atomic_write_text
from captioning.privacy import no_phone_home
from captioning.provenance import provenance
from captioning.runs.files import LOCATION_KEYS

log = logging.getLogger("captioning")

# The entry points call this first; here too in case comet_ml is reached another way (a
# notebook, a test): no cloud-metadata probes, usage pings or error reports (see privacy.py).
no_phone_home()

MASK = "***"
COMET_JSON = "comet.json"      # in the run folder: the experiment key, URL, offline archives
# Overrides left out of an experiment's name: where things are, not what the run is.
NAME_SKIPS = (*LOCATION_KEYS, "offline_directory", "resume")


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
    """Nested dicts -> ``{"a.b": value}``; values other than numbers, strings, booleans and
    null become strings."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


def experiment_name(overrides) -> str:
    """A run's Comet name: its command-line overrides, without the ones that only locate
    things (``hydra.*``, ``paths.*``, ``dataset.root=...``, ``resume=...``: ``NAME_SKIPS``);
    any other value that is a path keeps only its last part (``backbone.weights=best.h5``)."""
    kept = []
    for override in overrides:
        key, _, value = str(override).partition("=")
        bare = key.lstrip("+~")
        if bare.startswith(("hydra.", "paths.")) or bare.rsplit(".", 1)[-1] in NAME_SKIPS:
            continue
        if ("/" in value or "\\" in value) and not value.startswith(("[", "{")):
            value = value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        kept.append(f"{key}={value}" if _ else key)
    return " ".join(kept) or "defaults"


def previous_experiment(run_dir: Path) -> dict | None:
    """``comet.json`` of a run folder, when it names an experiment a resumed run can continue:
    online, or offline with an archive written (``comet upload`` needs the first archive to
    create the experiment before a continuation's archive can be appended)."""
    try:
        info = json.loads((Path(run_dir) / COMET_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not info.get("experiment_key"):
        return None
    if not info.get("online") and not info.get("archives"):
        log.warning("%s names no offline archive (the run was killed before it wrote one): "
                    "the resumed run starts a new Comet experiment", Path(run_dir) / COMET_JSON)
        return None
    return info


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
        self.previous: dict | None = None     # comet.json of the run this one resumes
        self.info: dict | None = None         # comet.json of this run
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
                      display_summary_level=0, log_env_network=False, log_env_host=False,
                      auto_histogram_weight_logging=False)   # the current name of the key
        self.previous = previous_experiment(self.run_dir) if cfg.get("resume") else None
        key = (self.previous or {}).get("experiment_key")
        failure = None
        want_online = c.online is True or (c.online == "auto" and api_key_configured())
        if want_online and not (self.previous and not self.previous.get("online")):
            failure = self._start_online(comet_ml, common, key)
        if self.exp is None and not self._start_offline(comet_ml, common, key, failure):
            return
        # Comet's Keras auto-logging patches Model.fit: it logs no gradients or activations for
        # tf.data input (and warns so at every fit), and this logger logs the metrics itself.
        self.call("disable_mp")
        self._record()
        self._log_run(cfg)

    def _start_offline(self, comet_ml, common: dict, key: str | None, failure) -> bool:
        """An offline experiment (continuing ``key``: ``ExistingOfflineExperiment``, whose
        archive ``comet upload`` appends to the experiment the first archive created)."""
        directory = Path(self.cfg.offline_directory or self.run_dir / "comet")
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if key:
                # It takes no log_env_network; that sampler runs only with log_env_details,
                # which privacy.py turns off (COMET_AUTO_LOG_ENV_DETAILS=false).
                # Nor the current auto_histogram_weight_logging: only the deprecated
                # auto_weight_logging, whose default (False) warns "Config key
                # 'comet.auto_log.weights' is deprecated"; None leaves the current key's False.
                kept = {k: v for k, v in common.items()
                        if k not in ("log_env_network", "auto_histogram_weight_logging")}
                kept["auto_weight_logging"] = None
                self.exp = comet_ml.ExistingOfflineExperiment(
                    offline_directory=str(directory), experiment_key=key, **kept)
            else:
                self.exp = comet_ml.OfflineExperiment(offline_directory=str(directory), **common)
        except Exception as e:  # noqa: BLE001
            what = f"Comet online logging {failure}, and offline" if failure else "Comet offline"
            self._warn(f"{what} logging failed ({e}); logging only to the run directory")
            return False
        if failure:
            name = f"{self.exp.id}-*.zip" if key else f"{self.exp.id}.zip"   # * : Comet's suffix
            self._warn(f"Comet online logging {failure}; logging offline instead, to "
                       f"{directory / name} (`comet upload` it later)")
        return True

    def _log_run(self, cfg) -> None:
        """Parameters, tags, name (a new experiment only) and where and how the run was made."""
        if not getattr(self.exp, "log_env_details", True):
            # Comet's environment logging is off (privacy.py: it probes the cloud metadata
            # address); the package lists it would have logged are local, so log those here.
            self.call("set_pip_packages")
            self.call("set_os_packages")
        import platform

        from omegaconf import OmegaConf

        # A continued experiment keeps its first name, set again: each offline archive needs
        # one ("Experiment Name is generated at upload time ..." otherwise).
        name = ((self.previous or {}).get("name") or self.cfg.experiment_name
                or self.run_dir.name)
        if self.previous is None or self.offline or self.previous.get("name"):
            self.call("set_name", name)      # (an online one named before this was recorded: kept)
        if self.info is not None:
            self.info["name"] = name
            self._write_info()
        if self.cfg.tags:
            self.call("add_tags", list(self.cfg.tags))
        self.call("log_parameters", flatten(OmegaConf.to_container(cfg, resolve=True)))
        self.call("log_others", {"run_dir": str(self.run_dir), "host": platform.node()})
        others = flatten(provenance(), "provenance.")
        self.call("log_others", {k: redact(v) if isinstance(v, str) else v
                                 for k, v in others.items()})

    def _record(self) -> None:
        """``comet.json`` in the run folder: the experiment key (a resumed run continues it),
        online or not, the URL online, and the offline archives written so far, in order."""
        key = self.call("get_key")
        if not key:
            return
        url = None if self.offline else getattr(self.exp, "url", None)
        previous = self.previous or {}
        self.info = {**previous, "experiment_key": key, "online": not self.offline, "url": url,
                     "project": self.cfg.project, "workspace": self.cfg.workspace,
                     "starts": int(previous.get("starts", 0)) + 1,
                     "archives": list(previous.get("archives", []))}
        self._write_info()

    def _write_info(self) -> None:
        try:
            atomic_write_text(self.run_dir / COMET_JSON, json.dumps(self.info, indent=2) + "\n")
        except OSError as e:
            self._warn(f"could not write {self.run_dir / COMET_JSON} ({e})")

    def _start_online(self, comet_ml, common: dict, key: str | None = None) -> str | None:
        """An online experiment in ``self.exp`` (continuing ``key``: ``ExistingExperiment``);
        or what went wrong, with ``self.exp`` None."""
        try:
            if key:
                exp = comet_ml.ExistingExperiment(experiment_key=key, **common)
            else:
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
            if self.archive is not None and self.info is not None:
                self.info["archives"].append(str(self.archive))
                self._write_info()
        self.exp = None
        return self.archive

    def close_and_report(self) -> Path | None:
        """``end()``, then say where an offline archive is and how to upload it."""
        archive = self.end()
        if archive is not None:
            console.print(f"[bold]Comet offline archive:[/] {archive}\n"
                          f"  upload it with: comet upload {archive}")
        return archive

    def log_outputs(self, run_dir: Path, results: dict, log_model: bool = False) -> None:
        """The end of a run: final scores as metrics, the run's files as assets, its plots as
        images and, with ``log_model``, the best weights as a model."""
        run_dir = Path(run_dir)
        for split in ("val", "test", "holdout"):
            for k, v in results.get(split, {}).items():
                self.call("log_metric", f"{split}_{k}" if split != "val" else f"final_val_{k}", v)
        for f in ("metrics.json", "history.csv", "predictions.csv", "predictions_test.csv",
                  "predictions_holdout.csv", "data.json", "config.yaml"):
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
