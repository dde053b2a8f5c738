"""The package's layout: no import circles between its modules, and modules of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "tokenfocus"
#: Modules that hold one concern at more than 300 lines, and why they stay whole.
LONG = {
    "config": "the typed dataclasses of every stage",
    "synth": "SynthMuse's prompts, corruptions and annotators",
}


def _name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Each module's imports of other tokenfocus modules, lazy (in-function) ones included."""
    modules = {_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokenfocus"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                graph[mod] |= {t for t in targets if t in modules and t != mod}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # a package's __init__ importing its own submodules is how a package re-exports
            if n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circles():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_modules_stay_readable():
    over = {
        _name(p): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 300 and _name(p).split(".")[-1] not in LONG
    }
    assert not over, f"modules over 300 lines (split them, or say in LONG why not): {over}"
    paths = [PKG / f"{m}.py" if (PKG / f"{m}.py").exists() else PKG / m / "__init__.py" for m in LONG]
    assert all(len(p.read_text().splitlines()) <= 400 for p in paths)


def test_the_long_test_files_named_to_run_first_exist():
    """conftest's LONG_FILES go first under xdist; a renamed file would silently go back in line."""
    from tests.conftest import LONG_FILES, ROOT

    assert [f for f in LONG_FILES if not (ROOT / "tests" / f).is_file()] == []
