"""The layer rules of the README's layout: imports point one way, and there are no import circles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> the project packages (and third-party front ends) it must never import
FORBIDDEN = {
    "models": {"worldsim", "envs", "controllers", "play", "pygame", "gymnasium"},
    "worldsim": {"envs", "controllers", "play", "pygame", "gymnasium"},
    "controllers": {"envs", "play", "pygame"},
    "envs": {"controllers", "play"},
}


def imports_of(path: Path) -> set[str]:
    """Every module name a file imports, at any depth (type-checking imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_layer_imports_a_layer_above_it() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imports_of(path):
                if name.split(".")[0] in forbidden:
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not problems, problems


def test_no_import_circles_between_modules() -> None:
    paths = [p for package in FORBIDDEN for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    graph = {
        name: {i for i in imports_of(path) if i in modules and i != name and not i.endswith("__init__")}
        for name, path in modules.items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for step in graph[start]:
            if step == goal or (step not in seen and (seen.add(step) or reaches(step, goal, seen))):
                return True
        return False

    # a package's __init__ may name its own modules (lazy exports); a circle between modules may not
    circles = sorted(
        f"{a} <-> {b}" for a in graph for b in graph[a] if "." in a and "." in b and reaches(b, a, set())
    )
    assert not circles, circles
