"""The node command line outside a running cluster: --version."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from tests.e2e.cluster import run_cli


def test_version_prints_the_installed_package_version_and_exits_0(tmp_path: Path) -> None:
    result = run_cli(["--version"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"dengine-trio {version('dengine_trio')}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version("dengine_trio"))
