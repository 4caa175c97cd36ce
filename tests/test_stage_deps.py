"""dvc.yaml and weekly/dvc.yaml declare what each stage runs: every pipeline/ module its command can
import and every params key that code reads, so a code or knob change reruns the stage instead of being
served stale from the run cache (and pushed to the remote by publish). Computed statically
(tests/stage_closure.py)."""
from __future__ import annotations

import ast
import os

import pytest
import yaml
from stage_closure import (
    COMMAND,
    ROOT,
    covered,
    import_closure,
    key_covered,
    module_files,
    param_reads,
)

from pipeline.__main__ import COMMANDS

# Keys the importance command reads only when it combines shards (--combine): the shard stages score,
# and a new weight transform or report knob must rerun the combine alone.
COMBINE_ONLY = {"importance_shard": ("importance.report", "importance.use_selection")}

MODULES = module_files()
# The daily retrain's pipeline and the weekly benchmark's.
PIPELINES = ("dvc.yaml", "weekly/dvc.yaml")


def stages() -> dict[str, dict]:
    """Every stage of every pipeline file, its deps relative to the project (a stage's paths are relative to
    its wdir); the daily retrain's by name, the others' as FILE:NAME, as DVC addresses them."""
    found = {}
    for pipeline in PIPELINES:
        declared = yaml.safe_load((ROOT / pipeline).read_text(encoding="utf-8"))["stages"]
        for name, stage in declared.items():
            body = stage.get("do", stage)
            wdir = (ROOT / pipeline).parent / body.get("wdir", ".")
            deps = [os.path.relpath(os.path.normpath(wdir / dep), ROOT) for dep in body.get("deps", [])]
            found[name if pipeline == "dvc.yaml" else f"{pipeline}:{name}"] = {**body, "deps": deps}
    return found


def runs_code(path) -> bool:
    """An __init__ holding only a docstring runs nothing worth a dependency."""
    if path.name != "__init__.py":
        return True
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return not (len(body) <= 1 and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body))


def closure_of(stage: dict) -> set[str]:
    command = COMMAND.search(stage["cmd"]).group(1)
    # `python -m pipeline X` runs the command table, then X's module.
    return import_closure(COMMANDS[command][0], MODULES) | {"pipeline.__main__"}


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage["deps"] if d.startswith("pipeline")]


def param_keys(stage: dict) -> list[str]:
    return [next(iter(p)) if isinstance(p, dict) else p for p in stage.get("params", [])]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_module_a_stage_imports_is_a_declared_dep(name):
    stage = stages()[name]
    missing = sorted(MODULES[m].relative_to(ROOT).as_posix() for m in closure_of(stage)
                     if runs_code(MODULES[m]) and not covered(MODULES[m], code_deps(stage)))
    assert not missing, f"dvc.yaml stage {name} imports but does not depend on: {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_declared_code_dep_is_reached(name):
    stage = stages()[name]
    reached = [MODULES[m] for m in closure_of(stage)]
    idle = [d for d in code_deps(stage) if not any(covered(path, [d]) for path in reached)]
    assert not idle, f"dvc.yaml stage {name} depends on code its command never imports: {', '.join(idle)}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_params_key_a_stage_reads_is_declared(name):
    stage = stages()[name]
    declared = param_keys(stage)
    skipped = COMBINE_ONLY.get(name, ())
    missing = set()
    for module in closure_of(stage):
        reads = param_reads(MODULES[module])
        for key, passed in [*((k, False) for k in reads.exact), *((k, True) for k in reads.passed)]:
            if not key.startswith(skipped) and not key_covered(key, declared, passed):
                missing.add(f"{key} ({module})")
    assert not missing, f"dvc.yaml stage {name} reads params it does not declare: {', '.join(sorted(missing))}"


# The checks above are only as good as the closure and the reader: both against known cases.
def test_closure_follows_lazy_imports_and_the_estimator_scan():
    closure = import_closure("pipeline.stages.importance", MODULES)
    assert "pipeline.importance.estimators.noise_mixture" in closure  # registry scans the package
    assert "pipeline.model.encoder" in closure                        # imported inside a function
    assert "pipeline.model.evaluation" not in closure


def test_param_reader_follows_section_aliases(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "def f(params):\n"
        "    cfg = params['train']\n"
        "    n = cfg['epochs'] + params['evaluate'].get('bins', 3)\n"
        "    check(params['gate'])\n"
        "    return params['seed'], n\n")
    reads = param_reads(source)
    assert reads.exact == {"train.epochs", "evaluate.bins"}
    assert reads.passed == {"gate", "seed"}
    assert key_covered("evaluate.bins", ["evaluate"], False)
    assert not key_covered("evaluate", ["evaluate.bins"], False)
    assert key_covered("gate", ["gate.rules"], True)


def test_the_weekly_pipeline_is_read_with_its_stage_working_in_the_workspace():
    weekly = stages()["weekly/dvc.yaml:benchmark"]
    assert COMMAND.search(weekly["cmd"]).group(1) == "benchmark"
    assert "weekly/context.yaml" in weekly["deps"] and "pipeline/importance" in weekly["deps"]
