"""captioning: a Hydra + Keras 3 experiment framework for image captioning.

Layout (one concern per package): ``data`` (records, readers, text, tf.data),
``models`` (backbones, decoders, the Captioner, decoding), ``training`` (``train(cfg)``, its
phases, callbacks, signals and state file), ``runs`` (reading run folders back),
``evaluation`` (COCO caption metrics), ``tracking`` (Comet, Kangas).

Modules import what they use at the top. TensorFlow and Keras load with ``captioning.models``
and ``captioning.training``; the entry points (``run.py``, ``eval.py``, ``caption.py``) import
those only after the config is checked, so composing a config, ``--help`` and every config
error stay instant. ``config``, ``config_check``, ``config_rules``, ``runs.files``,
``runs.resume``, ``data.readers`` and ``io`` never import them (tests/test_structure.py).
"""

__version__ = "0.1.0"


class CaptioningError(Exception):
    """An error in the user's input (config, data, run directory) with a message that says
    what is wrong and how to fix it. ``run.py`` prints it as one line instead of a traceback."""


class DatasetError(CaptioningError):
    """The dataset on disk is missing, incomplete or malformed."""


class ConfigError(CaptioningError):
    """A config value is out of its valid range or inconsistent with another one."""


class TrainingInterrupted(Exception):
    """A stop signal (Ctrl-C, SIGTERM) ended training after a completed batch; the run can be
    resumed from its last completed epoch."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_cli(main) -> None:
    """Entry-point wrapper for the scripts: a user error becomes one line on stderr, exit 2."""
    import sys

    try:
        sys.exit(main(sys.argv[1:]))
    except CaptioningError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
