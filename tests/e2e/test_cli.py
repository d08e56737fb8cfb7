"""The node command line: --version, and what a node says at start."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

from dengine_trio.api import kernel_backlog_cap
from tests.e2e.cluster import run_cli, running_cluster


def test_version_prints_the_installed_package_version_and_exits_0(tmp_path: Path) -> None:
    result = run_cli(["--version"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dengine-trio {version('dengine_trio')}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version("dengine_trio"))


def test_a_listen_backlog_over_the_kernel_cap_is_one_warning_and_the_node_runs(
    tmp_path: Path,
) -> None:
    cap = kernel_backlog_cap()
    if cap is None:
        pytest.skip("no /proc/sys/net/core/somaxconn here")
    with running_cluster(tmp_path, settings={"http.listen_backlog": cap + 1}) as c:
        leader = c.wait_for_leader()
        warnings = [line for line in leader.log_text().splitlines() if "somaxconn" in line]
        assert len(warnings) == 1, leader.log_text()
        assert f"listen_backlog = {cap + 1}" in warnings[0], warnings
        assert "WARNING" in warnings[0], warnings
