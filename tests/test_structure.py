"""The shape of the code: what keeps it readable for the next person (no import cycles, short
functions, a train.py that only composes, config checks without TensorFlow, a README that is a
manual)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "captioning"
MAX_FUNCTION_LINES = 60
LONG_ALLOWED = {("bench.py", "main")}          # the benchmark's script body may stay long


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """Package modules imported anywhere in ``path``, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n for n in [node.module, *names] if n in mods}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    mods = _modules()
    graph = {m: _imports(p, mods) - {m} for m, p in mods.items()}
    # A module importing its own package's __init__ is how Python loads it, not a cycle.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    assert _cycles(graph) == []


def test_no_function_longer_than_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (path.name, node.name) not in LONG_ALLOWED:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({lines} lines)")
    assert long == []


def test_training_train_py_stays_under_200_lines():
    lines = (PACKAGE / "training" / "train.py").read_text().count("\n")
    assert lines <= 200, f"training/train.py has {lines} lines: move concerns out of it"


# Modules the entry points use before the config is checked: they never load TensorFlow.
LIGHT = ("captioning.config", "captioning.config_check", "captioning.config_rules",
         "captioning.runs.files", "captioning.runs.resume", "captioning.io",
         "captioning.data.readers", "captioning.console", "captioning.privacy")


def test_config_check_and_the_run_folder_lookup_run_without_tensorflow():
    """Every value rule and the resume lookup run before TensorFlow is imported (a fresh
    interpreter proves it)."""
    import subprocess
    import sys

    code = ("import sys\nfrom tests.conftest import compose_config\n"
            f"import {', '.join(LIGHT)}\n"
            "from captioning.config_check import check_config\n"
            "check_config(compose_config())\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


def _package_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "captioning" or node.module.startswith("captioning.")):
            yield node


def test_package_modules_import_at_the_top_and_use_only_public_names():
    """Imports inside functions hide a module's dependencies; private names imported across
    modules tie one module to another's internals (make the shared name public instead)."""
    inside, private = [], []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                inside += [f"{path.relative_to(PACKAGE)}:{n.lineno}" for n in _package_imports(fn)]
    for path in [*PACKAGE.rglob("*.py"), *PACKAGE.parent.glob("*.py")]:
        for node in _package_imports(ast.parse(path.read_text())):
            private += [f"{path.name}:{node.lineno} {a.name}" for a in node.names
                        if a.name.startswith("_")]
    assert inside == [] and private == []


def test_no_ticket_numbers_in_code_configs_or_tests():
    """Code says what and why; which ticket asked for it is in the history."""
    import re

    root = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *root.glob("*.py"), *root.glob("tests/**/*.py"),
             *root.glob("conf/**/*.yaml"), *root.glob("experiments/*.yaml"),
             *root.glob("hydra_plugins/**/*.py")]
    ticket = re.compile(r"\b[Ii]ssues? #?\d+|\(#\d+\)")
    found = [f"{p.relative_to(root)}:{i}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if ticket.search(line)]
    assert found == []


def test_presets_hold_settings_not_histories():
    """A preset keeps one "why" line per setting; what was tried is in docs/experiments/."""
    for preset in (PACKAGE.parent / "experiments").glob("*.yaml"):
        lines = [x.strip() for x in preset.read_text().splitlines() if x.strip()]
        comments = sum(x.startswith("#") for x in lines)
        assert comments <= len(lines) - comments, f"{preset.name}: {comments} comment lines"


def test_readme_is_a_manual_not_a_diary():
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 15_000, f"README.md has {len(readme)} characters: move detail to docs/"
    assert (PACKAGE.parent / "docs" / "architecture.md").is_file()
    assert list((PACKAGE.parent / "docs" / "experiments").glob("*.md"))
