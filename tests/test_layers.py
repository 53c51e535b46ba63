"""The package layers: every import in utils/ and nets/ (module level or inside a function) points down.

    scripts -> utils.compare -> utils.train -> utils.eval | utils.infer -> utils.data -> utils.core
    nets -> utils.core

utils.eval and utils.infer are peers: neither imports the other. Nothing under utils/ or nets/ imports a top-level
script (train.py, yolo.py, ...). The module graph has no cycle.
"""
import ast
from pathlib import Path

import pytest
from conftest import REPO

ALLOWED = {  # layer -> the layers its modules may import (its own included)
    "utils.core": {"utils.core"},
    "nets": {"utils.core", "nets"},
    "utils.data": {"utils.core", "utils.data"},
    "utils.infer": {"utils.core", "utils.data", "nets", "utils.infer"},
    "utils.eval": {"utils.core", "utils.data", "nets", "utils.eval"},
    "utils.train": {"utils.core", "utils.data", "nets", "utils.infer", "utils.eval", "utils.train"},
    "utils.compare": {"utils.core", "utils.data", "nets", "utils.infer", "utils.eval", "utils.train", "utils.compare"},
}
SCRIPTS = {path.stem for path in REPO.glob("*.py")}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> str | None:
    """The layer a module belongs to, a top-level script's name, or None (the standard library, a package)."""
    for layer in ALLOWED:
        if module == layer or module.startswith(layer + "."):
            return layer
    root = module.split(".")[0]
    if root in SCRIPTS:
        return root
    return None


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from utils.compare import plots` imports the submodule utils.compare.plots
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def library_modules() -> list[Path]:
    """Every module of utils/ and nets/ but the empty utils/__init__.py, which belongs to no layer."""
    return sorted([*REPO.glob("utils/*/**/*.py"), *REPO.glob("nets/**/*.py")])


def resolve(module: str, known: set[str]) -> str:
    """``utils.compare.plots`` stays; ``utils.core.config.UserError`` becomes its module ``utils.core.config``."""
    while module not in known and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def test_every_import_points_down():
    known = {module_name(p) for p in library_modules()}
    wrong = []
    for path in library_modules():
        source = layer_of(module_name(path))
        assert source in ALLOWED, f"{path}: not in any layer; add its package to ALLOWED"
        for line, module in project_imports(path):
            target = layer_of(resolve(module, known))
            if target is not None and target not in ALLOWED[source]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({source}) imports {module} ({target})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_no_import_cycle():
    known = {module_name(p) for p in library_modules()}
    graph = {module_name(p): {resolve(m, known) for _, m in project_imports(p)} & known for p in library_modules()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(target):], target]))
            if target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checks_can_fail(tmp_path):
    """The rules catch an upward import and a cycle (a planted pair of modules)."""
    assert layer_of("utils.data.voc") == "utils.data" and layer_of("train") == "train"
    assert "utils.train" not in ALLOWED["utils.data"] and "train" not in ALLOWED["utils.compare"]
    planted = tmp_path / "m.py"
    planted.write_text("def f():\n    from utils.train.trainer import fit\n")
    assert project_imports(planted) == [(2, "utils.train.trainer.fit")]
    assert resolve("utils.train.trainer.fit", {"utils.train.trainer"}) == "utils.train.trainer"
