"""The package is layered: each floor imports only from the floors below it (docs/architecture.md draws them), no
project import hides inside a function without a stated reason, and every module imports on its own."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import openjepa

PACKAGE = Path(openjepa.__file__).parent

# Each unit of the package and its floor: a module may import from its own unit and from units on lower floors.
# "core" is the modules directly in openjepa/ (config, errors, checkpoint, run_folder, pretrained, masks, ijepa,
# schedules, step...); "face" is openjepa/__init__.py, the names a user imports from the top.
FLOORS = {
    "models": 0,
    "core": 1,
    "data": 2,
    "eval": 3,
    "viz": 3,  # pictures of datasets, models and run folders: beside eval, below the trainer that draws curves.png
    "train": 4,
    "finetune": 5,  # runs in the trainer's shell (runtime, signals, progress, run log): above train, beside interop
    "interop": 5,
    "face": 6,
    "cli": 6,
    "main": 7,  # openjepa/__main__.py
}
LAZY_MARKER = "# lazy:"  # an import inside a function must say why on its line, e.g. "# lazy: optional dependency"


def unit_of(module: str, root: Path) -> str:
    parts = module.split(".")
    if module == "openjepa":
        return "face"
    if module == "openjepa.__main__":
        return "main"
    if len(parts) >= 2 and (root / parts[1]).is_dir():
        return parts[1]
    return "core"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    name = ".".join(rel.parts)
    return name.removesuffix(".__init__")


def imported_modules(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The openjepa modules an import statement names: relative imports resolved, and ``from pkg import name``
    counted as ``pkg.name`` when that is a module of the tree ``known``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "openjepa"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    if base.split(".")[0] != "openjepa":
        return []
    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    return submodules if len(submodules) == len(node.names) else [base, *submodules]


def modules_of(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def layering_problems(root: Path) -> list[str]:
    """Upward imports, and project imports inside functions without a ``# lazy:`` reason, in the tree ``root``."""
    problems = []
    known = modules_of(root)
    for module, path in known.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            for target in imported_modules(node, module, path.name == "__init__.py", set(known)):
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                here, there = unit_of(module, root), unit_of(target, root)
                if here != there and FLOORS[there] >= FLOORS[here]:
                    problems.append(f"{where}: {here} (floor {FLOORS[here]}) imports {target} ({there}, floor "
                                    f"{FLOORS[there]})")
                if id(node) in nested and LAZY_MARKER not in lines[node.lineno - 1]:
                    problems.append(f"{where}: imports {target} inside a function without a '{LAZY_MARKER}' reason")
    return problems


def module_cycles(root: Path) -> list[list[str]]:
    """Cycles in the module-level import graph (Tarjan's strongly connected components)."""
    names = modules_of(root)
    graph = {}
    for module, path in names.items():
        tree = ast.parse(path.read_text())
        targets = {t for node in tree.body  # module level only
                   for t in imported_modules(node, module, path.name == "__init__.py", set(names))}
        graph[module] = sorted(t for t in targets if t in names and t != module)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_every_import_points_down_a_floor_and_none_hides_in_a_function():
    assert layering_problems(PACKAGE) == []


def test_no_import_cycle_between_modules():
    assert module_cycles(PACKAGE) == []


def test_errors_import_nothing_from_the_project():
    tree = ast.parse((PACKAGE / "errors.py").read_text())
    assert [t for n in ast.walk(tree) for t in imported_modules(n, "openjepa.errors", False, set())] == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A small package with an upward import, an unexplained inner import, an explained one and a cycle."""
    root = tmp_path / "openjepa"
    for folder in ("data", "train"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "errors.py").write_text("")
    (root / "config.py").write_text("from .data import loader\n")  # core -> data: upward
    (root / "data" / "loader.py").write_text(textwrap.dedent("""\
        from ..errors import UserError
        def build():
            from ..train import trainer
            from ..errors import DataError  # lazy: an explained one is allowed
        """))
    (root / "a.py").write_text("from . import b\n")
    (root / "b.py").write_text("from .a import x\n")
    problems = layering_problems(root)
    assert any("config.py:1: core (floor 1) imports openjepa.data" in p for p in problems), problems
    assert any("loader.py:3: data (floor 2) imports openjepa.train" in p for p in problems), problems
    assert any("loader.py:3: imports openjepa.train inside a function" in p for p in problems), problems
    assert not any("loader.py:4" in p for p in problems), problems
    assert len(problems) == 3
    assert module_cycles(root) == [["openjepa.a", "openjepa.b"]]


# -- every module imports on its own -----------------------------------------------------------------------------------
ISOLATED_IMPORTS = """
import importlib, sys, warnings
failures = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "openjepa" or m.startswith("openjepa.")]:
        del sys.modules[loaded]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated aliases import with a warning
            importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report every module that fails, not only the first
        failures.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def all_modules() -> list[str]:
    return sorted(module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def test_every_module_imports_in_a_fresh_interpreter_state(tmp_path):
    """``python -c "import openjepa.<module>"`` for each module: openjepa is cleared from sys.modules before each
    import, so no module works only because another one was imported before it (one process keeps it fast, and
    so does compiling each file once: bytecode goes to a private cache even where the environment turns it off)."""
    modules = all_modules()
    assert len(modules) > 60 and "openjepa.train.trainer" in modules
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "bytecode")
    proc = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, *modules], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", ["openjepa.errors", "openjepa.train.trainer", "openjepa.cli.main"])
def test_a_module_imports_alone_in_a_new_process(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
