"""A voter restarted with a wiped data directory says so, once (issue 11 item 5).

Since issue 14 such a node does not vote until the cluster has bound its new directory
(tests/integration/test_membership.py); the line still tells the operator, and
docs/durability.md ("A voter's data directory") says what happens.
Three engines in one process: real TCP on loopback, real files.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from dengine_trio import EmbeddedEngine

from .cluster import write_configs

WIPED_MARK = "started with an empty data directory"


def wiped_lines(caplog: pytest.LogCaptureFixture, node_id: int) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if WIPED_MARK in r.getMessage() and r.getMessage().startswith(f"node {node_id} ")
    ]


async def wait_leader(engines: dict[int, EmbeddedEngine]) -> int:
    with trio.fail_after(15):
        while True:
            leaders = [n for n, e in engines.items() if e.is_leader()]
            if len(leaders) == 1:
                await engines[leaders[0]].wait_ready(10)
                return leaders[0]
            await trio.sleep(0.02)


async def test_a_voter_restarted_with_a_wiped_directory_logs_one_loud_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configs = write_configs(tmp_path, strategy="DiskFirst")
    by_id = {c.cluster.node_id: c for c in configs}
    caplog.set_level(logging.INFO, logger="dengine_trio")
    async with AsyncExitStack() as outer:
        engines = {
            c.cluster.node_id: await outer.enter_async_context(EmbeddedEngine.start(c))
            for c in configs
        }
        leader = await wait_leader(engines)
        for i in range(10):
            await engines[leader].client().put(f"k{i}".encode(), b"v")
        # A fresh cluster's first start, all nodes together: no warning anywhere.
        assert not [r for r in caplog.records if WIPED_MARK in r.getMessage()]

        follower = next(n for n in engines if n != leader)
        # Restarted with its directory intact: no warning.
        await engines[follower].stop()
        async with EmbeddedEngine.start(by_id[follower]) as again:
            await again.client().get_linearizable(b"k9")
        assert not wiped_lines(caplog, follower)

        # Restarted with its directory wiped: one warning, however many messages arrive.
        shutil.rmtree(by_id[follower].db_root_path())
        async with EmbeddedEngine.start(by_id[follower]) as again:
            assert await again.client().get_linearizable(b"k9") == b"v"
            with trio.fail_after(10):
                while again.status()["commit_index"] < 11:
                    await trio.sleep(0.02)
            await trio.sleep(0.3)  # ten more heartbeats: still one line
        [record] = wiped_lines(caplog, follower)
        assert record.levelno >= logging.WARNING
        assert record.name.startswith("dengine_trio")
        message = record.getMessage()
        assert "docs/durability.md" in message
        assert "A voter's data directory" in message
