"""Plug-ins by ``_target_`` (captioning/plugins.py): a user's option from their own config
folder and module is checked as a built-in one is; a wrong ``_target_`` and a key nothing reads
(one added with ``+``) are one message each, before TensorFlow is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from captioning import ConfigError
from captioning.config_check import check_config
from tests.conftest import ROOT, compose_config

# A user's module: a decoder class with the Decoder members (not a Keras layer: the check
# reads the class, nothing here builds it), and a reader.
MODULE = '''
class Dec:
    beam_state = ("h",)

    def __init__(self, vocab_size, max_len, dim, depth, dropout=0.0, **kwargs):
        pass

    def call(self, tokens, memory, training=None, repeats=1):
        pass

    project = init_cache = step = call


def read(cfg, report, captions_file="captions.csv"):
    return []


class Log:
    def __init__(self, run_dir, prefix="epoch"):
        pass
'''
OPTION = """name: mine
_target_: user_plug.Dec
dim: 32
depth: 2
encoder: {num_layers: 0, num_heads: 1, dropout: 0.0, input_norm: false}
"""


@pytest.fixture
def user_conf(tmp_path, monkeypatch):
    """user_plug.py on sys.path, and my_conf/decoder/mine.yaml naming its class."""
    (tmp_path / "user_plug.py").write_text(MODULE)
    (tmp_path / "my_conf" / "decoder").mkdir(parents=True)
    (tmp_path / "my_conf" / "decoder" / "mine.yaml").write_text(OPTION)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_plug", None)
    return tmp_path / "my_conf"


def _error(*overrides) -> str:
    with pytest.raises(ConfigError) as e:
        check_config(compose_config(*overrides))
    return str(e.value)


@pytest.mark.parametrize("override,message", [
    ("+decoder.num_head=4", "decoder.num_head is not a key of decoder=transformer: did you mean "
                            "decoder.num_heads?"),
    ("+decoder.encoder.num_layer=2", "decoder.encoder.num_layer is not a key of decoder="
                                     "transformer: did you mean decoder.encoder.num_layers?"),
    ("+trainer.max_epoch=3", "trainer.max_epoch is not a key of trainer: did you mean "
                             "trainer.max_epochs?"),
    ("+backbone.filter=[8]", "backbone.filter is not a key of backbone=small_cnn: did you mean "
                             "backbone.filters?"),
    ("+dataset.roots=/data", "dataset.roots is not a key of dataset=synthetic: did you mean "
                             "dataset.root?"),
])
def test_a_key_added_with_plus_that_nothing_reads_names_the_nearest(override, message):
    assert _error(override, "debug=tiny").startswith(message)


@pytest.mark.parametrize("override,message", [
    ("decoder._target_=no_such_module.Decoder",
     "decoder._target_=no_such_module.Decoder cannot be imported (ModuleNotFoundError: No module "
     "named 'no_such_module'). Put the folder that holds its module on PYTHONPATH"),
    ("decoder._target_=json.JSONDecoder",
     "decoder._target_=json.JSONDecoder lacks beam_state, call, project, init_cache, step: a "
     "decoder must be a layer implementing captioning.models.decoder.Decoder."),
    ("decoder._target_=captioning.io.atomic_write_text",
     "decoder._target_=captioning.io.atomic_write_text needs path, text, which "
     "decoder=transformer does not set"),
    ("dataset._target_=json.loads", "dataset._target_=json.loads must take (cfg, report) first"),
    ("backbone._target_=[1]", "backbone._target_ must be a dotted path to a class or function"),
    ("callbacks.extra=[{_target_: no_such_module.Log}]",
     "callbacks.extra[0]._target_=no_such_module.Log cannot be imported"),
    ("callbacks.extra=[{_target_: json.JSONDecoder, strict: true, stric: 1}]",
     "callbacks.extra[0].stric is not a key of callbacks.extra[0]: did you mean "
     "callbacks.extra[0].strict?"),
    ("callbacks.extra=[log]", "callbacks.extra must be a list of callbacks, each a dict with "
                              "_target_"),
])
def test_a_wrong_target_is_one_message_naming_the_key(override, message):
    assert _error(override).startswith(message)


def test_a_users_option_from_their_config_folder_is_checked_against_its_target(user_conf):
    search = f"hydra.searchpath=[file://{user_conf}]"
    cfg = compose_config(search, "decoder=mine")
    check_config(cfg)                                    # any label; its keys are Dec's
    assert cfg.decoder._target_ == "user_plug.Dec" and cfg.decoder.name == "mine"
    assert _error(search, "decoder=mine", "+decoder.dept=3").startswith(
        "decoder.dept is not a key of decoder=mine: did you mean decoder.depth? An option's own "
        "keys are the parameters of its _target_ (user_plug.Dec: vocab_size, max_len, dim, "
        "depth, dropout).")
    assert _error(search, "decoder=mine", "~decoder.depth").startswith(
        "decoder._target_=user_plug.Dec needs depth, which decoder=mine does not set")
    # a reader's own keys are its parameters after (cfg, report)
    check_config(compose_config("dataset._target_=user_plug.read", "+dataset.captions_file=c.csv"))
    assert _error("dataset._target_=user_plug.read", "+dataset.captions=c.csv").startswith(
        "dataset.captions is not a key of dataset=synthetic: did you mean dataset.captions_file?")


def test_the_config_path_variable_adds_a_users_folder(user_conf, monkeypatch):
    monkeypatch.setenv("CAPTIONING_CONFIG_PATH", str(user_conf))
    assert compose_config("decoder=mine").decoder._target_ == "user_plug.Dec"


def test_run_py_says_a_wrong_target_in_one_line_and_exits_2(tmp_path):
    for override, words in [("decoder._target_=no_such_module.Decoder",
                             "error: decoder._target_=no_such_module.Decoder cannot be imported"),
                            ("+decoder.num_head=4", "error: decoder.num_head is not a key of "
                                                    "decoder=transformer: did you mean "
                                                    "decoder.num_heads?")]:
        result = subprocess.run([sys.executable, str(ROOT / "run.py"), override, "debug=tiny",
                                 "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [words + result.stderr.split(words)[1]
                                                      .splitlines()[0]]
        assert "Traceback" not in result.stderr


def test_a_run_saved_before_target_existed_resumes_and_builds_from_its_names(tmp_path):
    """config.yaml without the _target_ keys: resuming sees no change, and each option's code
    is found from its name."""
    from omegaconf import OmegaConf

    from captioning.plugins import target_of
    from captioning.runs.resume import resume_changes

    overrides = ("debug=tiny", "decoder=gru", f"paths.output_dir={tmp_path}")
    old = OmegaConf.to_container(compose_config(*overrides), resolve=True)
    for group in ("backbone", "decoder", "dataset"):
        del old[group]["_target_"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    assert resume_changes(tmp_path, compose_config(*overrides)) == []
    assert [target_of(g, old[g]) for g in ("backbone", "decoder", "dataset")] == [
        "captioning.models.backbones.get_backbone", "captioning.models.build.gru_decoder",
        "captioning.data.readers.read_flickr8k"]
    assert resume_changes(tmp_path, compose_config(*overrides, "decoder._target_=my.Dec")) == [
        "decoder._target_: None -> 'my.Dec'"]


def test_a_users_logger_block_is_checked_like_an_option(user_conf):
    """logger.<name> with _target_: its keys are its class's parameters (run_dir is given);
    a mistyped one names the nearest, and the built-in tensorboard block's keys pass."""
    check_config(compose_config("+logger.mine._target_=user_plug.Log", "+logger.mine.prefix=x",
                                "logger=[comet,tensorboard]"))
    assert _error("+logger.mine._target_=user_plug.Log", "+logger.mine.prefx=x") == (
        "logger.mine.prefx is not a key of logger.mine: did you mean logger.mine.prefix? "
        "user_plug.Log takes run_dir, prefix.")
    assert "logger.mine._target_=user_plug.Nope cannot be imported" in _error(
        "+logger.mine._target_=user_plug.Nope")
    assert "did you mean logger.tensorboard.max_captions?" in _error(
        "logger=[comet,tensorboard]", "+logger.tensorboard.max_caption=3")
