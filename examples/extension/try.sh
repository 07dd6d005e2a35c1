#!/usr/bin/env bash
# Trains the example with debug=tiny, from this folder: bash try.sh <project root> [overrides]
# (the command README.md gives). The project's .venv runs it, or $PYTHON.
set -euo pipefail
root=$(cd "${1:?usage: bash try.sh <project root> [key=value ...]}" && pwd)
shift
cd "$(dirname "$0")"
python=${PYTHON:-$root/.venv/bin/python}

"$python" make_data.py
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$python" "$root/run.py" \
  "hydra.searchpath=[file://$PWD/conf]" \
  dataset=shapes_csv backbone=patches decoder=lstm callbacks=with_log debug=tiny logger=none "$@"
