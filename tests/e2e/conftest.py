"""Fixtures for the end-to-end suite: a three-node cluster of real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.cluster import Cluster, running_cluster

# Small enough that the limit is testable apart from the body limit (1 MiB by default).
MAX_VALUE_BYTES = 65536
LIMITS = {"limits.max_value_bytes": MAX_VALUE_BYTES}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three nodes with an elected leader, shared by the tests of one module."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), settings=LIMITS) as c:
        c.wait_for_leader()
        yield c
