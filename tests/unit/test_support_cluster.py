"""The shared test-support builder: the files it writes are the configurations asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from dengine_trio.config import ConfigError, load_config
from dengine_trio.policy import ReadPolicy
from dengine_trio.raft.config import Durability
from tests.support.cluster import (
    LOWEST_TEST_PORT,
    _ephemeral_ports,
    free_ports,
    wait_until,
    wait_until_async,
    write_cluster,
)


def test_every_node_file_loads_with_its_settings_and_the_same_cluster_id(tmp_path: Path) -> None:
    ports = free_ports(3)
    configs = write_cluster(
        tmp_path,
        ports,
        {
            "raft.persistence.strategy": Durability.MEM_FIRST,
            "raft.read_consistency.default_policy": ReadPolicy.LEASE,
            # Valid only together with the next key: applied before validating.
            "raft.timing.election_timeout_min_ms": 2500,
            "raft.timing.election_timeout_max_ms": 3000,
        },
        node_settings=lambda i: {"limits.max_pending_requests": 10 * i},
    )
    assert [c.path for c in configs] == [tmp_path / f"n{i}.toml" for i in (1, 2, 3)]
    for i, config in enumerate(configs, start=1):
        assert load_config(config.path) == config
        assert config.listen_host_port() == ("127.0.0.1", ports[i - 1])
        assert config.db_root_path() == tmp_path / "db" / str(i)
        assert config.raft.persistence.strategy is Durability.MEM_FIRST
        assert config.raft.read_consistency.default_policy is ReadPolicy.LEASE
        assert config.raft.timing.election_timeout_min_ms == 2500
        assert config.limits.max_pending_requests == 10 * i
    assert len({c.cluster_id() for c in configs}) == 1


def test_nodes_behind_a_proxy_list_the_proxy_addresses(tmp_path: Path) -> None:
    fronts = ["127.0.0.1:1001", "127.0.0.1:1002"]
    with pytest.raises(ConfigError, match="behind_proxy"):
        write_cluster(tmp_path, [2001, 2002], member_addresses=fronts)
    configs = write_cluster(
        tmp_path, [2001, 2002], {"cluster.behind_proxy": True}, member_addresses=fronts
    )
    assert [p.address for p in configs[1].cluster.initial_cluster] == fronts
    assert configs[1].listen_host_port() == ("127.0.0.1", 2002)


@pytest.mark.parametrize("key", ["raft.timing.election_ms", "nosuch.key", "limits", "cluster.x.y"])
def test_a_setting_that_names_no_key_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(KeyError, match="names no key"):
        write_cluster(tmp_path, [3001], {key: 1})


def test_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    """Outside it, no outgoing connection can take one as its source port before the bind."""
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert not set(ports) & set(_ephemeral_ports()), ports
    assert min(ports) >= LOWEST_TEST_PORT


def test_wait_until_returns_the_first_value_and_names_what_timed_out() -> None:
    values = iter([None, False, 0, 7])
    assert wait_until(lambda: next(values), 5, "a value", interval_s=0) == 0
    with pytest.raises(AssertionError, match=r"timed out after 0\.01 s waiting for nothing"):
        wait_until(lambda: None, 0.01, "nothing", interval_s=0.001)


async def test_wait_until_async_has_the_same_contract() -> None:
    values = iter([None, False, "", 7])
    assert await wait_until_async(lambda: next(values), 5, "a value", interval_s=0) == ""
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for never"):
        await wait_until_async(lambda: False, 0.05, "never")
