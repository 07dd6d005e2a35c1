# `make help` lists the targets. Everything runs inside .venv, created on first use.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ARGS    ?=
# pytest-xdist workers for make test (CI has 2 cores); WORKERS=0 runs one process
WORKERS ?= 2

.DEFAULT_GOAL := help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  %-10s %s\n",$$1,$$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its dev tools

train: $(STAMP)  ## train on the default config (embedded synthetic data); extra overrides: make train ARGS="decoder=gru"
	$(BIN)/python run.py $(ARGS)

test: $(STAMP)  ## run the test suite (what CI runs)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadgroup --durations=15 tests   # the 15 slowest are listed at the end

sweep: $(STAMP)  ## a two-job sweep over decoders, then the comparison table
	$(BIN)/python run.py -m decoder=gru,transformer $(ARGS)
	$(BIN)/python -m captioning.compare $$(ls -d outputs/multirun/*/* | sort | tail -1)

compare: $(STAMP)  ## rank the jobs of a sweep: make compare SWEEP=outputs/multirun/<date>/<time>
	$(BIN)/python -m captioning.compare $(SWEEP)

kangas: $(STAMP)  ## serve every Kangas DataGrid under outputs/ on 127.0.0.1:4000
	$(BIN)/python -m captioning.review outputs $(ARGS)

bench: $(STAMP)  ## speed benchmark vs the recipe-A way (ratios; ARGS=--quick, --presets)
	$(BIN)/python -m captioning.bench $(ARGS)

lint: $(STAMP)  ## ruff on every Python file, yamllint on conf/ and experiments/ (both at 100 columns)
	$(BIN)/ruff check .
	$(BIN)/yamllint --strict conf experiments

clean:  ## remove caches and build files (keeps outputs/ and .venv)
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install train test sweep compare kangas bench lint clean
