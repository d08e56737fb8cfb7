"""Arrows point down only, for the whole package (``/work/shared/design.md``, "Layers").

``test_raft_is_pure.py`` keeps the core free of I/O; this file keeps every other layer in its
room. Each ``import`` of a ``dengine_trio`` module, anywhere in a file (inside functions and
``if TYPE_CHECKING:`` blocks too: a type-only import is still a dependency that a refactoring has
to respect), is an arrow from the importing layer to the imported one. The layers, highest first:

    entry points   dengine_trio (the package facade), __main__, cli, ctl, devcluster
    api            dengine_trio/api: the HTTP apps
    engine         engine.py: EmbeddedEngine and Client
    runtime        dengine_trio/runtime: the trio node
    config         config.py: NodeConfig and the TOML loader; it turns the file into the
                   settings of the layers below (the core's RaftConfig), so it sits above them
    raft, storage, wire   the sans-IO core, the write-ahead log, the codec (one rank)
    base           errors, policy, statemachine, log, metrics: what every layer may share

A module may import its own layer and any lower one, with these exceptions:

- the ranks of one level do not import each other, except that ``storage`` and ``wire`` may
  use ``raft.messages`` and ``raft.membership`` (the core owns the Entry, message and
  membership types they store and encode);
- ``api`` imports neither ``runtime``, ``raft``, ``storage`` nor ``wire``: it talks to the engine;
- ``engine`` does not import ``raft`` (nor ``storage`` or ``wire``): it reads the runtime's status.

Today's violations are listed in ``KNOWN_VIOLATIONS``. ``test_no_new_layering_violation`` fails
when an import outside that list breaks a rule; ``test_known_violation_still_present`` is an
``xfail(strict=True)`` per listed violation, so it fails (XPASS) as soon as one is fixed and the
list has to shrink with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dengine_trio

PACKAGE = Path(dengine_trio.__file__).parent

RANK = {
    "entry": 7,
    "api": 6,
    "engine": 5,
    "runtime": 4,
    "config": 3,
    "raft": 2,
    "storage": 2,
    "wire": 2,
    "base": 0,
}

# Top-level modules and subpackages of dengine_trio, by layer. A new top-level module must be
# placed here (``test_every_module_has_a_layer``), which is the moment to decide where it sits.
LAYER_OF = {
    "__init__": "entry",
    "__main__": "entry",
    "cli": "entry",
    "ctl": "entry",  # the client tools (status, kv): HTTP clients of running nodes
    "devcluster": "entry",
    "api": "api",
    "engine": "engine",
    "runtime": "runtime",
    "raft": "raft",
    "storage": "storage",
    "wire": "wire",
    "config": "config",
    "errors": "base",
    "policy": "base",
    "statemachine": "base",
    "kv_commands": "base",
    "kv_index": "base",
    "client_types": "base",
    "kvbridge": "engine",
    "log": "base",
    # The garbage collector's settings for a serving process: imports nothing of the package.
    "gc_tuning": "base",
    # The sink protocol the runtime and engine report to, and its Prometheus implementation:
    # it imports nothing of the package, so any layer may be handed one.
    "metrics": "base",
}

# Sideways arrows between layers of one rank that are allowed: (from layer, imported module).
ALLOWED_SIDEWAYS = {
    ("storage", "dengine_trio.raft.messages"),
    ("wire", "dengine_trio.raft.messages"),
    # Issue 14: a membership is a core type storage keeps (snapshot headers) and the wire
    # carries (CONFIG entries, InstallSnapshot); both check that what they hold decodes.
    ("storage", "dengine_trio.raft.membership"),
    ("wire", "dengine_trio.raft.membership"),
}

# Layers a given layer must not import even though they rank lower (no skipping past the layer
# in between).
FORBIDDEN_BELOW = {
    "api": {"runtime", "raft", "storage", "wire"},
    "engine": {"raft", "storage", "wire"},
}

# Violations present today, as "importing file -> imported module". Each one is an xfail(strict)
# below: fix it and remove it from here in the same change.
KNOWN_VIOLATIONS: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").exists() or (
        PACKAGE.parent / rel / "__init__.py"
    ).exists()


def _imports(path: Path) -> set[str]:
    """Absolute names of the dengine_trio modules ``path`` imports (``from pkg import sub``
    counts as importing ``pkg.sub`` when ``sub`` is a module)."""
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dengine_trio")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "dengine_trio":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _is_module(sub) else base)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYER_OF[top]


def _violation(importer: str, imported: str) -> str | None:
    """Why the arrow importer -> imported breaks a rule, or None."""
    src, dst = _layer(importer), _layer(imported)
    if src == dst:
        return None
    if RANK[dst] > RANK[src]:
        return f"upward: {src} imports {dst}"
    if RANK[dst] == RANK[src] and (src, imported) not in ALLOWED_SIDEWAYS:
        return f"sideways: {src} imports {dst}"
    if dst in FORBIDDEN_BELOW.get(src, ()):
        return f"{src} must not import {dst}"
    return None


def _files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _all_violations() -> dict[str, str]:
    found = {}
    for path in _files():
        importer = _module_name(path)
        for imported in sorted(_imports(path)):
            why = _violation(importer, imported)
            if why is not None:
                found[f"{path.relative_to(PACKAGE).as_posix()} -> {imported}"] = why
    return found


def test_every_module_has_a_layer() -> None:
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _files()}
    assert tops - LAYER_OF.keys() == set(), "place the new module in LAYER_OF"


def test_the_checker_sees_imports() -> None:
    """The walk finds relative, absolute and ``from pkg import module`` imports (so an empty
    result below means no violation, not a blind checker)."""
    assert "dengine_trio.runtime.node" in _imports(PACKAGE / "engine.py")
    assert "dengine_trio.wire.codec" in _imports(PACKAGE / "runtime" / "transport.py")
    assert "dengine_trio.errors" in _imports(PACKAGE / "api" / "__init__.py")
    assert "dengine_trio.engine" in _imports(PACKAGE / "api" / "kv.py")  # under TYPE_CHECKING
    assert _violation("dengine_trio.storage.wal", "dengine_trio.runtime.node")
    assert _violation("dengine_trio.api.kv", "dengine_trio.storage")
    assert _violation("dengine_trio.wire.codec", "dengine_trio.storage")
    assert _violation("dengine_trio.config", "dengine_trio.engine")
    assert _violation("dengine_trio.raft.node", "dengine_trio.config")
    assert _violation("dengine_trio.storage.wal", "dengine_trio.config")
    assert _violation("dengine_trio.config", "dengine_trio.raft.config") is None
    assert _violation("dengine_trio.storage.wal", "dengine_trio.raft.messages") is None
    assert _violation("dengine_trio.cli", "dengine_trio.storage") is None


def test_no_new_layering_violation() -> None:
    new = {k: v for k, v in _all_violations().items() if k not in KNOWN_VIOLATIONS}
    assert new == {}, "imports that point the wrong way:\n" + "\n".join(
        f"  {k}  ({v})" for k, v in sorted(new.items())
    )


@pytest.mark.parametrize(
    "violation",
    [
        pytest.param(v, marks=pytest.mark.xfail(strict=True, reason="known violation"))
        for v in sorted(KNOWN_VIOLATIONS)
    ],
)
def test_known_violation_still_present(violation: str) -> None:
    """XFAIL while the violation exists; XPASS (a failure, strict) once it is fixed: then
    remove it from KNOWN_VIOLATIONS."""
    assert violation not in _all_violations()
