"""Score a finished run without retraining, on val or test, with any decoding.

    python eval.py run_dir=outputs/2026-11-21/12-00-00 split=test \
decode.method=beam decode.beam_size=5

Writes eval_<split>_<decoding>.json and predictions_<split>_<decoding>.csv into the run
directory; the training-time metrics.json is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from captioning import CaptioningError, run_cli  # noqa: E402
from captioning.privacy import no_phone_home  # noqa: E402

no_phone_home()   # before Kangas or Comet is imported (captioning/privacy.py)

OWN_KEYS = ("run_dir", "split", "which")


def decoding_name(decode) -> str:
    tta = decode.get("tta", "none")
    return _method_name(decode) + ("" if tta == "none" else f"_tta_{tta}")


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

    name = f"{split}_{decoding_name(decode)}" + ("" if which == "best" else f"_{which}")
    named = {"decode.method", "decode.beam_size", "decode.length_penalty", "decode.tta"}
    named |= {"decode.k", "decode.temperature"} if decode.method == "top_k" else set()
    named |= {"decode.p", "decode.temperature"} if decode.method == "top_p" else set()
    other = sorted(o for o in overrides if o.split("=")[0].lstrip("+~") not in named)
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
    if split not in ("val", "test"):
        raise CaptioningError(f"split must be val or test. Received: split={split}")

    from captioning.console import console, print_scores
    from captioning.data.datamodule import build_data
    from captioning.evaluation.evaluate import evaluate, write_predictions
    from captioning.io import atomic_write_text
    from captioning.training.run_dir import load_run, merge_overrides

    run_dir = Path(args.run_dir)
    cfg, vocab, model = load_run(run_dir, args.get("which", "best"))
    cfg = merge_overrides(cfg, rest)
    data = build_data(cfg, vocab=vocab)
    records = data.splits[split]
    if not records:
        raise CaptioningError(f"The run's dataset has no {split} split "
                              f"({'; '.join(data.report.notes)}).")
    r = evaluate(model, data, split, cfg, seed=int(cfg.seed))
    name = result_name(split, cfg.decode, args.get("which", "best"), rest)
    result = {split: r.summary,
              "meta": {"decode": OmegaConf.to_container(cfg.decode), "images": len(records),
                       "weights": args.get("which", "best"), "notes": r.notes}}
    atomic_write_text(run_dir / f"eval_{name}.json", json.dumps(result, indent=2))
    write_predictions(run_dir / f"predictions_{name}.csv", records, r.predictions, r.per_image)
    print_scores(result, r.notes)
    console.print(f"wrote {run_dir / f'eval_{name}.json'} and predictions_{name}.csv")
    return 0


if __name__ == "__main__":
    run_cli(main)
