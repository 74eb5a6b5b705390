"""The code stays lint-clean and type-checked: ruff and mypy, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ruff() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "sovereign", "tests", "bench"], cwd=ROOT,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# The architecture, lowest first: a module may import its own layer or a lower one, never a
# higher one (engine never imports research, ops or the CLI), and no modules import each
# other in a circle, however indirectly. A top-level module not listed here is layer 0.
LAYERS = {"market": 1, "state": 2, "broker": 2, "engine": 3, "research": 4, "ops": 5, "cli": 6}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    return LAYERS.get(module.split(".")[1], 0) if "." in module else 0


def _imports() -> dict[str, set[str]]:
    """Each sovereign module and the sovereign modules it imports, lazily too (ast)."""
    import ast

    modules = {_module_name(p): p for p in (ROOT / "sovereign").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[m] |= {n for n in names if n in modules and n != m and n.startswith("sovereign.")}
    return graph


def test_imports_run_one_way_and_never_in_a_circle() -> None:
    graph = _imports()
    upward = [f"{a.replace('.', '/')}.py imports {b} (layer {_layer(b)} above its {_layer(a)})"
              for a, deps in graph.items() for b in deps if _layer(b) > _layer(a)]  # fmt: skip
    assert not upward, "\n".join(sorted(upward))
    # A circle: a module that reaches itself; name the two ends of one edge of it.
    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    circles = sorted(f"{a} imports {b}, which imports {a} again through {b}"
                     for a, deps in graph.items() for b in deps if reaches(b, a))  # fmt: skip
    assert not circles, "\n".join(circles)
