"""The layering, read from every module's imports (an AST walk: nothing is imported to check it).

    localsystem/  the stack, supervisor, demo and the `sightscan` command  -> may import everything below
    services      connectors streams producers consumers trainer gateway   -> the core, never each other
    sightscan/    the shared core: configuration, events, topics, the db    -> nothing of ours above it
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = "sightscan"
SERVICES = ("connectors", "streams", "producers", "consumers", "trainer", "gateway")
LOCAL_SYSTEM = "localsystem"
OURS = (CORE, *SERVICES, LOCAL_SYSTEM, "bench", "tests")


def _imported_packages(path: Path) -> set[str]:
    """Our top-level packages that a module imports, at any depth (function-local imports count too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in OURS)
    return found


def _allowed(package: str) -> set[str]:
    if package == CORE:
        return {CORE}
    if package in SERVICES:
        return {CORE, package}
    return set(OURS) - {"bench", "tests"}  # the local system sits on top


@pytest.mark.parametrize("package", [CORE, *SERVICES, LOCAL_SYSTEM])
def test_a_layer_imports_only_the_layers_below_it(package: str) -> None:
    offences = []
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = _imported_packages(path) - _allowed(package)
        if extra:
            offences.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(extra))}")
    assert not offences, "layering broken:\n" + "\n".join(offences)


def test_the_check_sees_an_offence(tmp_path: Path) -> None:
    """The walk finds imports inside functions and `from x.y import z` forms, so the test above can fail."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from localsystem.stack import LocalStack\n    import gateway.rest\n")
    assert _imported_packages(module) == {"localsystem", "gateway"}
