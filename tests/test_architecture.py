"""The layout holds: no import cycles between smcli's modules, the CLI stays a thin skin,
ARCHITECTURE.md names the modules that exist, and the README's Python example runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "smcli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the smcli modules it imports, at module level or inside functions
    (a lazy import is still a dependency). ``from smcli.x import y`` counts as smcli.x.y when
    that is a module, else smcli.x; a package's own __init__ is not counted for its children."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert "smcli.inference.matcher" in graph and "smcli.models.factory" in graph["smcli.inference.matcher"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_library_modules_never_import_the_cli():
    graph = import_graph()
    entry_points = {"smcli.__main__"}  # python -m smcli runs the CLI
    offenders = [m for m, deps in graph.items() if not m.startswith("smcli.cli") and m not in entry_points
                 and any(d.startswith("smcli.cli") for d in deps)]
    assert offenders == []


def test_architecture_map_matches_the_files():
    """Every module path ARCHITECTURE.md names exists, and every package is on the map."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`(smcli/[\w/]+(?:\.py)?/?)`", text))
    assert named, "ARCHITECTURE.md names no modules"
    missing = [n for n in named if not (REPO / n).exists()]
    assert missing == []
    packages = {p.parent.relative_to(REPO).as_posix() + "/" for p in PACKAGE.rglob("__init__.py")}
    unmapped = [p for p in packages if p != "smcli/" and p not in named]
    assert unmapped == []


def test_readme_python_example_runs(example_pipeline, tmp_path, monkeypatch):
    """The README's Python example, run as written (in process) in a folder holding the
    demo's inputs under the names it uses."""
    import shutil

    text = (REPO / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "README.md has no python example"
    for name in ("images", "captions.txt", "splits.csv"):
        src = REPO / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block[1], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    scores, ranked, why = namespace["scores"], namespace["ranked"], namespace["why"]
    assert scores.shape == (1, 2) and scores[0, 0] > scores[0, 1]  # the dog caption wins for the dog photo
    assert ranked.num_rows == 3 and ranked.column("rank").to_pylist() == [1, 2, 3]
    assert why.region_maps.shape == (why.steps, 7, 7)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert namespace["mine"].score("images/509778093_21236bb64d.jpg", "a dog").shape == (1, 1)
