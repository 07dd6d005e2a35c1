"""Score a finished run without retraining, on val, test or holdout, with any decoding.

    python eval.py run_dir=outputs/2026-11-21/12-00-00 split=test \
decode.method=beam decode.beam_size=5

which=last scores the last epoch's weights, which=best the selected best (the default is the run's
own callbacks.checkpoints.select); which=mean:21-30 the
mean of epochs 21-30's weights (checkpoint averaging; the run must have kept them with
callbacks.checkpoints.every_epoch=true).

split=holdout: the images the run held out (dataset.holdout in its config.yaml), chosen again
from the run's config, so the same images; they cannot change after training. split=untouched:
dataset.untouched_list's images, which no run scores by itself: the figures to quote.

Writes eval_<split>_<decoding>.json and predictions_<split>_<decoding>.csv into the run
directory, and with callbacks.kangas.enabled (the run's setting) the Kangas grid
predictions/eval_<split>_<decoding>.datagrid: callbacks.kangas.max_rows images, each with an
attention heat map per generated word (callbacks.kangas.attention=false: none). The
training-time metrics.json is never touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from captioning import CaptioningError, run_cli
from captioning.privacy import no_phone_home
from captioning.quiet import import_tensorflow, quiet_libraries

no_phone_home()   # before Kangas or Comet is imported (captioning/privacy.py)
quiet_libraries()  # library start-up noise off (captioning/quiet.py; CAPTIONING_VERBOSE=1: on)

OWN_KEYS = ("run_dir", "split", "which")
# What may change at scoring time: the run's decode/evaluation/dataset, and its grid settings.
ALLOWED = ("decode", "evaluation", "dataset", "callbacks")
# ... except which images were held out from training.
HOLDOUT_KEYS = ("dataset.holdout", "dataset.holdout_seed", "dataset.holdout_list",
                "dataset.untouched_list")
SPLITS = ("val", "test", "holdout", "untouched")


def decoding_name(decode) -> str:
    tta, rerank = decode.get("tta", "none"), decode.get("rerank", "none")
    name = _method_name(decode) + ("" if tta == "none" else f"_tta_{tta}")
    if rerank == "consensus":       # e.g. beam10_lp0.3_consensus10_flip
        name += f"_consensus{decode.rerank_neighbours}_{decode.rerank_views}"
    return name


def _method_name(decode) -> str:
    if decode.method == "beam":
        return f"beam{decode.beam_size}" + (f"_lp{decode.length_penalty:g}"
                                            if decode.length_penalty else "")
    if decode.method == "top_k":
        return f"top_k{decode.k}_t{decode.temperature:g}"
    if decode.method == "top_p":
        return f"top_p{decode.p:g}_t{decode.temperature:g}"
    return "greedy"


def result_name(split: str, decode, which: str, overrides: list[str]) -> str:
    """``<split>_<decoding>[_last][_<hash>]``: the decoding in words, the weights when not the
    best, and a short hash of every other override (a dataset or evaluation setting, a
    temperature the decoding's name leaves out), so no two settings share a result file."""
    import hashlib

    weights = which.replace("mean:", "mean").replace(",", "+")    # a file name: no colon
    name = f"{split}_{decoding_name(decode)}" + ("" if which == "best" else f"_{weights}")
    named = {"decode.method", "decode.beam_size", "decode.length_penalty", "decode.tta",
             "decode.rerank", "decode.rerank_neighbours", "decode.rerank_views"}
    named |= {"decode.k", "decode.temperature"} if decode.method == "top_k" else set()
    named |= {"decode.p", "decode.temperature"} if decode.method == "top_p" else set()
    # The grid settings (callbacks.kangas.*) change no score: they do not name a result.
    other = sorted(o for o in overrides if o.split("=")[0].lstrip("+~") not in named
                   and not o.lstrip("+~").startswith("callbacks."))
    if other:
        name += "_" + hashlib.sha1(" ".join(other).encode()).hexdigest()[:6]
    return name


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    if not argv or any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0 if argv else 2
    args = OmegaConf.from_dotlist([a for a in argv if a.split("=")[0] in OWN_KEYS])
    rest = [a for a in argv if a.split("=")[0] not in OWN_KEYS]
    if "run_dir" not in args:
        raise CaptioningError("run_dir=... is required: "
                              "the run directory to score (outputs/<date>/<time>).")
    split = args.get("split", "val")
    if split not in SPLITS:
        raise CaptioningError(f"split must be one of {', '.join(SPLITS)}. Received: split={split}")
    held = [a for a in rest if a.split("=")[0].lstrip("+~") in HOLDOUT_KEYS]
    if held:
        raise CaptioningError(f"{held[0].split('=')[0]} cannot change after training: the run "
                              f"trained on every train image it did not hold out, so other "
                              f"held-out images would be images it has seen. Received: {held[0]}")

    import_tensorflow()                   # without its start-up noise (captioning/quiet.py)
    from captioning.console import console, print_scores, print_trained_on
    from captioning.data.datamodule import build_data
    from captioning.evaluation.evaluate import evaluate, write_predictions
    from captioning.io import atomic_write_text
    from captioning.runs.checkpoints import load_run, merge_overrides
    from captioning.runs.files import default_weights, weights_epoch

    run_dir = Path(args.run_dir)
    which = str(args.get("which") or default_weights(run_dir))   # the run's own choice
    cfg, vocab, model = load_run(run_dir, which)
    cfg = merge_overrides(_with_grid_defaults(cfg), rest, allowed=ALLOWED)
    print_trained_on(run_dir, cfg)
    data = build_data(cfg, vocab=vocab)
    records = data.splits.get(split, [])
    if not records and split in ("holdout", "untouched"):
        key = "dataset.holdout and holdout_list are" if split == "holdout" else \
            "dataset.untouched_list is"
        raise CaptioningError(f"The run held out no {split} images ({key} null in its "
                              f"config.yaml): a held-out split is chosen before training, "
                              f"python run.py dataset.holdout=N or dataset.untouched_list=FILE.")
    if not records:
        raise CaptioningError(f"The run's dataset has no {split} split "
                              f"({'; '.join(data.report.notes)}).")
    r = evaluate(model, data, split, cfg, seed=int(cfg.seed))
    name = result_name(split, cfg.decode, which, rest)
    result = {split: r.summary,
              "meta": {"decode": OmegaConf.to_container(cfg.decode), "images": len(records),
                       "weights": which, "notes": r.notes}}
    atomic_write_text(run_dir / f"eval_{name}.json", json.dumps(result, indent=2))
    write_predictions(run_dir / f"predictions_{name}.csv", records, r.predictions, r.per_image,
                      r.samples)
    print_scores(result, r.notes)
    console.print(f"wrote {run_dir / f'eval_{name}.json'} and predictions_{name}.csv")
    if cfg.callbacks.kangas.enabled:
        _write_grid(model, data, r, cfg, run_dir, f"eval_{name}", weights_epoch(run_dir, which))
    return 0


def _with_grid_defaults(cfg):
    """A run saved before a Kangas grid option existed gets that option's default."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.load(Path(__file__).resolve().parent / "conf" / "callbacks"
                              / "default.yaml")
    cfg.callbacks.kangas = OmegaConf.merge(defaults.kangas, cfg.callbacks.get("kangas") or {})
    return cfg


def _write_grid(model, data, r, cfg, run_dir: Path, name: str, epoch: int | None) -> None:
    """predictions/<name>.datagrid: max_rows images (the training grids' choice), with their
    attention maps when callbacks.kangas.attention is true."""
    from captioning.console import console
    from captioning.models.attention import grid_maps
    from captioning.tracking.kangas_grids import pick_rows, write_grid

    rows = {x.id for x in pick_rows(r.records, int(cfg.callbacks.kangas.max_rows), int(cfg.seed))}
    keep = [i for i, x in enumerate(r.records) if x.id in rows]
    records, preds = [r.records[i] for i in keep], [r.predictions[i] for i in keep]
    maps = (grid_maps(model, data, records, preds, int(cfg.evaluation.batch_size),
                      int(cfg.decode.get("attention_block", -1)))
            if cfg.callbacks.kangas.get("attention", False) else None)
    path = write_grid(run_dir, name, records, preds, r.per_image, epoch, cfg, attention=maps)
    if path is not None:
        console.print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
