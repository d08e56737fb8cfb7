"""Node configuration: shipped files, the mission's file, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.cli import load_node_config
from dengine_trio.config import (
    PUT_COMMAND_OVERHEAD_BYTES,
    Batch,
    ClusterConfig,
    ConfigError,
    FlushPolicy,
    HttpConfig,
    Limits,
    NodeConfig,
    PeerConfig,
    PersistenceConfig,
    RaftSection,
    ReadConsistencyConfig,
    ReplicationConfig,
    SnapshotConfig,
    TimingConfig,
    load_config,
    render_toml,
    resolve_config_path,
)
from dengine_trio.policy import ReadPolicy
from dengine_trio.raft.config import Durability
from dengine_trio.runtime.node import MAX_COMMAND_BYTES

REPO = Path(__file__).resolve().parents[2]

# Copied verbatim from three-nodes-embedded.md, "Node Configuration".
MISSION_TOML = """\
[cluster]
node_id = 1  # 2, 3 for other nodes
listen_address = "0.0.0.0:9081"
initial_cluster = [
    { id = 1, address = "0.0.0.0:9081", role = 1, status = 2 },
    { id = 2, address = "0.0.0.0:9082", role = 1, status = 2 },
    { id = 3, address = "0.0.0.0:9083", role = 1, status = 2 },
]

[raft.read_consistency]
default_policy = "LeaseRead"
lease_duration_ms = 500

[raft.persistence]
strategy = "MemFirst"
flush_policy = { Batch = { threshold = 100, interval_ms = 20 } }
"""


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_mission_file_loads_with_its_values_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MISSION_TOML))
    assert cfg.cluster.node_id == 1
    assert cfg.listen_host_port() == ("0.0.0.0", 9081)
    assert [(p.id, p.address, p.role, p.status) for p in cfg.cluster.initial_cluster] == [
        (1, "0.0.0.0:9081", 1, 2),
        (2, "0.0.0.0:9082", 1, 2),
        (3, "0.0.0.0:9083", 1, 2),
    ]
    assert cfg.raft.read_consistency.default_policy is ReadPolicy.LEASE
    assert cfg.raft.read_consistency.lease_duration_ms == 500
    assert cfg.raft.persistence.strategy is Durability.MEM_FIRST
    assert cfg.raft.persistence.flush_policy.batch == Batch(threshold=100, interval_ms=20)
    # Defaults for everything the mission leaves out.
    assert cfg.cluster.db_root_dir == "./db/1"
    assert cfg.cluster.name == "dengine"
    assert cfg.raft.snapshot == SnapshotConfig(
        enable=True,
        max_log_entries_before_snapshot=10000,
        retained_log_entries=1000,
        snapshots_dir="",
        chunk_size=1048576,
    )
    assert cfg.snapshots_path() == (Path.cwd() / "db" / "1" / "snapshots")
    timing = cfg.raft.timing
    assert (timing.election_timeout_min_ms, timing.election_timeout_max_ms) == (600, 900)
    assert (timing.heartbeat_interval_ms, timing.request_timeout_ms) == (50, 5000)
    replication = cfg.raft.replication
    assert replication.max_entries_per_msg == 512
    assert replication.max_bytes_per_msg == 1048576
    assert replication.max_inflight_msgs == 64
    assert cfg.limits.max_key_bytes == 1024
    assert cfg.limits.max_value_bytes == 1048576
    assert cfg.limits.max_body_bytes == 1048576
    assert cfg.limits.max_pending_requests == 10000
    assert cfg.http.body_timeout_ms == 60000


def test_raft_config_carries_the_file_values(tmp_path: Path) -> None:
    extra = "\n[raft.timing]\nelection_timeout_min_ms = 700\nelection_timeout_max_ms = 1000\n"
    extra += "heartbeat_interval_ms = 70\n[raft.replication]\nmax_entries_per_msg = 64\n"
    extra += "max_bytes_per_msg = 4096\nmax_inflight_msgs = 8\n"
    node2 = MISSION_TOML.replace("node_id = 1 ", "node_id = 2 ").replace(
        'listen_address = "0.0.0.0:9081"', 'listen_address = "0.0.0.0:9082"'
    )
    cfg = load_config(write(tmp_path, node2 + extra))
    raft = cfg.raft_config()
    assert raft.node_id == 2
    assert raft.voters == (1, 2, 3)
    assert (raft.election_timeout_min_ms, raft.election_timeout_max_ms) == (700, 1000)
    assert raft.heartbeat_interval_ms == 70
    assert raft.lease_duration_ms == 500
    assert (raft.max_entries_per_msg, raft.max_bytes_per_msg, raft.max_inflight_msgs) == (
        64,
        4096,
        8,
    )
    assert raft.durability is Durability.MEM_FIRST


@pytest.mark.parametrize(
    ("relative", "node_id", "members", "db_root_dir"),
    [(f"config/n{n}.toml", n, 3, f"./db/{n}") for n in (1, 2, 3)]
    + [(f"config/five/n{n}.toml", n, 5, f"./db/five/{n}") for n in (1, 2, 3, 4, 5)],
)
def test_shipped_files_load(relative: str, node_id: int, members: int, db_root_dir: str) -> None:
    cfg = load_config(REPO / relative)
    assert cfg.cluster.node_id == node_id
    assert cfg.listen_host_port() == ("0.0.0.0", 9080 + node_id)
    assert cfg.peer_addresses() == {i: ("0.0.0.0", 9080 + i) for i in range(1, members + 1)}
    assert cfg.cluster.db_root_dir == db_root_dir
    assert cfg.raft.read_consistency.default_policy is ReadPolicy.LEASE
    assert cfg.raft.read_consistency.lease_duration_ms == 500
    assert cfg.raft.persistence.strategy is Durability.MEM_FIRST
    assert cfg.raft.persistence.flush_policy.batch == Batch(threshold=100, interval_ms=20)
    assert cfg.raft_config().voters == tuple(range(1, members + 1))


def test_shipped_nodes_of_one_cluster_share_its_identity() -> None:
    three = {load_config(REPO / f"config/n{n}").cluster_id() for n in (1, 2, 3)}
    five = {load_config(REPO / f"config/five/n{n}").cluster_id() for n in range(1, 6)}
    assert len(three) == 1
    assert len(five) == 1
    assert three != five
    assert three.pop().startswith("dengine-")


def test_cluster_id_follows_membership_and_name_not_order(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, MISSION_TOML)).cluster_id()
    reordered = MISSION_TOML.replace(
        '    { id = 1, address = "0.0.0.0:9081", role = 1, status = 2 },\n', ""
    ).replace(
        "]\n\n[raft", '    { id = 1, address = "0.0.0.0:9081", role = 1, status = 2 },\n]\n\n[raft'
    )
    assert load_config(write(tmp_path, reordered, "r.toml")).cluster_id() == base
    moved = MISSION_TOML.replace('"0.0.0.0:9083"', '"0.0.0.0:9093"')
    assert load_config(write(tmp_path, moved, "m.toml")).cluster_id() != base
    named = MISSION_TOML.replace("[raft.read", 'name = "other"\n\n[raft.read', 1)
    other = load_config(write(tmp_path, named, "n.toml")).cluster_id()
    assert other.startswith("other-")
    assert other != base


def test_path_with_or_without_toml_suffix(tmp_path: Path) -> None:
    path = write(tmp_path, MISSION_TOML, "n1.toml")
    assert resolve_config_path(str(tmp_path / "n1")) == path
    assert resolve_config_path(str(path)) == path
    assert load_config(tmp_path / "n1").path == path
    assert load_config(str(path)).cluster.node_id == 1


def test_file_named_exactly_wins_over_toml_suffix(tmp_path: Path) -> None:
    exact = write(tmp_path, MISSION_TOML, "n1")
    write(tmp_path, "not toml at all [", "n1.toml")
    assert resolve_config_path(str(exact)) == exact


def test_db_root_dir_relative_to_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write(tmp_path, MISSION_TOML))
    assert cfg.db_root_path() == tmp_path / "db" / "1"
    absolute = MISSION_TOML.replace("[raft.read", f'db_root_dir = "{tmp_path}/data"\n\n[raft.read')
    cfg = load_config(write(tmp_path, absolute, "abs.toml"))
    assert cfg.db_root_path() == tmp_path / "data"


def test_snapshot_section_accepted(tmp_path: Path) -> None:
    section = (
        "\n[raft.snapshot]\nenable = false\nmax_log_entries_before_snapshot = 50\n"
        'retained_log_entries = 0\nsnapshots_dir = "snaps/1"\nchunk_size = 4096\n'
    )
    cfg = load_config(write(tmp_path, MISSION_TOML + section))
    assert cfg.raft.snapshot == SnapshotConfig(False, 50, 0, "snaps/1", 4096)


def test_snapshots_path_defaults_under_db_root_dir_and_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = sub("[raft.read", 'db_root_dir = "data/n1"\n\n[raft.read')
    assert load_config(write(tmp_path, text)).snapshots_path() == (
        tmp_path / "data" / "n1" / "snapshots"
    )
    text += '\n[raft.snapshot]\nsnapshots_dir = "elsewhere/s1"\n'
    assert load_config(write(tmp_path, text)).snapshots_path() == tmp_path / "elsewhere" / "s1"
    text = text.replace('"elsewhere/s1"', f'"{tmp_path / "abs"}"')
    assert load_config(write(tmp_path, text)).snapshots_path() == tmp_path / "abs"


def test_ipv6_addresses(tmp_path: Path) -> None:
    text = MISSION_TOML.replace("0.0.0.0:", "[::1]:")
    cfg = load_config(write(tmp_path, text))
    assert cfg.listen_host_port() == ("::1", 9081)
    assert cfg.peer_addresses()[3] == ("::1", 9083)


@pytest.mark.parametrize(
    "host",
    [
        "n2",
        "node-2.example.com",
        "NODE2.LAN",
        "2node.lan",  # RFC 1123 lets a label start with a digit
        "node2.example.",  # fully qualified
        "b\u00fccher.example",  # an IDN: the socket layer sends its xn-- form
        "xn--bcher-kva.example",
        "10.0.0.2",
        "[fe80::1]",
        "[fe80::1%eth0]",
        f"{'a' * 63}.lan",
    ],
)
def test_host_names_and_ip_literals_a_resolver_takes_load(tmp_path: Path, host: str) -> None:
    text = MISSION_TOML.replace('address = "0.0.0.0:9082"', f'address = "{host}:9082"')
    cfg = load_config(write(tmp_path, text))
    assert cfg.peer_addresses()[2] == (host.strip("[]"), 9082)


def test_constructing_node_config_in_code_validates() -> None:
    cluster = ClusterConfig(
        node_id=4, listen_address="127.0.0.1:9084", initial_cluster=[PeerConfig(1, "a:1")]
    )
    with pytest.raises(ConfigError, match=r"^mem: cluster\.node_id: node 4 is not in"):
        NodeConfig(path=Path("mem"), cluster=cluster)


def sub(old: str, new: str, count: int = 1) -> str:
    assert old in MISSION_TOML, old
    return MISSION_TOML.replace(old, new, count)


PEER2 = '{ id = 2, address = "0.0.0.0:9082", role = 1, status = 2 }'

# (id, file text, dotted key, a piece of the problem)
# fmt: off
BAD_FILES = [
    # unknown keys, at every depth
    ("unknown-cluster-key", sub("node_id = 1 ", "nodeid = 7\nnode_id = 1 "), "cluster.nodeid",
     "unknown key"),
    ("unknown-section", MISSION_TOML + "\n[metrics]\nport = 9100\n", "metrics", "unknown key"),
    ("unknown-raft-section", MISSION_TOML + "\n[raft.compaction]\nevery = 3\n", "raft.compaction",
     "unknown key"),
    ("unknown-timing-key", MISSION_TOML + "\n[raft.timing]\nelection_timeout_ms = 500\n",
     "raft.timing.election_timeout_ms", "unknown key"),
    ("unknown-peer-key", sub(PEER2, PEER2.replace(" }", ", weight = 3 }")),
     "cluster.initial_cluster[1].weight", "unknown key"),
    ("unknown-batch-key", sub("interval_ms = 20", "interval_ms = 20, max = 3"),
     "raft.persistence.flush_policy.Batch.max", "unknown key"),
    # wrong types: the path of the offending key
    ("string-node-id", sub("node_id = 1 ", 'node_id = "1" '), "cluster.node_id",
     "expected an integer, got string '1'"),
    ("string-lease", sub("lease_duration_ms = 500", 'lease_duration_ms = "500"'),
     "raft.read_consistency.lease_duration_ms", "expected an integer"),
    ("float-peer-id", sub("{ id = 2,", "{ id = 2.5,"), "cluster.initial_cluster[1].id",
     "expected an integer, got float 2.5"),
    ("bool-threshold", sub("threshold = 100", "threshold = true"),
     "raft.persistence.flush_policy.Batch.threshold", "expected an integer, got boolean True"),
    ("int-address", sub('address = "0.0.0.0:9083"', "address = 9083"),
     "cluster.initial_cluster[2].address", "expected a string, got integer 9083"),
    ("int-snapshot-enable", MISSION_TOML + "\n[raft.snapshot]\nenable = 1\n",
     "raft.snapshot.enable", "expected a boolean"),
    ("string-snapshot-threshold",
     MISSION_TOML + '\n[raft.snapshot]\nmax_log_entries_before_snapshot = "100"\n',
     "raft.snapshot.max_log_entries_before_snapshot", "expected an integer"),
    ("snapshot-threshold-zero",
     MISSION_TOML + "\n[raft.snapshot]\nmax_log_entries_before_snapshot = 0\n",
     "raft.snapshot.max_log_entries_before_snapshot", "must be positive, got 0"),
    ("snapshot-retained-negative", MISSION_TOML + "\n[raft.snapshot]\nretained_log_entries = -1\n",
     "raft.snapshot.retained_log_entries", "must be 0 or more, got -1"),
    ("snapshot-chunk-zero", MISSION_TOML + "\n[raft.snapshot]\nchunk_size = 0\n",
     "raft.snapshot.chunk_size", "must be positive, got 0"),
    ("snapshot-dir-nul", MISSION_TOML + '\n[raft.snapshot]\nsnapshots_dir = "s\\u0000"\n',
     "raft.snapshot.snapshots_dir", "must not contain a NUL character"),
    ("snapshot-dir-int", MISSION_TOML + "\n[raft.snapshot]\nsnapshots_dir = 3\n",
     "raft.snapshot.snapshots_dir", "expected a string, got integer 3"),
    ("snapshot-unknown-key", MISSION_TOML + "\n[raft.snapshot]\ncleanup_retain_count = 2\n",
     "raft.snapshot.cleanup_retain_count", "unknown key"),
    ("cluster-list-not-array",
     MISSION_TOML.split("initial_cluster")[0] + 'initial_cluster = "1,2,3"\n'
     + "[raft" + MISSION_TOML.split("[raft", 1)[1],
     "cluster.initial_cluster", "expected an array of tables, got string '1,2,3'"),
    ("peer-not-table", sub(PEER2, '"node2"'), "cluster.initial_cluster[1]",
     "expected a table, got string"),
    ("section-not-table", "limits = 5\n" + MISSION_TOML, "limits", "expected a table, got integer"),
    ("missing-node-id", sub("node_id = 1  # 2, 3 for other nodes\n", ""), "cluster.node_id",
     "required key is missing"),
    ("missing-peer-address", sub(' address = "0.0.0.0:9082",', ""),
     "cluster.initial_cluster[1].address", "required key is missing"),
    ("missing-cluster", MISSION_TOML.split("[raft.read_consistency]")[1], "cluster",
     "required key is missing"),
    ("unknown-read-policy", sub('"LeaseRead"', '"Strong"'),
     "raft.read_consistency.default_policy",
     'must be one of "LinearizableRead", "LeaseRead", "EventualConsistency"'),
    ("unknown-strategy", sub('"MemFirst"', '"MemOnly"'), "raft.persistence.strategy",
     'must be one of "DiskFirst", "MemFirst"'),
    # membership
    ("node-not-member", sub("node_id = 1 ", "node_id = 4 "), "cluster.node_id",
     "node 4 is not in cluster.initial_cluster (ids: 1, 2, 3)"),
    ("duplicate-id", sub("{ id = 3,", "{ id = 2,"), "cluster.initial_cluster[2].id",
     "duplicate id 2"),
    ("duplicate-address", sub('"0.0.0.0:9083"', '"0.0.0.0:9082"'),
     "cluster.initial_cluster[2].address", "duplicate address '0.0.0.0:9082' (also node 2)"),
    ("duplicate-address-zero-padded-port", sub('"0.0.0.0:9083"', '"0.0.0.0:09082"'),
     "cluster.initial_cluster[2].address", "duplicate address '0.0.0.0:09082' (also node 2)"),
    ("address-no-port", sub('address = "0.0.0.0:9082"', 'address = "0.0.0.0"'),
     "cluster.initial_cluster[1].address", "is not host:port"),
    ("address-port-zero", sub('address = "0.0.0.0:9082"', 'address = "0.0.0.0:0"'),
     "cluster.initial_cluster[1].address", "outside 1-65535"),
    ("address-port-too-big", sub('address = "0.0.0.0:9082"', 'address = "0.0.0.0:65536"'),
     "cluster.initial_cluster[1].address", "outside 1-65535"),
    ("listen-no-host", sub('listen_address = "0.0.0.0:9081"', 'listen_address = ":9081"'),
     "cluster.listen_address", "is not host:port"),
    ("role-leader", sub("{ id = 2, address = \"0.0.0.0:9082\", role = 1",
                        "{ id = 2, address = \"0.0.0.0:9082\", role = 2"),
     "cluster.initial_cluster[1].role",
     "unsupported role 2 (leaders are elected, never configured); supported: 1"),
    ("role-unknown", sub("{ id = 1, address = \"0.0.0.0:9081\", role = 1",
                         "{ id = 1, address = \"0.0.0.0:9081\", role = 4"),
     "cluster.initial_cluster[0].role", "unsupported role 4 (no such role)"),
    ("status-syncing", sub("role = 1, status = 2 }", "role = 1, status = 1 }"),
     "cluster.initial_cluster[0].status",
     "unsupported status 1 with role = 1; supported: 2 (active voting member"),
    ("voter-joining", sub("role = 1, status = 2 }", "role = 1, status = 0 }"),
     "cluster.initial_cluster[0].status",
     "a joining node is role = 3, status = 0"),
    # learners: only this node's own entry (a joining node, or a read replica)
    ("learner-other-member", sub(PEER2, PEER2.replace("role = 1", "role = 3")),
     "cluster.initial_cluster[1].role",
     "role 3 (Learner) is for this node's own entry only (a joining node); list node 2 as "
     "role = 1, status = 2"),
    ("learner-syncing", sub("role = 1, status = 2 }", "role = 3, status = 1 }"),
     "cluster.initial_cluster[0].status",
     "unsupported status 1 with role = 3; supported: 0 (Joining: promoted to voter once caught "
     "up) or 2 (a read replica: stays a learner)"),
    ("learner-alone", MISSION_TOML.replace(
        '    { id = 1, address = "0.0.0.0:9081", role = 1, status = 2 },\n'
        '    { id = 2, address = "0.0.0.0:9082", role = 1, status = 2 },\n'
        '    { id = 3, address = "0.0.0.0:9083", role = 1, status = 2 },\n',
        '    { id = 1, address = "0.0.0.0:9081", role = 3, status = 0 },\n'),
     "cluster.initial_cluster",
     "node 1 joins a running cluster (role = 3) but lists no member of it to contact"),
    ("learner-status-string", sub("role = 1, status = 2 }", 'role = 3, status = "Joining" }'),
     "cluster.initial_cluster[0].status", "expected an integer, got string 'Joining'"),
    # timings
    ("lease-equals-election-min", sub("lease_duration_ms = 500", "lease_duration_ms = 600"),
     "raft.read_consistency.lease_duration_ms",
     "must be shorter than raft.timing.election_timeout_min_ms (600)"),
    ("lease-zero", sub("lease_duration_ms = 500", "lease_duration_ms = 0"),
     "raft.read_consistency.lease_duration_ms", "must be positive"),
    ("election-min-not-below-max",
     MISSION_TOML + "\n[raft.timing]\nelection_timeout_min_ms = 900\n",
     "raft.timing.election_timeout_min_ms",
     "must be less than raft.timing.election_timeout_max_ms (900)"),
    ("heartbeat-not-below-election-min",
     MISSION_TOML + "\n[raft.timing]\nheartbeat_interval_ms = 600\n",
     "raft.timing.heartbeat_interval_ms",
     "must be shorter than raft.timing.election_timeout_min_ms (600)"),
    ("request-timeout-negative", MISSION_TOML + "\n[raft.timing]\nrequest_timeout_ms = -1\n",
     "raft.timing.request_timeout_ms", "must be positive, got -1"),
    # flush policy
    ("threshold-zero", sub("threshold = 100", "threshold = 0"),
     "raft.persistence.flush_policy.Batch.threshold", "must be positive, got 0"),
    ("interval-negative", sub("interval_ms = 20", "interval_ms = -5"),
     "raft.persistence.flush_policy.Batch.interval_ms", "must be positive, got -5"),
    ("unknown-flush-kind", sub("{ Batch = { threshold = 100, interval_ms = 20 } }",
                               "{ Immediate = {} }"),
     "raft.persistence.flush_policy", "unknown flush policy kind 'Immediate'; supported: Batch"),
    ("two-flush-kinds", sub("interval_ms = 20 } }", "interval_ms = 20 }, Immediate = {} }"),
     "raft.persistence.flush_policy", "expected one policy kind"),
    # limits and replication
    ("limit-zero", MISSION_TOML + "\n[limits]\nmax_value_bytes = 0\n",
     "limits.max_value_bytes", "must be positive, got 0"),
    ("replication-zero", MISSION_TOML + "\n[raft.replication]\nmax_inflight_msgs = 0\n",
     "raft.replication.max_inflight_msgs", "must be positive, got 0"),
    ("backlog-zero", MISSION_TOML + "\n[http]\nlisten_backlog = 0\n",
     "http.listen_backlog", "must be positive, got 0"),
    ("body-timeout-zero", MISSION_TOML + "\n[http]\nbody_timeout_ms = 0\n",
     "http.body_timeout_ms", "must be positive, got 0"),
    ("body-timeout-float", MISSION_TOML + "\n[http]\nbody_timeout_ms = 1.5\n",
     "http.body_timeout_ms", "expected an integer"),
    # what the layers below cannot hold: TOML's 64-bit integers (the hard state keeps ids and
    # terms as u64), listen(2)'s C int backlog, NUL-free paths, host names the resolver takes
    ("node-id-over-64-bits", sub("node_id = 1 ", f"node_id = {2**64} ").replace(
        "{ id = 1,", f"{{ id = {2**64},"), "cluster.node_id",
     f"must be at most {2**63 - 1} (TOML integers are 64-bit)"),
    ("peer-id-over-64-bits", sub("{ id = 3,", f"{{ id = {2**63},"),
     "cluster.initial_cluster[2].id", f"must be at most {2**63 - 1}"),
    ("timeout-below-64-bits", MISSION_TOML + f"\n[raft.timing]\nrequest_timeout_ms = {-2**64}\n",
     "raft.timing.request_timeout_ms", f"must be at least {-2**63}"),
    ("threshold-over-64-bits", sub("threshold = 100", f"threshold = {2**70}"),
     "raft.persistence.flush_policy.Batch.threshold", f"must be at most {2**63 - 1}"),
    ("key-limit-over-what-a-url-path-carries",
     MISSION_TOML + "\n[limits]\nmax_key_bytes = 4097\n", "limits.max_key_bytes",
     "must be at most 4096, got 4097: a key is percent-encoded in URL paths"),
    ("backlog-over-c-int", MISSION_TOML + f"\n[http]\nlisten_backlog = {2**31}\n",
     "http.listen_backlog", f"must be at most {2**31 - 1}"),
    ("db-root-dir-nul", sub("[raft.read", 'db_root_dir = "db\\u0000x"\n\n[raft.read'),
     "cluster.db_root_dir", "must not contain a NUL character"),
    ("address-host-label-too-long", sub('address = "0.0.0.0:9082"',
                                        f'address = "{"x" * 64}.example:9082"'),
     "cluster.initial_cluster[1].address", "is not a valid host name"),
    ("listen-host-empty-label", sub('listen_address = "0.0.0.0:9081"',
                                    'listen_address = "a..b:9081"'),
     "cluster.listen_address", "is not a valid host name"),
    # a host the resolver would refuse: RFC 1123 labels, or an IPv4 / IPv6 literal
    ("address-host-with-a-space", sub('address = "0.0.0.0:9082"', 'address = "node two:9082"'),
     "cluster.initial_cluster[1].address",
     "host 'node two' of 'node two:9082' is not a valid host name: label 'node two' has a ' '"),
    ("listen-host-with-a-space", sub('listen_address = "0.0.0.0:9081"',
                                     'listen_address = "0.0.0.0 :9081"'),
     "cluster.listen_address", "is not a valid host name: label '0 ' has a ' '"),
    ("address-host-underscore", sub('address = "0.0.0.0:9082"', 'address = "node_2:9082"'),
     "cluster.initial_cluster[1].address", "label 'node_2' has a '_'"),
    ("address-host-slash", sub('address = "0.0.0.0:9082"', 'address = "http://n2:9082"'),
     "cluster.initial_cluster[1].address", "is not a valid host name"),
    ("address-host-leading-hyphen", sub('address = "0.0.0.0:9082"', 'address = "-n2.lan:9082"'),
     "cluster.initial_cluster[1].address", "label '-n2' starts or ends with '-'"),
    ("address-host-trailing-hyphen", sub('address = "0.0.0.0:9082"', 'address = "n2-.lan:9082"'),
     "cluster.initial_cluster[1].address", "label 'n2-' starts or ends with '-'"),
    ("address-ipv4-out-of-range", sub('address = "0.0.0.0:9082"', 'address = "10.0.0.256:9082"'),
     "cluster.initial_cluster[1].address",
     "host '10.0.0.256' of '10.0.0.256:9082' is not a valid IPv4 address"),
    ("address-ipv4-short-form", sub('address = "0.0.0.0:9082"', 'address = "10.1:9082"'),
     "cluster.initial_cluster[1].address", "is not a valid IPv4 address"),
    ("address-ipv4-leading-zero", sub('address = "0.0.0.0:9082"', 'address = "010.0.0.1:9082"'),
     "cluster.initial_cluster[1].address", "is not a valid IPv4 address"),
    ("address-ipv4-final-dot", sub('address = "0.0.0.0:9082"', 'address = "10.0.0.2.:9082"'),
     "cluster.initial_cluster[1].address", "is not a valid IPv4 address"),
    ("address-ipv6-bad", sub('address = "0.0.0.0:9082"', 'address = "[::g]:9082"'),
     "cluster.initial_cluster[1].address", "host '::g' of '[::g]:9082' is not a valid IPv6"),
    ("address-host-too-long", sub('address = "0.0.0.0:9082"',
                                  f'address = "{"a." * 127}ab:9082"'),
     "cluster.initial_cluster[1].address", "longer than 253 characters"),
    # this node's own member address must be where it listens
    ("listen-port-not-own-address", sub('listen_address = "0.0.0.0:9081"',
                                        'listen_address = "0.0.0.0:9091"'),
     "cluster.listen_address",
     "port 9091 differs from this node's address in cluster.initial_cluster[0] ('0.0.0.0:9081')"),
    ("listen-host-not-own-address", sub('listen_address = "0.0.0.0:9081"',
                                        'listen_address = "10.0.0.7:9081"'),
     "cluster.listen_address",
     "host 10.0.0.7 differs from this node's address in cluster.initial_cluster[0]"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "key", "problem"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_gives_one_line_naming_file_and_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert problem in message
    assert (info.value.file, info.value.key) == (str(path), key)


def test_invalid_toml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, MISSION_TOML.replace("lease_duration_ms = 500", "lease_duration_ms ="))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 12" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'absent'}: cannot read: ")
    assert "absent.toml" in message


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    (tmp_path / "n1").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "n1")


@pytest.mark.parametrize(
    ("listen", "own"),
    [
        ("0.0.0.0:9081", "10.0.0.1:9081"),  # every interface, reached at one of them
        ("[::]:9081", "[2001:db8::1]:9081"),
        ("10.0.0.1:9081", "10.0.0.1:9081"),
        ("127.0.0.1:9081", "localhost:9081"),  # a name: may resolve to the listen address
        ("node1.example:9081", "NODE1.example:9081"),
    ],
)
def test_listen_address_may_be_a_wildcard_or_the_own_address(
    tmp_path: Path, listen: str, own: str
) -> None:
    text = sub('listen_address = "0.0.0.0:9081"', f'listen_address = "{listen}"').replace(
        '{ id = 1, address = "0.0.0.0:9081"', f'{{ id = 1, address = "{own}"'
    )
    assert load_config(write(tmp_path, text)).listen_host_port()[1] == 9081


# Limits the transport cannot carry: refused when the node loads its file, not at the first big
# write. (The check lives with the node's loader: config sits below the transport's layer.)
# fmt: off
OVER_THE_FRAME_LIMIT = [
    ("value", MISSION_TOML + "\n[limits]\nmax_value_bytes = 16777216\n",
     "limits.max_value_bytes"),
    ("key-and-value",
     MISSION_TOML + f"\n[limits]\nmax_key_bytes = 4096\n"
     f"max_value_bytes = {MAX_COMMAND_BYTES - 4096 - PUT_COMMAND_OVERHEAD_BYTES + 1}\n",
     "limits.max_value_bytes"),
    ("batch", MISSION_TOML + "\n[raft.replication]\nmax_bytes_per_msg = 20000000\n",
     "raft.replication.max_bytes_per_msg"),
    ("snapshot-chunk",
     MISSION_TOML + f"\n[raft.snapshot]\nchunk_size = {MAX_COMMAND_BYTES + 1}\n",
     "raft.snapshot.chunk_size"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "key"), [c[1:] for c in OVER_THE_FRAME_LIMIT], ids=[c[0] for c in OVER_THE_FRAME_LIMIT]
)
def test_limits_over_the_transport_frame_limit_are_refused_at_load(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path, text)
    load_config(path)  # the file itself is well-formed
    with pytest.raises(ConfigError) as info:
        load_node_config(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert "transport's frame limit" in message


def test_limits_just_under_the_frame_limit_load(tmp_path: Path) -> None:
    value = MAX_COMMAND_BYTES - 1024 - PUT_COMMAND_OVERHEAD_BYTES
    text = MISSION_TOML + f"\n[limits]\nmax_value_bytes = {value}\nmax_body_bytes = {value}\n"
    assert load_node_config(str(write(tmp_path, text))).limits.max_value_bytes == value
    text = MISSION_TOML + f"\n[raft.replication]\nmax_bytes_per_msg = {MAX_COMMAND_BYTES}\n"
    assert load_node_config(str(write(tmp_path, text))).raft.replication.max_bytes_per_msg > 0
    text = MISSION_TOML + f"\n[raft.snapshot]\nchunk_size = {MAX_COMMAND_BYTES}\n"
    assert load_node_config(str(write(tmp_path, text))).raft.snapshot.chunk_size > 0


def test_behind_proxy_lets_listen_address_differ(tmp_path: Path) -> None:
    text = sub('listen_address = "0.0.0.0:9081"', 'listen_address = "0.0.0.0:19081"')
    with pytest.raises(ConfigError, match="behind_proxy = true"):
        load_config(write(tmp_path, text))
    text = text.replace("[cluster]\n", "[cluster]\nbehind_proxy = true\n")
    assert load_config(write(tmp_path, text)).listen_host_port() == ("0.0.0.0", 19081)


def test_the_complete_file_of_the_docs_loads_with_the_defaults_it_claims(tmp_path: Path) -> None:
    import re

    docs = (REPO / "docs" / "configuration.md").read_text()
    match = re.search(r"## A complete file.*?```toml\n(.*?)```", docs, re.S)
    assert match is not None
    complete = load_node_config(str(write(tmp_path, match.group(1))))
    # Everything but [cluster] is written out with its default value.
    minimal = load_config(
        write(
            tmp_path,
            match.group(1).split("[raft.read_consistency]")[0],
            "minimal.toml",
        )
    )
    assert complete.raft == minimal.raft
    assert complete.raft.timing == minimal.raft.timing
    assert complete.raft.replication == minimal.raft.replication
    assert complete.raft.snapshot == minimal.raft.snapshot
    assert complete.limits == minimal.limits
    assert complete.kv == minimal.kv
    assert complete.watch == minimal.watch
    assert complete.http == minimal.http
    assert complete.cluster == minimal.cluster


# ---------------------------------------------------------------------------------------------
# render_toml: what it writes, load_config reads back as the same configuration.

POSITIVE = st.integers(1, 2**63 - 1)
"""TOML integers are signed 64-bit."""
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
"""Any string a file can hold: quotes, backslashes, control characters, non-ASCII."""
PATH = TEXT.filter(lambda text: "\x00" not in text)


LABEL = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,10}[A-Za-z0-9])?\Z")
"""An RFC 1123 label (shortened)."""
HOST = st.one_of(
    st.lists(LABEL, min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda name: not name.rpartition(".")[2].isdigit()),  # that is an IPv4 address
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
"""Hosts the resolver takes: RFC 1123 names, IPv4 and (bracketed) IPv6 literals."""


@st.composite
def node_configs(draw: st.DrawFn) -> NodeConfig:
    """A valid configuration, built valid rather than filtered (most random ones are not)."""
    size = draw(st.integers(1, 5))
    ids = draw(st.lists(POSITIVE, min_size=size, max_size=size, unique=True))
    ports = draw(st.lists(st.integers(1, 65535), min_size=size, max_size=size, unique=True))
    hosts = draw(st.lists(HOST, min_size=size, max_size=size))
    members = [PeerConfig(i, f"{h}:{p}") for i, h, p in zip(ids, hosts, ports, strict=True)]
    me = draw(st.sampled_from(members))
    behind_proxy = draw(st.booleans())
    listen = f"{draw(HOST)}:{draw(st.integers(1, 65535))}" if behind_proxy else me.address
    election_min = draw(st.integers(2, 2**62))
    below_election = st.integers(1, election_min - 1)
    return NodeConfig(
        path="unused.toml",
        cluster=ClusterConfig(
            node_id=me.id,
            listen_address=listen,
            initial_cluster=members,
            db_root_dir=draw(PATH),
            name=draw(TEXT),
            behind_proxy=behind_proxy,
        ),
        raft=RaftSection(
            read_consistency=ReadConsistencyConfig(
                draw(st.sampled_from(ReadPolicy)), draw(below_election)
            ),
            persistence=PersistenceConfig(
                draw(st.sampled_from(Durability)),
                FlushPolicy(Batch(draw(POSITIVE), draw(POSITIVE))),
            ),
            snapshot=SnapshotConfig(
                draw(st.booleans()),
                draw(POSITIVE),
                draw(st.integers(0, 2**63 - 1)),
                draw(st.one_of(st.just(""), PATH)),
                draw(POSITIVE),
            ),
            timing=TimingConfig(
                election_min,
                draw(st.integers(election_min + 1, 2**63 - 1)),
                draw(below_election),
                draw(POSITIVE),
            ),
            replication=ReplicationConfig(draw(POSITIVE), draw(POSITIVE), draw(POSITIVE)),
        ),
        limits=Limits(draw(st.integers(1, 4096)), draw(POSITIVE), draw(POSITIVE), draw(POSITIVE)),
        http=HttpConfig(draw(st.integers(1, 2**31 - 1))),
    )


@settings(max_examples=80, deadline=None)
@given(cfg=node_configs())
def test_render_toml_round_trips_through_load_config(
    tmp_path_factory: pytest.TempPathFactory, cfg: NodeConfig
) -> None:
    path = tmp_path_factory.mktemp("render") / "n.toml"
    path.write_text(render_toml(cfg), encoding="utf-8")
    assert load_config(path) == attrs.evolve(cfg, path=path)


@pytest.mark.parametrize("relative", ["config/n1.toml", "config/five/n5.toml"])
def test_render_toml_round_trips_the_shipped_files(tmp_path: Path, relative: str) -> None:
    shipped = load_config(REPO / relative)
    path = write(tmp_path, render_toml(shipped))
    assert load_config(path) == attrs.evolve(shipped, path=path)


# A joining node's file: node 4 lists the running cluster's members and itself as a learner.
JOINER_TOML = (
    MISSION_TOML.replace("node_id = 1  # 2, 3 for other nodes", "node_id = 4")
    .replace('listen_address = "0.0.0.0:9081"', 'listen_address = "0.0.0.0:9084"')
    .replace(
        '    { id = 3, address = "0.0.0.0:9083", role = 1, status = 2 },\n',
        '    { id = 3, address = "0.0.0.0:9083", role = 1, status = 2 },\n'
        '    { id = 4, address = "0.0.0.0:9084", role = 3, status = 0 },\n',
    )
)


def test_a_joining_node_is_a_learner_to_promote_outside_the_bootstrap_voters(
    tmp_path: Path,
) -> None:
    cfg = load_config(write(tmp_path, JOINER_TOML))
    assert cfg.joining() and cfg.promote_after_join()
    assert cfg.own_member() == PeerConfig(4, "0.0.0.0:9084", role=3, status=0)
    assert cfg.bootstrap_voters() == (1, 2, 3)
    # It computes the identity of the cluster it joins, not one of its own.
    assert cfg.cluster_id() == load_config(write(tmp_path, MISSION_TOML, "n1.toml")).cluster_id()
    assert 4 in cfg.peer_addresses()


def test_a_read_replica_is_a_learner_never_promoted(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, JOINER_TOML.replace("role = 3, status = 0", "role = 3, status = 2"))
    )
    assert cfg.joining() and not cfg.promote_after_join()
    assert cfg.bootstrap_voters() == (1, 2, 3)


def test_a_voter_is_neither_joining_nor_promoted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MISSION_TOML))
    assert not cfg.joining() and not cfg.promote_after_join()
    assert cfg.bootstrap_voters() == (1, 2, 3)
    assert cfg.raft_config().voters == (1, 2, 3)


@pytest.mark.parametrize("name", ["n4.toml", "n5.toml"])
def test_the_shipped_joining_files_load_as_joining_nodes(name: str) -> None:
    cfg = load_node_config(str(REPO / "config" / name))
    assert cfg.joining() and cfg.promote_after_join()
    assert cfg.bootstrap_voters() == (1, 2, 3)
    assert cfg.cluster_id() == load_config(REPO / "config" / "n1.toml").cluster_id()


def test_a_bad_role_stops_the_node_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dengine_trio.cli import EXIT_CONFIG, main

    path = write(tmp_path, JOINER_TOML.replace("role = 3, status = 0", "role = 3, status = 1"))
    assert main(["--config-path", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"{path}: cluster.initial_cluster[3].status: unsupported status 1")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("idempotency_ttl_ms", 0),
        ("idempotency_max_keys", 0),
        ("idempotency_max_bytes", 0),
        ("idempotency_max_bytes", -1),
    ],
)
def test_a_bad_kv_bound_stops_the_node_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: int
) -> None:
    """KF: the state machine raises ValueError for these; the config refuses them first, as
    one line naming the file and key, not a traceback at start."""
    from dengine_trio.cli import EXIT_CONFIG, main

    path = write(tmp_path, MISSION_TOML + f"\n[kv]\n{key} = {value}\n")
    assert main(["--config-path", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"{path}: kv.{key}: must be positive, got {value}"), err


def test_the_kv_bounds_reach_the_state_machine(tmp_path: Path) -> None:
    from dengine_trio.engine import EmbeddedEngine
    from dengine_trio.statemachine import KVStateMachine

    text = MISSION_TOML + (
        "\n[kv]\nidempotency_ttl_ms = 5000\nidempotency_max_keys = 7\n"
        "idempotency_max_bytes = 4096\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert (
        cfg.kv.idempotency_max_bytes,
        load_config(write(tmp_path, MISSION_TOML, "d.toml")).kv.idempotency_max_bytes,
    ) == (4096, 64 * 1024 * 1024)
    sm = EmbeddedEngine(cfg).state_machine
    assert isinstance(sm, KVStateMachine)
    bounds = (sm.idempotency_ttl_ms, sm.idempotency_max_keys, sm.idempotency_max_bytes)
    assert bounds == (5000, 7, 4096)
