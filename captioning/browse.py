"""Browse a dataset before training (recipe A's first step): a Kangas DataGrid of images with
their captions and split.

    python -m captioning.browse dataset=flickr8k dataset.root=/data/flickr8k \
[max_rows=1000] [out=FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

from captioning import CaptioningError
from captioning.config import compose
from captioning.data.datamodule import load_records
from captioning.privacy import no_phone_home
from captioning.quiet import quiet_libraries
from captioning.tracking.kangas_grids import write_dataset_grid

no_phone_home()   # before Kangas is imported (captioning/privacy.py)
quiet_libraries()  # library start-up noise off (captioning/quiet.py)


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    own = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv
           if a.split("=")[0] in ("max_rows", "out")}
    overrides = [a for a in argv if a.split("=")[0] not in own]
    try:
        cfg = compose(overrides)
        splits, report = load_records(cfg.dataset, int(cfg.seed))
        out = Path(own.get("out") or f"outputs/browse/{cfg.dataset.name}.datagrid")
        write_dataset_grid(out, splits, int(own.get("max_rows", 1000)), int(cfg.seed))
    except CaptioningError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {s: len(r) for s, r in splits.items()}
    print(f"wrote {out} ({counts}; at most {own.get('max_rows', 1000)} rows per split)")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"open it with: python -m captioning.review {out.parent}   (or: make kangas)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
