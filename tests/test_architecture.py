"""The package's layering: no import runs back up from a lower layer to a higher one, and reports read
only result files (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpbench"

# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYERS = {
    "errors": 0, "results": 0, "provenance": 0, "registry": 0,
    "config": 1,
    "data": 2, "models": 2, "methods": 2, "privacy": 2, "evaluation": 2, "suites": 2,
    "engine": 3,
    "runner": 4, "audit": 4,
    "commands": 5,
    "cli": 6, "__main__": 6, "__init__": 0,
}
REPORTING_MAY_IMPORT = {"results", "errors", "reporting"}


def _dpbench_imports(path: Path) -> set[str]:
    """The dpbench sub-packages a module imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dpbench" and len(parts) > 1:
                out.add(parts[1])
    return out


def _layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_no_import_runs_back_up():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        own = _layer_of(path)
        for imported in _dpbench_imports(path):
            if own == "reporting":
                if imported not in REPORTING_MAY_IMPORT:
                    violations.append(f"{path.relative_to(PACKAGE)} imports dpbench.{imported} (reports read result files only)")
            elif imported == "reporting":
                if LAYERS[own] < LAYERS["runner"]:
                    violations.append(f"{path.relative_to(PACKAGE)} imports dpbench.reporting")
            elif LAYERS.get(imported, 99) > LAYERS[own]:
                violations.append(f"{path.relative_to(PACKAGE)} ({own}) imports dpbench.{imported} (a higher layer)")
    assert not violations, "\n".join(sorted(violations))


def test_the_check_sees_a_violation(tmp_path):
    """The import scan is not vacuous: a function-level upward import is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dpbench.runner.single_run import run_one\n")
    assert _dpbench_imports(module) == {"runner"}
