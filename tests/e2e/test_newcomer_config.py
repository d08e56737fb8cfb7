"""Newcomer break pass: configurations and command lines the loader accepts and the node then
dies of, with a traceback, or with an error that does not say which port.

Each case is a real ``python -m dengine_trio`` process that exits by itself (bounded by
``run_cli``'s timeout). Each failed before the fix and passes now.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.cluster import free_ports, run_cli
from tests.e2e.test_config_errors import assert_mutation_refused, good_toml

# Integers TOML accepts and the loader checks only from below; the layers under it hold them in
# C integers (socket.listen's int backlog, msgpack's 64-bit integers on the wire).
OUT_OF_RANGE = {
    "listen-backlog-over-c-int": (
        lambda good: good.replace("listen_backlog = 4096", f"listen_backlog = {2**31}"),
        "http.listen_backlog",
    ),
    "node-id-over-64-bits": (
        lambda good: good.replace("node_id = 1", f"node_id = {2**64}").replace(
            "{ id = 1,", f"{{ id = {2**64},"
        ),
        "node_id",
    ),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_RANGE))
def test_an_out_of_range_integer_is_refused_at_load_time(tmp_path: Path, case: str) -> None:
    assert_mutation_refused(tmp_path, *OUT_OF_RANGE[case])


@pytest.mark.parametrize("flag", ["--port", "--health-port"])
def test_an_http_port_equal_to_the_nodes_own_raft_port_is_named(tmp_path: Path, flag: str) -> None:
    good = good_toml(tmp_path)
    (tmp_path / "n1.toml").write_text(good)
    raft_port = int(good.split('listen_address = "127.0.0.1:', 1)[1].split('"', 1)[0])
    other, spare = free_ports(2)
    args = {"--port": str(other), "--health-port": str(spare)}
    args[flag] = str(raft_port)
    result = run_cli(["--config-path", "n1", *[x for kv in args.items() for x in kv]], cwd=tmp_path)
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1, result.stderr
    assert str(raft_port) in errors[0], errors[0]
