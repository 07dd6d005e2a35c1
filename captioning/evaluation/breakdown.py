"""Where the errors are: per-class scores and the most repeated captions of one or more runs.

    python -m captioning.evaluation.breakdown RUN [RUN ...] --split untouched

Each RUN is a run directory (its ``predictions_<split>*.csv``: the newest one for that split,
written by the run itself or by ``eval.py split=<split>``) or a predictions CSV. With several
runs (seeds of one variant) it prints each run's scores, their mean and spread, the per-class
table averaged over the runs, and the captions written most often.

Classes (``--classes``): ``ucm`` maps UCM-Captions' file names (``N.jpg``, class ``(N-1)//100``,
21 scene classes in the UC Merced order) to their class; ``auto`` (the default) picks ``ucm``
when every image is named that way, else ``none`` (one class, the whole split).
Per class: BLEU-4 is the corpus BLEU of that class's images; CIDEr the mean of their per-image
CIDEr-D scored with the whole split's document frequencies, so the classes' CIDEr, weighted by
their image counts, average to the split's.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from captioning import CaptioningError, run_cli
from captioning.data.classes import UCM_CLASSES, is_ucm, labeller
from captioning.evaluation.metrics import score
from captioning.io import atomic_write_text


def predictions_file(path: Path, split: str) -> Path:
    """A run directory -> its newest predictions CSV for ``split``; a CSV -> itself."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise CaptioningError(f"{path}: no such run directory or predictions file.")
    pattern = "predictions.csv" if split == "val" else f"predictions_{split}.csv"
    found = [*path.glob(pattern), *path.glob(f"predictions_{split}_*.csv")]
    if not found:
        raise CaptioningError(
            f"{path} has no predictions for split={split}. Score it first: python eval.py "
            f"run_dir={path} split={split}")
    return max(found, key=lambda p: p.stat().st_mtime)


def read_predictions(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """A predictions CSV (``image, references, prediction, ...``) -> (references, predictions)."""
    refs, preds = {}, {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            refs[row["image"]] = row["references"].split(" | ")
            preds[row["image"]] = row["prediction"]
    if not preds:
        raise CaptioningError(f"{path}: no predictions in it.")
    return refs, preds


def class_of(ids, classes: str):
    """The rule naming each image's class: ``ucm``, ``none`` or ``auto`` (see the module doc)."""
    ucm = all(is_ucm(i) for i in ids)
    if classes == "ucm" and not ucm:
        raise CaptioningError("--classes ucm needs UCM-Captions' image names (1.jpg ... 2100.jpg)."
                              " Use --classes none for one row.")
    if classes == "ucm" or (classes == "auto" and ucm):
        label = labeller("ucm")
        return lambda i: UCM_CLASSES[label(i)]
    return lambda i: "all"


def breakdown(refs: dict, preds: dict, name_class) -> dict:
    """One run: its scores, per class (images, BLEU-4, CIDEr) and its captions' counts."""
    whole = score(refs, preds, meteor=False)
    by_class = defaultdict(list)
    for i in sorted(preds):
        by_class[name_class(i)].append(i)
    rows = {}
    for cls, ids in sorted(by_class.items()):
        part = score({i: refs[i] for i in ids}, {i: preds[i] for i in ids}, meteor=False)
        cider = statistics.fmean(whole.per_image[i]["cider"] for i in ids)
        rows[cls] = {"images": len(ids), "bleu_4": part.corpus["bleu_4"], "cider": cider}
    return {"scores": {k: whole.corpus[k] for k in ("bleu_4", "cider", "rouge_l")},
            "classes": rows, "captions": Counter(preds.values())}


def summarise(runs: dict[str, dict], top: int) -> dict:
    """Several runs -> mean and spread (sample standard deviation, min, max) of each score, the
    per-class means, and the most repeated captions over all runs."""
    scores = {}
    for metric in next(iter(runs.values()))["scores"]:
        values = [r["scores"][metric] for r in runs.values()]
        scores[metric] = {"mean": statistics.fmean(values), "min": min(values),
                          "max": max(values),
                          "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    classes = {}
    for cls in next(iter(runs.values()))["classes"]:
        rows = [r["classes"][cls] for r in runs.values() if cls in r["classes"]]
        classes[cls] = {"images": rows[0]["images"],
                        **{m: statistics.fmean(x[m] for x in rows) for m in ("bleu_4", "cider")}}
    pooled = sum((r["captions"] for r in runs.values()), Counter())
    images = sum(r["classes"][c]["images"] for r in runs.values() for c in r["classes"])
    return {"runs": {k: v["scores"] for k, v in runs.items()}, "mean": scores,
            "classes": classes,
            "distinct_captions": {k: len(v["captions"]) for k, v in runs.items()},
            "images_per_run": images // len(runs),
            "most_repeated": pooled.most_common(top)}


def print_summary(summary: dict, split: str) -> None:
    out = Console()
    runs = Table(title=f"{split}: each run, then the mean (± sample std) over "
                       f"{len(summary['runs'])} run(s)")
    for col in ("run", "BLEU-4", "CIDEr", "ROUGE-L", "distinct captions"):
        runs.add_column(col, justify="left" if col == "run" else "right")
    for name, s in summary["runs"].items():      # the folder's own name: a short column
        runs.add_row(Path(name).name or name, f"{s['bleu_4']:.3f}", f"{s['cider']:.3f}",
                     f"{s['rouge_l']:.3f}",
                     f"{summary['distinct_captions'][name]} / {summary['images_per_run']}")
    m = summary["mean"]
    runs.add_row("mean", *(f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}"
                           for k in ("bleu_4", "cider", "rouge_l")), "", style="bold")
    out.print(runs)
    classes = Table(title="per class (mean over the runs), worst CIDEr first")
    for col in ("class", "images", "BLEU-4", "CIDEr"):
        classes.add_column(col, justify="left" if col == "class" else "right")
    for cls, r in sorted(summary["classes"].items(), key=lambda kv: kv[1]["cider"]):
        classes.add_row(cls, str(r["images"]), f"{r['bleu_4']:.3f}", f"{r['cider']:.3f}")
    out.print(classes)
    repeated = Table(title="most repeated captions (all runs)")
    repeated.add_column("times", justify="right")
    repeated.add_column("caption")
    for caption, n in summary["most_repeated"]:
        repeated.add_row(str(n), caption)
    out.print(repeated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m captioning.evaluation.breakdown",
        description=__doc__.split("\n\n")[0],
        epilog="e.g. python -m captioning.evaluation.breakdown outputs/seed1 outputs/seed2 "
               "outputs/seed3 --split untouched --out untouched.json")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories or predictions CSVs")
    parser.add_argument("--split", default="val",
                        help="val | test | holdout | untouched (default: val)")
    parser.add_argument("--classes", default="auto", choices=("auto", "ucm", "none"))
    parser.add_argument("--top", type=int, default=10, help="repeated captions listed")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    runs = {}
    for path in args.runs:
        file = predictions_file(path, args.split)
        refs, preds = read_predictions(file)
        runs[str(path)] = breakdown(refs, preds, class_of(list(preds), args.classes))
        print(f"read {file}", file=sys.stderr)
    summary = summarise(runs, args.top)
    print_summary(summary, args.split)
    if args.out:
        atomic_write_text(args.out, json.dumps(summary, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
