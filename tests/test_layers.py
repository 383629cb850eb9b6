"""The package's layers import one way only, and nothing imports in a circle.

Layers, bottom to top (docs/architecture.md draws them):

0. core vocabulary: value types, framing, settings, errors, telemetry; no I/O
1. backends: ``leases``, ``channels``, ``storage``, ``jobs`` (base | memory | redis)
2. producers: ``emitters``
3. runtime: ``runtime/`` (container, startup, runner, keeper, registry, job workers)
4. web edge: ``web/`` (middleware, tracking, lease, responses, routes, dependencies)
5. entry points: ``streaming_mw`` itself, ``cli``, ``worker``, ``testing``

Every import counts, including those under ``TYPE_CHECKING`` and inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "streaming_mw"

LAYERS: dict[str, int] = {
    **dict.fromkeys(
        (
            "errors",
            "_types",
            "_failure",
            "events",
            "sse",
            "config",
            "telemetry",
            "_tasks",
            "_redis",
            "scope",
        ),
        0,
    ),
    **dict.fromkeys(("leases", "channels", "storage", "jobs"), 1),
    "emitters": 2,
    "runtime": 3,
    "web": 4,
    **dict.fromkeys(("", "cli", "worker", "serving", "testing"), 5),
}
ONLY_IN = {"fastapi": "web", "starlette": "web", "dependency_injector": "runtime"}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in module ``name``, resolved to a module."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    if top not in LAYERS:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS and the architecture page")
    return LAYERS[top]


def test_every_module_is_in_a_layer() -> None:
    for name in MODULES:
        layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_import(name: str) -> None:
    upward = [
        f"line {line}: {target} (layer {layer(target)})"
        for target, line in imports_of(name)
        if target in MODULES and layer(target) > layer(name)
    ]
    assert upward == [], f"{name} (layer {layer(name)}) imports upward"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_frameworks_stay_in_their_layer(name: str) -> None:
    top = name.split(".")[1] if "." in name else ""
    wrong = [
        f"line {line}: {target}"
        for target, line in imports_of(name)
        if (home := ONLY_IN.get(target.split(".")[0])) is not None and top != home
    ]
    assert wrong == []


def test_no_import_cycle() -> None:
    graph = {
        name: {target for target, _ in imports_of(name) if target in MODULES and target != name}
        for name in MODULES
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_the_cycle_check_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check above must be able to fail: feed it a two-module loop.
    fake = {"streaming_mw.a": [("streaming_mw.b", 1)], "streaming_mw.b": [("streaming_mw.a", 1)]}
    monkeypatch.setattr(f"{__name__}.MODULES", dict.fromkeys(fake, PACKAGE))
    monkeypatch.setattr(f"{__name__}.imports_of", fake.__getitem__)
    with pytest.raises(AssertionError, match="import cycle"):
        test_no_import_cycle()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by responsibility"
