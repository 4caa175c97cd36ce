"""What a dvc.yaml stage's command runs, read statically: the pipeline/ modules its command module can
import (with `ast`, lazy imports inside functions included) and the params keys that code reads.
tests/test_stage_deps.py checks both against the stage's declared deps and params."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
COMMAND = re.compile(r"python -m pipeline (\w+)")


def module_files() -> dict[str, Path]:
    """Dotted name -> file for every module and package of pipeline/."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(tree: ast.Module, name: str, modules: dict[str, Path], dynamic: bool = True) -> set[str]:
    package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
    reached = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            reached |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            reached.add(base)
            reached |= {f"{base}.{alias.name}" for alias in node.names}
        elif dynamic and isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in modules:
            # A module named in a string is imported dynamically; a package named so is scanned for its
            # modules (the estimator registry imports every module of its package). The bare "pipeline"
            # is `python -m pipeline`, the command table, which imports only the command's module.
            reached.add(node.value)
            if modules[node.value].name == "__init__.py" and node.value != name:
                reached |= {m for m in modules if m.startswith(node.value + ".")}
    return {r for r in reached if r in modules}


def imports_of(name: str, modules: dict[str, Path], dynamic: bool = True) -> set[str]:
    """The pipeline modules one module imports, anywhere in it (its parent packages not counted);
    with `dynamic`, also those it names in strings (loaded with importlib)."""
    return _imported(ast.parse(modules[name].read_text(encoding="utf-8")), name, modules, dynamic)


def import_closure(start: str, modules: dict[str, Path] | None = None) -> set[str]:
    """Every pipeline module `start` can import, itself and the packages on the way included."""
    modules = modules or module_files()
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]  # parent packages run first
        todo += sorted(imports_of(name, modules))
    return seen


@dataclass
class ParamReads:
    exact: set[str] = field(default_factory=set)    # params["a"]["b"]: key a.b, read by name
    passed: set[str] = field(default_factory=set)   # params["a"] handed on whole: some keys of a


def _key(node) -> str | None:
    """'a' for x["a"] or x.get("a", ...)."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.args[0].value
    return None


def _target(node):
    return node.value if isinstance(node, ast.Subscript) else node.func.value


def param_reads(path: Path) -> ParamReads:
    """The params keys a module reads from a variable called `params`, following `cfg = params["a"]`
    within a function. A section handed on whole (to a function, say) counts as `passed`."""
    reads = ParamReads()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for scope in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
        aliases = {"params": ""}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                section = _section(node.value, aliases)
                if section:
                    aliases[node.targets[0].id] = section
        parents = {child: parent for parent in ast.walk(scope) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(scope):
            if isinstance(node, ast.Name) and aliases.get(node.id) and isinstance(node.ctx, ast.Load):
                if _section(_outer(node, parents), aliases) is None:
                    reads.passed.add(aliases[node.id])  # the alias handed on whole
                continue
            section = _section(node, aliases)
            if section is None or _section(_outer(node, parents), aliases) is not None:
                continue  # not a params read, or part of a longer one
            parent = parents.get(node)
            if isinstance(parent, ast.Assign) and isinstance(parent.targets[0], ast.Name) \
                    and aliases.get(parent.targets[0].id) == section:
                continue  # an alias: its own uses are the reads
            (reads.exact if "." in section else reads.passed).add(section)
    return reads


def _outer(node, parents: dict):
    """The expression that indexes `node` further: node["k"] or node.get("k")."""
    parent = parents.get(node)
    if isinstance(parent, ast.Subscript) and parent.value is node:
        return parent
    if isinstance(parent, ast.Attribute) and parent.attr == "get" and isinstance(parents.get(parent), ast.Call):
        return parents[parent]
    return None


def _section(node, aliases: dict[str, str]) -> str | None:
    """The dotted key a params expression denotes: params["a"] -> a, cfg["b"] with cfg = params["a"] -> a.b."""
    if not isinstance(node, (ast.Subscript, ast.Call)):
        return None
    key = _key(node)
    if key is None:
        return None
    inner = _target(node)
    if isinstance(inner, ast.Name) and inner.id in aliases:
        prefix = aliases[inner.id]
        return f"{prefix}.{key}" if prefix else key
    outer = _section(inner, aliases) if isinstance(inner, (ast.Subscript, ast.Call)) else None
    return f"{outer}.{key}" if outer else None


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


def key_covered(key: str, declared: list[str], passed: bool) -> bool:
    """A key read by name is covered by itself or a declared section above it; a section handed on
    whole is covered by it, a section above it, or any key below it (what it is handed to reads those)."""
    if any(key == d or key.startswith(d + ".") for d in declared):
        return True
    return passed and any(d.startswith(key + ".") for d in declared)
