"""Compare the jobs of a sweep: each job's overrides and final scores, best first.

    python -m captioning.compare outputs/multirun/2026-11-21/12-00-00 [--by cider] [--csv FILE]

Jobs without metrics.json are listed as failed (or still running), with the last line of their
log. The table is also written as CSV (default: <sweep dir>/comparison.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from captioning.privacy import no_phone_home

no_phone_home()   # as every entry point does (captioning/privacy.py)

COLUMNS = ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "loss", "accuracy")


def collect(sweep: Path) -> list[dict]:
    import yaml

    rows = []
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                  key=lambda p: int(p.name) if p.name.isdigit() else p.name)
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [] \
            if (job / ".hydra" / "overrides.yaml").exists() else []
        row = {"job": job.name, "overrides": " ".join(overrides), "status": "ok"}
        metrics = job / "metrics.json"
        if metrics.exists():
            m = json.loads(metrics.read_text())
            row.update({k: m.get("val", {}).get(k) for k in COLUMNS})
            row["test_cider"] = m.get("test", {}).get("cider")
            row["best_epoch"] = m.get("meta", {}).get("best_epoch")
        else:
            state = job / "checkpoints" / "last.state.npz"
            row["status"] = "interrupted" if state.exists() else "failed"
            log = next(iter(job.glob("*.log")), None)
            lines = ([x for x in log.read_text(errors="replace").splitlines() if x.strip()]
                     if log else [])
            row["error"] = lines[-1][-160:] if lines else ""
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", type=Path, help="a multirun folder: outputs/multirun/<date>/<time>")
    p.add_argument("--by", default="cider",
                   help="validation metric to rank by (higher is better; loss: lower)")
    p.add_argument("--csv", type=Path,
                   help="where to write the table (default: <sweep>/comparison.csv)")
    args = p.parse_args(argv)
    if not args.sweep.is_dir():
        print(f"error: {args.sweep} is not a folder (expected outputs/multirun/<date>/<time>)",
              file=sys.stderr)
        return 2
    rows = collect(args.sweep)
    if not rows:
        print(f"error: no Hydra jobs (folders with .hydra/) in {args.sweep}", file=sys.stderr)
        return 2
    sign = 1 if args.by == "loss" else -1
    rows.sort(key=lambda r: (r["status"] != "ok", sign * (r.get(args.by) or 0)))

    from rich.console import Console
    from rich.table import Table

    # Show what differs between jobs; what they share goes in the caption.
    split = [set(r["overrides"].split()) for r in rows]
    common = set.intersection(*split) if split else set()
    for r in rows:
        r["varied"] = " ".join(o for o in r["overrides"].split() if o not in common) or "(defaults)"
    table = Table(title=f"{args.sweep}: ranked by val {args.by}",
                  caption=f"shared overrides: {' '.join(sorted(common)) or 'none'}")
    for col in ("rank", "job", "overrides (varied)", *COLUMNS, "status"):
        table.add_column(col, justify="right" if col in COLUMNS or col == "rank" else "left")
    for i, r in enumerate(rows, 1):
        table.add_row(str(i) if r["status"] == "ok" else "-", r["job"], r.pop("varied"),
                      *(f"{r[c]:.3f}" if isinstance(r.get(c), float) else "" for c in COLUMNS),
                      r["status"] if r["status"] == "ok"
                      else f"{r['status']}: {r.get('error', '')}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=180)        # logs and pipes: no 80-column squeeze
    console.print(table)
    out = args.csv or args.sweep / "comparison.csv"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    from captioning.io import atomic_path

    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
