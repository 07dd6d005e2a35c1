"""Reading a finished run back: its resolved config, vocabulary and best (or last) weights."""

from __future__ import annotations

from pathlib import Path

from captioning import CaptioningError


def load_run(run_dir, which: str = "best"):
    """-> (cfg, vocab, model) of a run directory written by ``train``."""
    from omegaconf import OmegaConf

    from captioning.data.text import Vocabulary
    from captioning.models.build import build_model

    run_dir = Path(run_dir)
    cfg_path, vocab_path = run_dir / "config.yaml", run_dir / "checkpoints" / "vocab.json"
    weights = run_dir / "checkpoints" / f"{which}.weights.h5"
    for path in (cfg_path, vocab_path, weights):
        if not path.is_file():
            raise CaptioningError(f"{run_dir} is not a finished run: "
                                  f"{path.relative_to(run_dir)} is missing. "
                                  f"Point run_dir at a folder under outputs/ that holds "
                                  f"config.yaml and checkpoints/.")
    cfg = OmegaConf.load(cfg_path)
    # A run saved before a decode/evaluation option existed gets that option's default, so
    # eval.py and caption.py can use and override it on older runs too.
    defaults = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "config.yaml")
    for group in ("decode", "evaluation"):
        cfg[group] = OmegaConf.merge(defaults[group], cfg.get(group) or {})
    vocab = Vocabulary.load(vocab_path)
    model = build_model(cfg, vocab.size)
    model.load_weights(str(weights))
    model.compile()          # evaluate() needs a compiled model; the loss lives in test_step
    return cfg, vocab, model


def merge_overrides(cfg, overrides: list[str], allowed=("decode", "evaluation", "dataset")):
    """Apply ``key=value`` overrides to a loaded run config, for the groups that may change
    after training (decoding, evaluation, data location); anything else is an error."""
    from omegaconf import OmegaConf

    for item in overrides:
        key = item.split("=", 1)[0]
        if key.split(".")[0] not in allowed:
            raise CaptioningError(f"{key} cannot change after training; "
                                  f"only {', '.join(a + '.*' for a in allowed)} can. "
                                  f"Received: {item}")
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise CaptioningError(f"Unknown key {key} (see the run's config.yaml). "
                                  f"Received: {item}")
    OmegaConf.set_struct(cfg, True)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
