"""The Raft core stays sans-IO: no trio, sockets, clocks or randomness of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import dengine_trio.raft

FORBIDDEN = {"trio", "socket", "time", "random", "asyncio", "threading", "os", "select"}


def test_core_imports_nothing_that_does_io_or_reads_a_clock() -> None:
    package = Path(dengine_trio.raft.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
            # Nothing from the layers around the core either: arrows point down only.
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("dengine_trio")]
    assert offenders == []
