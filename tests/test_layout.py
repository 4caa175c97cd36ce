"""The package's shape: imports go one way (no circle, nothing imports a stage module), the DAG and
plugin files import only the run plan and small helpers, and no module grows into several jobs."""
from __future__ import annotations

import ast
from pathlib import Path

from stage_closure import ROOT, imports_of, module_files

MODULES = module_files()
# What dags/ and plugins/ may import from the package: the run plan and helpers that load no pandas,
# torch or GX (every DAG parse imports them).
FOR_AIRFLOW = {"pipeline", "pipeline.runplan", "pipeline.days", "pipeline.ops", "pipeline.ops.lease",
               "pipeline.ops.events"}
MAX_LINES = 450  # a module past this is doing several jobs (gate.py, one topic, is the largest at ~420)


def graph() -> dict[str, set[str]]:
    """Import statements only: the command table names every command's module in a string, and the
    estimator registry loads its estimators by scanning their package; neither is a dependency."""
    return {name: imports_of(name, MODULES, dynamic=False) - {name} for name in MODULES}


def test_no_import_circle():
    edges, state, circles = graph(), {}, []

    def visit(name, path):
        state[name] = "open"
        for target in sorted(edges[name]):
            if state.get(target) == "open":
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def folder_of(name: str) -> str:
    """The package's top-level part a module belongs to: pipeline.model.ranker -> model."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and MODULES[name].name == "__init__.py") else name


def test_no_two_folders_import_each_other():
    between = {}
    for name, targets in graph().items():
        for target in targets:
            if folder_of(name) != folder_of(target):
                between.setdefault((folder_of(name), folder_of(target)), []).append(f"{name} -> {target}")
    both_ways = {f"{a} <-> {b}": between[(a, b)] + between[(b, a)] for a, b in between if (b, a) in between and a < b}
    assert not both_ways, both_ways


def test_no_module_imports_a_stage_module():
    importers = sorted(f"{name} -> {target}" for name, targets in graph().items() for target in targets
                       if target.startswith("pipeline.stages.") and not name.startswith("pipeline.stages"))
    assert not importers, f"stage modules are entry points, not libraries: {importers}"


def test_dags_and_plugins_import_only_the_run_plan_and_small_helpers():
    found = {}
    for path in [*(ROOT / "dags").glob("*.py"), *(ROOT / "plugins").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                names = {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                         for a in node.names}
                found.setdefault(path.name, set()).update(names)
            elif isinstance(node, ast.Import):
                found.setdefault(path.name, set()).update(a.name for a in node.names if a.name.startswith("pipeline"))
    assert found, "the DAGs import nothing from the package: this test reads the wrong files"
    beyond = {name: sorted(mods - FOR_AIRFLOW) for name, mods in found.items() if mods - FOR_AIRFLOW}
    assert not beyond, beyond


def test_modules_stay_small():
    long = {name: n for name, path in MODULES.items()
            if (n := len(Path(path).read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by job: {long}"
