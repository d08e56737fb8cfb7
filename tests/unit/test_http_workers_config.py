"""``[http] workers``, ``--http-workers`` and ``DENGINE_HTTP_WORKERS`` (issue 18): bounds and
precedence, refused with one line like every other setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine_trio.cli import EXIT_CONFIG, HTTP_WORKERS_ENV, main
from dengine_trio.config import HTTP_WORKERS_MAX, ConfigError, load_config
from tests.unit.test_config import MISSION_TOML, write


def test_workers_default_to_one_and_load_from_the_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MISSION_TOML)).http.workers == 1
    cfg = load_config(write(tmp_path, MISSION_TOML + "\n[http]\nworkers = 3\n"))
    assert cfg.http.workers == 3


@pytest.mark.parametrize(
    ("value", "problem"),
    [(0, "must be positive, got 0"), (HTTP_WORKERS_MAX + 1, f"must be at most {HTTP_WORKERS_MAX}")],
)
def test_out_of_range_workers_are_one_line(tmp_path: Path, value: int, problem: str) -> None:
    path = write(tmp_path, MISSION_TOML + f"\n[http]\nworkers = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "http.workers" in message and problem in message and str(path) in message


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--http-workers", "0"], None, "--http-workers: '0'"),
        (["--http-workers", "65"], None, "--http-workers: '65'"),
        ([], "two", f"{HTTP_WORKERS_ENV}: 'two'"),
        ([], "0", f"{HTTP_WORKERS_ENV}: '0'"),
    ],
)
def test_flag_and_environment_are_checked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: str | None,
    fragment: str,
) -> None:
    path = write(tmp_path, MISSION_TOML)
    monkeypatch.delenv("CONFIG_PATH", raising=False)
    if env is None:
        monkeypatch.delenv(HTTP_WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(HTTP_WORKERS_ENV, env)
    assert main(["--config-path", str(path), *argv]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and fragment in err, err
