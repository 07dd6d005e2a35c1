"""Compare the jobs of a sweep: each job's overrides and final scores, best first.

    python -m captioning.compare outputs/multirun/2026-11-21/12-00-00 [--by cider] [--csv FILE]

Jobs without metrics.json are listed as failed (or still running), with the last line of their
log. The table is also written as CSV (default: <sweep dir>/comparison.csv). Jobs whose overrides
differ only in ``seed`` are grouped in a second table: mean ± standard deviation and n per metric
(also in <sweep dir>/comparison_seeds.csv). ``comparison.datagrid`` (Kangas; ``make kangas``
serves it) has one row per validation image: the image, its references, each job's caption and
CIDEr, the best job for the image and the spread (best minus worst CIDEr); sort by spread to
find the images a change helped or hurt.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

from captioning.data.datamodule import load_records
from captioning.io import atomic_path
from captioning.privacy import no_phone_home
from captioning.quiet import quiet_libraries
from captioning.tracking.kangas_grids import image_cell, save_grid

no_phone_home()   # as every entry point does (captioning/privacy.py)
quiet_libraries()  # library start-up noise off (captioning/quiet.py)

COLUMNS = ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "loss", "accuracy")
# dataset.holdout's scores (images never trained or selected on), where the runs have them
HOLDOUT_COLUMNS = ("holdout_bleu_4", "holdout_cider")
_SEED = re.compile(r"^[+~]*seed=")


def collect(sweep: Path) -> list[dict]:
    import yaml

    rows = []
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda p: int(p.name) if p.name.isdigit() else p.name)
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [] \
            if (job / ".hydra" / "overrides.yaml").exists() else []
        row = {"job": job.name, "overrides": " ".join(overrides), "status": "ok",
               "seed": job_seed(job, overrides)}
        metrics = job / "metrics.json"
        if metrics.exists():
            m = json.loads(metrics.read_text())
            row.update({k: m.get("val", {}).get(k) for k in COLUMNS})
            row["test_cider"] = m.get("test", {}).get("cider")
            if "holdout" in m:
                row.update({c: m["holdout"].get(c.split("_", 1)[1]) for c in HOLDOUT_COLUMNS})
            row["best_epoch"] = m.get("meta", {}).get("best_epoch")
        else:
            state = job / "checkpoints" / "last.state.npz"
            row["status"] = "interrupted" if state.exists() else "failed"
            log = next(iter(job.glob("*.log")), None)
            lines = ([x for x in log.read_text(errors="replace").splitlines() if x.strip()]
                     if log else [])
            row["error"] = error_line(lines)
        rows.append(row)
    return rows


def job_seed(job: Path, overrides: list[str]):
    """The seed a job ran with: its composed config's (``.hydra/config.yaml``), so a job that
    kept the default seed counts too; else its ``seed=`` override; else None."""
    import yaml

    composed = job / ".hydra" / "config.yaml"
    if composed.exists():
        seed = (yaml.safe_load(composed.read_text()) or {}).get("seed")
        if seed is not None:
            return seed
    given = [o.split("=", 1)[1] for o in overrides if _SEED.match(o)]
    return given[0] if given else None


def seed_groups(rows: list[dict], by: str = "cider") -> list[dict]:
    """The finished jobs grouped by their overrides without ``seed=``: per group n, the seeds,
    and per metric the mean and the sample standard deviation (n - 1; None for n = 1), best
    mean of ``by`` first."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            key = " ".join(o for o in r["overrides"].split() if not _SEED.match(o))
            groups.setdefault(key, []).append(r)
    out = []
    for key, members in groups.items():
        members = sorted(members, key=lambda m: (not m["job"].isdigit(), int(m["job"])
                                                 if m["job"].isdigit() else 0, m["job"]))
        g = {"overrides": key or "(defaults)", "n": len(members),
             "jobs": " ".join(m["job"] for m in members),
             "seeds": " ".join(str(m["seed"]) for m in members if m.get("seed") is not None)
             or "(default)"}
        for c in (*COLUMNS, *HOLDOUT_COLUMNS):
            values = [float(m[c]) for m in members if isinstance(m.get(c), (int, float))]
            g[c] = statistics.fmean(values) if values else None
            g[f"{c}_std"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(g)
    sign = 1 if by == "loss" else -1
    return sorted(out, key=lambda g: sign * (g.get(by) or 0))


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=180)   # logs, pipes: no squeeze


def error_line(lines: list[str], width: int = 160) -> str:
    """What a failed job's log says went wrong: its last ``error:`` line (run.py's one-line
    message), else its last line, from the start (the start names the problem)."""
    errors = [x for x in lines if x.split("] - ", 1)[-1].startswith("error:")]
    line = (errors or lines or [""])[-1].split("] - ", 1)[-1]
    return line if len(line) <= width else line[:width - 1] + "…"


TIE_RULE = ("ties (equal to the 3 decimals shown) are ranked by val loss, lower first, then "
            "by job number")


def rank_key(by: str):
    """The sort key of a job row: finished jobs first, by ``by`` as shown (3 decimals; loss:
    lower first, else higher), ties by val loss (lower), then by job number (``TIE_RULE``)."""
    sign = 1 if by == "loss" else -1

    def key(r: dict):
        value = r.get(by)
        loss = r.get("loss")
        return (r["status"] != "ok", value is None, sign * round(value or 0.0, 3),
                loss is None, loss or 0.0, int(r["job"]) if r["job"].isdigit() else 0,
                r["job"])
    return key


def print_jobs(sweep: Path, rows: list[dict], by: str) -> None:
    """The per-job table: what differs between jobs, their scores, their status."""
    from rich.table import Table

    # Show what differs between jobs; what they share goes in the caption.
    split = [set(r["overrides"].split()) for r in rows]
    common = set.intersection(*split) if split else set()
    for r in rows:
        r["varied"] = " ".join(o for o in r["overrides"].split() if o not in common) or "(defaults)"
    table = Table(title=f"{sweep}: ranked by val {by}",
                  caption=f"shared overrides: {' '.join(sorted(common)) or 'none'}; "
                          f"{TIE_RULE}")
    for col in ("rank", "job", "overrides (varied)", *COLUMNS, "status"):
        table.add_column(col, justify="right" if col in COLUMNS or col == "rank" else "left")
    for i, r in enumerate(rows, 1):
        table.add_row(str(i) if r["status"] == "ok" else "-", r["job"], r["varied"],
                      *(f"{r[c]:.3f}" if isinstance(r.get(c), float) else "" for c in COLUMNS),
                      r["status"] if r["status"] == "ok"
                      else f"{r['status']}: {r.get('error', '')}")
    _console().print(table)


def print_groups(groups: list[dict], by: str) -> None:
    """Mean ± standard deviation over seeds, one row per group of jobs that differ in seed."""
    from rich.table import Table

    table = Table(title=f"Jobs that differ only in seed: mean ± std over seeds, by val {by}",
                  caption="std: sample standard deviation (n - 1). Differences inside about "
                          "two std are noise.")
    columns = COLUMNS + tuple(c for c in HOLDOUT_COLUMNS
                              if any(g.get(c) is not None for g in groups))
    for col in ("overrides (without seed)", "n", "seeds", *columns):
        table.add_column(col, justify="left" if col.startswith(("overrides", "seeds")) else "right")
    for g in groups:
        cells = []
        for c in columns:
            mean, std = g[c], g[f"{c}_std"]
            cells.append("" if mean is None else f"{mean:.3f}" if std is None
                         else f"{mean:.3f} ± {std:.3f}")
        table.add_row(g["overrides"], str(g["n"]), g["seeds"], *cells)
    _console().print(table)


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def job_predictions(job: Path) -> list[dict]:
    """A job's ``predictions.csv`` rows (image, references, prediction, bleu_4, cider)."""
    path = job / "predictions.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def image_paths(jobs: list[Path]) -> tuple[dict[str, str], list[str]]:
    """{image id: file} for the jobs' datasets (read from each job's config.yaml, without
    re-checking the images), and notes on the datasets that could not be read."""
    from omegaconf import OmegaConf

    paths: dict[str, str] = {}
    notes: list[str] = []
    seen = set()
    for job in jobs:
        try:
            cfg = OmegaConf.load(job / "config.yaml")
            key = (OmegaConf.to_yaml(cfg.dataset), int(cfg.seed))
            if key in seen:
                continue
            seen.add(key)
            ds = OmegaConf.merge(cfg.dataset, {"verify_images": False})
            splits, _ = load_records(ds, int(cfg.seed), progress=False)
        except Exception as e:  # noqa: BLE001 - the grid is still useful with grey squares
            notes.append(f"job {job.name}: images not found ({type(e).__name__}: {e})")
            continue
        for records in splits.values():
            paths.update({r.id: r.image for r in records})
    return paths, notes


def job_label(row: dict, width: int = 41) -> str:
    """A job's name in the grid's column names: its number and varied overrides with each key's
    last part (``trainer.learning_rate=0.001`` -> ``learning_rate=0.001``), as many whole ones
    as fit in ``width`` ("+" when some were left out). Kangas allows 50 characters per column
    name, and ": caption" follows; the number keeps the names apart."""
    parts = [row["job"]]
    for o in row.get("varied", row["overrides"]).split():
        key, _, value = o.partition("=")
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}" if value else o)
    label = " ".join(parts)
    while len(label) > width:
        parts.pop()
        label = " ".join(parts) + " +"
    return label


def best_jobs(ciders: dict[str, float]) -> str | None:
    """The job(s) with the image's highest CIDEr (tied ones joined by " = "); None when no job
    wins: all tied (all zero included) or the best is 0."""
    top = max(ciders.values())
    winners = [label for label, c in ciders.items() if c == top]
    if top <= 0 or (len(ciders) > 1 and len(winners) == len(ciders)):
        return None
    return " = ".join(winners)


def grid_rows(sweep: Path, rows: list[dict]) -> tuple[list[str], list[list], list[str]]:
    """The comparison grid's columns and rows (one per validation image of any finished job),
    and notes. Per job: its caption and CIDEr (empty where the image was not in its validation
    split, e.g. another seed's split); then the best job for the image and the spread."""
    jobs = [r for r in rows if r["status"] == "ok" and (sweep / r["job"] / "predictions.csv")
            .is_file()]
    labels = [job_label(r) for r in jobs]
    preds = [{p["image"]: p for p in job_predictions(sweep / r["job"])} for r in jobs]
    order = list(dict.fromkeys(i for p in preds for i in p))
    paths, notes = image_paths([sweep / r["job"] for r in jobs])

    columns = ["image", "id", "references"]
    for label in labels:
        columns += [f"{label}: caption", f"{label}: cider"]
    columns += ["best", "spread"]
    out = []
    for image in order:
        cells, ciders = [], {}
        for label, p in zip(labels, preds, strict=True):
            row = p.get(image)
            cider = float(row["cider"]) if row else None
            cells += [row["prediction"] if row else None, cider]
            if cider is not None:
                ciders[label] = cider
        refs = next(p[image]["references"] for p in preds if image in p)
        best = best_jobs(ciders)
        spread = max(ciders.values()) - min(ciders.values()) if len(ciders) > 1 else None
        out.append([image_cell(paths.get(image, "")), image, refs, *cells, best,
                    None if spread is None else round(spread, 4)])
    missing = sum(1 for i in order if i not in paths)
    if missing and not notes:
        notes.append(f"{missing} image(s) not found in the jobs' datasets: grey squares")
    return columns, out, notes


def write_comparison_grid(sweep: Path, rows: list[dict]) -> Path | None:
    """``comparison.datagrid`` in the sweep folder (None, with a message, when no job has
    predictions.csv)."""
    import kangas

    columns, grid, notes = grid_rows(sweep, rows)
    for note in notes:
        print(f"note: {note}")
    if not grid:
        print("note: no finished job has predictions.csv: no comparison.datagrid")
        return None
    types = {c: "FLOAT" if c.endswith(": cider") or c == "spread" else "TEXT" for c in columns}
    dg = kangas.DataGrid(grid, columns={**types, "image": "IMAGE-ASSET"}, name="comparison")
    captions = [c for c in columns if c == "references" or c.endswith(": caption")]
    return save_grid(dg, sweep / "comparison.datagrid", plain_text=captions)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="a multirun folder: outputs/multirun/<date>/<time>")
    p.add_argument("--by", default="cider",
                   help="validation metric to rank by (higher is better; loss: lower)")
    p.add_argument("--csv", type=Path,
                   help="where to write the table (default: <sweep>/comparison.csv)")
    p.add_argument("--no-grid", action="store_true",
                   help="do not write <sweep>/comparison.datagrid")
    args = p.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"error: {args.sweep} is not a folder (expected outputs/multirun/<date>/<time>)",
              file=sys.stderr)
        return 2
    rows = collect(args.sweep)
    if not rows:
        print(f"error: no Hydra jobs (folders with .hydra/) in {args.sweep}", file=sys.stderr)
        return 2
    rows.sort(key=rank_key(args.by))
    print_jobs(args.sweep, rows, args.by)
    groups = seed_groups(rows, args.by)
    if any(g["n"] > 1 for g in groups):
        print_groups(groups, args.by)
        write_csv(args.sweep / "comparison_seeds.csv", groups)
        print(f"wrote {args.sweep / 'comparison_seeds.csv'}")
    grid = None
    if not args.no_grid:
        try:
            grid = write_comparison_grid(args.sweep, rows)
        except Exception as e:  # noqa: BLE001 - the table and CSV matter more than the grid
            print(f"warning: could not write comparison.datagrid: {type(e).__name__}: {e}")
    out = args.csv or args.sweep / "comparison.csv"
    write_csv(out, [{k: v for k, v in r.items() if k != "varied"} for r in rows])
    print(f"wrote {out}")
    if grid is not None:
        print(f"wrote {grid} (one row per validation image; sort by spread). Serve it: "
              f"python -m captioning.review {args.sweep}   (or make kangas)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
