"""The import contract: the package's layers import only downwards, torch-free layers never import torch, no
import circle, at most 8 top-level modules. Read from the source (every import, also those inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "nin_bench"
# Layer of each top-level part, lowest first; a part may import only parts of a lower layer (and itself).
LAYER = {
    "errors": 0, "version": 0,
    "store": 1,  # results folder, records, the record schema
    "suite": 2,  # config schema, suite files, presets, variants
    "report": 3, "runtime": 2,  # tables and figures from stored records | device, precision, compile, train step
    "models": 3, "data": 3,
    "measure": 4, "train": 4,  # counts, timing, ceilings | the training loop, holdout, schedule, checkpoints
    "run": 5,  # runner, stages, executors, GPU session, inspect
    "cli": 6,
    "__main__": 7, "__init__": 7,
}
TORCH_FREE = {"errors", "version", "suite", "store", "report"}
TORCH = ("torch", "torchvision", "fvcore")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("nin_bench", *parts)).removesuffix(".__init__")
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """Every module (of this package or outside it) that `name` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()
GRAPH = {m: sorted({i for i in _imports(m, p, MODULES) if i in MODULES and i != m}) for m, p in MODULES.items()}


def test_every_part_has_a_layer() -> None:
    assert sorted({_part(m) for m in MODULES} - set(LAYER)) == []


def test_at_most_eight_top_level_modules() -> None:
    top = [p for p in PACKAGE.iterdir() if p.suffix == ".py"]
    assert len(top) <= 8, sorted(p.name for p in top)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downwards_only(module: str) -> None:
    """A module imports its own part or a part of a lower layer: never a higher one, never a sibling."""
    mine = _part(module)
    bad = [d for d in GRAPH[module] if _part(d) != mine and LAYER[_part(d)] >= LAYER[mine]]
    assert bad == [], f"{module} (layer {LAYER[mine]}) imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _part(m) in TORCH_FREE))
def test_torch_free_layers_never_import_torch(module: str) -> None:
    heavy = [i for i in _imports(module, MODULES[module], MODULES) if i.split(".")[0] in TORCH]
    assert heavy == [], f"{module} imports {heavy}"


def test_no_import_circle() -> None:
    """Depth-first search for a back edge in the module graph (lazy imports included)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in GRAPH[m]:
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_the_contract_catches_a_violation(tmp_path: Path) -> None:
    """The checks above can fail: an upward and a torch import, written into a copy of a module, are found."""
    fake = tmp_path / "nin_bench" / "store" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import torch\nfrom nin_bench.run.runner import run_suite\n")
    found = _imports("nin_bench.store.bad", fake, {**MODULES, "nin_bench.store.bad": fake})
    assert "torch" in found and "nin_bench.run.runner" in found
    assert LAYER[_part("nin_bench.run.runner")] > LAYER[_part("nin_bench.store.bad")]
