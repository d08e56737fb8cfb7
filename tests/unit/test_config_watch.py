"""``[watch] queue_bytes``: loaded and validated like the other [watch] keys, and carried to the
node's watch hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine_trio.cli import EXIT_CONFIG, main
from dengine_trio.config import WatchConfig, load_config
from dengine_trio.runtime.watch import DEFAULT_QUEUE_BYTES, WatchHub
from tests.unit.test_config import MISSION_TOML, write


def test_queue_bytes_defaults_to_the_hubs_default_and_loads_from_the_file(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, MISSION_TOML)).watch.queue_bytes == DEFAULT_QUEUE_BYTES
    assert WatchConfig().queue_bytes == WatchHub().queue_bytes == 4 * 1024 * 1024
    for value in (1, 65536, 2**40):
        text = MISSION_TOML + f"\n[watch]\nqueue_bytes = {value}\n"
        assert load_config(write(tmp_path, text)).watch.queue_bytes == value


def test_queue_bytes_reaches_the_watch_hub(tmp_path: Path) -> None:
    from dengine_trio.engine import EmbeddedEngine

    text = MISSION_TOML + "\n[watch]\nqueue_events = 7\nqueue_bytes = 65536\n"
    hub = EmbeddedEngine(load_config(write(tmp_path, text))).watch_hub
    assert hub is not None
    assert (hub.queue_events, hub.queue_bytes) == (7, 65536)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be positive, got 0"),
        ("-1", "must be positive, got -1"),
        ('"4MiB"', "expected an integer"),
        ("1.5", "expected an integer"),
    ],
)
def test_a_bad_queue_bytes_stops_the_node_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, problem: str
) -> None:
    path = write(tmp_path, MISSION_TOML + f"\n[watch]\nqueue_bytes = {value}\n")
    assert main(["--config-path", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"{path}: watch.queue_bytes: {problem}"), err
