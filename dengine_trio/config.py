"""Node configuration: one TOML file per node, structured by cattrs into frozen attrs classes.

The schema is the one of ``three-nodes-embedded.md`` (``[cluster]``, ``[raft.read_consistency]``,
``[raft.persistence]``) plus optional sections for timings and limits; see
``docs/configuration.md``. Every mistake surfaces as one :class:`ConfigError` whose text is a
single line ``<file>: <dotted.key>: <problem>``, so an operator sees at once what to fix.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import ssl
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn

from dengine_trio.policy import ReadPolicy
from dengine_trio.raft.config import Durability, RaftConfig
from dengine_trio.raft.membership import address_key, canonical_address

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "AUTH_ROLES",
    "DEFAULT_LISTEN_BACKLOG",
    "DEFAULT_SNAPSHOTS_SUBDIR",
    "ROLE_FOLLOWER",
    "ROLE_LEARNER",
    "STATUS_ACTIVE",
    "STATUS_JOINING",
    "AuthConfig",
    "Batch",
    "ClusterConfig",
    "ConfigError",
    "FlushPolicy",
    "HttpConfig",
    "KvConfig",
    "Limits",
    "NodeConfig",
    "PeerConfig",
    "PersistenceConfig",
    "RaftSection",
    "ReadConsistencyConfig",
    "ReplicationConfig",
    "SnapshotConfig",
    "TimingConfig",
    "TlsConfig",
    "WatchConfig",
    "canonical_member_address",
    "check_member_address",
    "check_message_limits",
    "http_ssl_context",
    "load_config",
    "read_tokens",
    "render_toml",
    "resolve_config_path",
]

ROLE_FOLLOWER = 1
"""``role = 1`` in ``initial_cluster``: a voting member, which starts as a Follower."""
ROLE_LEARNER = 3
"""``role = 3`` (d-engine's NodeRole Learner), only on this node's own ``initial_cluster``
entry: the node joins a running cluster as a non-voting learner."""
STATUS_JOINING = 0
"""``status = 0`` (d-engine's NodeStatus Joining) with ``role = 3``: a joining node, promoted
to voter by the leader once it has caught up."""
STATUS_ACTIVE = 2
"""``status = 2`` (Active): a voting member with ``role = 1``; with ``role = 3`` a learner
that stays one, a read replica (d-engine's "analytics node": Learner + Active, never
promoted)."""


class ConfigError(Exception):
    """A configuration file that cannot be used. ``str()`` is one line naming file and key."""

    def __init__(self, file: str | Path, key: str | None, problem: str) -> None:
        self.file = str(file)
        self.key = key
        # A multi-line message would break the one-line-per-error promise in logs.
        self.problem = " ".join(problem.split())
        prefix = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(prefix + self.problem)


# ---------------------------------------------------------------------------------------------
# The schema. Defaults are the documented ones; docs/configuration.md explains each.


@attrs.frozen(slots=True)
class PeerConfig:
    """One member of ``[cluster] initial_cluster``: ``{ id, address, role, status }``.

    ``address`` is ``"host:port"``, where the other nodes dial this member. ``role`` and
    ``status`` use d-engine's numbers: a voting member is :data:`ROLE_FOLLOWER` with
    :data:`STATUS_ACTIVE` (the defaults). This node's own entry may instead be
    :data:`ROLE_LEARNER` with :data:`STATUS_JOINING` (join a running cluster, then be promoted
    to voter once caught up) or with :data:`STATUS_ACTIVE` (join as a read replica, never
    promoted); see :meth:`NodeConfig.joining`.
    """

    id: int
    address: str
    role: int = ROLE_FOLLOWER
    status: int = STATUS_ACTIVE


def _default_db_root_dir(cluster: ClusterConfig) -> str:
    return f"./db/{cluster.node_id}"


@attrs.frozen(slots=True)
class ClusterConfig:
    """``[cluster]``: who this node is, where it listens, and every member.

    ``node_id``: this node's id (>= 1), one of ``initial_cluster``'s. ``listen_address``:
    ``"host:port"`` (IPv6 hosts in brackets) where the Raft listener binds, which must be the
    node's own member address (a wildcard host allowed) unless ``behind_proxy``.
    ``initial_cluster``: the members that bootstrap a brand-new cluster, this node included,
    the same list on every node; a joining node lists members of the running cluster it
    contacts, and itself with ``role = 3`` (see :class:`PeerConfig`). Once a cluster runs, its
    membership lives in its log and snapshots, changed by ``/members`` (docs/operations.md).
    ``db_root_dir``: directory of the log and hard state, default ``./db/<node_id>``, a
    relative path taken from the working directory.
    """

    node_id: int
    listen_address: str
    initial_cluster: list[PeerConfig]
    db_root_dir: str = attrs.field(default=attrs.Factory(_default_db_root_dir, takes_self=True))
    name: str = "dengine"
    # Peers reach this node through a proxy or port mapping at its initial_cluster address,
    # which then need not match listen_address.
    behind_proxy: bool = False


@attrs.frozen(slots=True)
class ReadConsistencyConfig:
    """``[raft.read_consistency]``: the read policy of calls that name none, and the lease.

    ``lease_duration_ms`` (ms): how long after sending a heartbeat round that a majority
    acknowledged a leader serves ``LeaseRead``s alone. It must be shorter than
    ``raft.timing.election_timeout_min_ms``: the leader lease of the Raft thesis (Ongaro 2014,
    section 6.4.1), safe while clocks drift less than the gap.
    """

    default_policy: ReadPolicy = ReadPolicy.LINEARIZABLE
    lease_duration_ms: int = 500


@attrs.frozen(slots=True)
class Batch:
    """MemFirst flush: fsync once ``threshold`` entries are pending or ``interval_ms`` (ms)
    passed since the first of them; both >= 1."""

    threshold: int = 100
    interval_ms: int = 20


@attrs.frozen(slots=True)
class FlushPolicy:
    """``flush_policy = { Batch = { ... } }``: a one-key table naming the policy kind."""

    batch: Batch = attrs.Factory(Batch)


@attrs.frozen(slots=True)
class PersistenceConfig:
    """``[raft.persistence]``: when an entry counts toward commit (``DiskFirst``: once fsynced;
    ``MemFirst``: once in memory, flushed per ``flush_policy``; see docs/durability.md)."""

    strategy: Durability = Durability.DISK_FIRST
    flush_policy: FlushPolicy = attrs.Factory(FlushPolicy)


DEFAULT_SNAPSHOTS_SUBDIR = "snapshots"
"""Where snapshots go when ``snapshots_dir`` is not set: this directory under ``db_root_dir``."""


@attrs.frozen(slots=True)
class SnapshotConfig:
    """``[raft.snapshot]``: log compaction by state machine snapshots (d-engine's names).

    ``enable``: take snapshots and compact the log (Raft paper, section 7). With it off the log
    grows without bound, but the node still installs snapshots a leader sends it.
    ``max_log_entries_before_snapshot`` (entries, >= 1): take a snapshot once the applied index
    is this far past the newest snapshot's index. ``retained_log_entries`` (entries, >= 0): how
    many entries before the snapshot's index the log keeps after compacting, so that a follower
    lagging by up to that many still catches up with AppendEntries instead of a whole snapshot
    (the runtime compacts through ``index - retained_log_entries``). ``snapshots_dir``: the
    directory of snapshot files, ``""`` meaning ``<db_root_dir>/snapshots``
    (:meth:`NodeConfig.snapshots_path` resolves it; a relative path is taken from the working
    directory). ``chunk_size`` (bytes, >= 1): the payload of one InstallSnapshot chunk on the
    wire; it must fit in a transport frame with the same headroom as an AppendEntries batch
    (:func:`check_message_limits`).
    """

    enable: bool = True
    max_log_entries_before_snapshot: int = 10_000
    retained_log_entries: int = 1_000
    snapshots_dir: str = ""
    chunk_size: int = 1 << 20


@attrs.frozen(slots=True)
class TimingConfig:
    """``[raft.timing]``, all in ms (integers >= 1).

    Each election timeout is drawn from ``[election_timeout_min_ms, election_timeout_max_ms)``
    (randomized timeouts: Raft paper, section 5.2), so min < max. ``heartbeat_interval_ms``
    must be shorter than the minimum (broadcast time << election timeout: section 5.6).
    ``request_timeout_ms``: how long a client request waits before it fails with ``Timeout``.
    """

    election_timeout_min_ms: int = 600
    election_timeout_max_ms: int = 900
    heartbeat_interval_ms: int = 50
    request_timeout_ms: int = 5000


@attrs.frozen(slots=True)
class ReplicationConfig:
    """``[raft.replication]``: the size of one AppendEntries and the pipeline per follower.

    ``max_entries_per_msg`` (entries) and ``max_bytes_per_msg`` (bytes of entry payload) bound
    one message; ``max_inflight_msgs`` bounds the AppendEntries sent to one follower and not
    yet acknowledged (as etcd raft's ``MaxInflightMsgs``). All >= 1; ``max_bytes_per_msg``
    must fit in a transport frame (:func:`check_message_limits`).
    """

    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    max_inflight_msgs: int = 64


@attrs.frozen(slots=True)
class RaftSection:
    """The ``[raft.*]`` sections together; each defaults to its documented values."""

    read_consistency: ReadConsistencyConfig = attrs.Factory(ReadConsistencyConfig)
    persistence: PersistenceConfig = attrs.Factory(PersistenceConfig)
    snapshot: SnapshotConfig = attrs.Factory(SnapshotConfig)
    timing: TimingConfig = attrs.Factory(TimingConfig)
    replication: ReplicationConfig = attrs.Factory(ReplicationConfig)


@attrs.frozen(slots=True)
class Limits:
    """``[limits]``, sizes in bytes (integers >= 1).

    ``max_key_bytes`` / ``max_value_bytes``: the largest key and value of a write (``TooLarge``,
    HTTP 413 beyond); ``max_body_bytes``: the largest HTTP request body; ``max_pending_requests``:
    requests of this node awaiting an outcome at once (``Overloaded``, HTTP 503, beyond).
    ``max_txn_ops``: compares plus operations of one transaction (etcd's ``--max-txn-ops``,
    128); ``max_txn_bytes``: the keys and values of one transaction together (both
    ``TooLarge``, HTTP 413, beyond).
    """

    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    max_body_bytes: int = 1 << 20
    max_pending_requests: int = 10_000
    max_txn_ops: int = 128
    max_txn_bytes: int = 1 << 20


@attrs.frozen(slots=True)
class TlsConfig:
    """Peer TLS on the Raft port (d-engine's ``[tls]`` names; docs/security.md).

    ``enable_tls``: every connection between nodes is TLS; the dialer checks the listener's
    certificate against ``certificate_authority_root_path`` (PEM), the host or IP it dialed,
    and that it names the node dialed. ``enable_mtls`` (needs ``enable_tls``): the listener
    also requires a client certificate, signed by ``client_certificate_authority_root_path``
    (default: the same CA), naming the node the caller claims to be. Each node presents
    ``server_certificate_path`` with ``server_private_key_path`` both ways. A node's name is
    ``peer_name_pattern`` with ``{id}`` replaced, a DNS name among the certificate's subject
    alternative names. Relative paths are taken from the working directory.
    """

    enable_tls: bool = False
    enable_mtls: bool = False
    certificate_authority_root_path: str = ""
    server_certificate_path: str = ""
    server_private_key_path: str = ""
    client_certificate_authority_root_path: str = ""
    peer_name_pattern: str = "node-{id}"


DEFAULT_LISTEN_BACKLOG = 4096
DEFAULT_BODY_TIMEOUT_MS = 60_000
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS = 10_000
DEFAULT_IDLE_TIMEOUT_MS = 75_000
HTTP_WORKERS_MAX = 64
"""The most ``[http] workers``: more processes than that would be more than a node's cores."""


@attrs.frozen(slots=True)
class HttpConfig:
    """The two HTTP listeners (KV and health port).

    ``listen_backlog``: connections the kernel completes and queues for each listener before
    the node accepts them. A burst larger than this is not queued: Linux drops or resets the
    excess connects. Linux caps it at ``net.core.somaxconn`` (4096 on kernels since 5.4).
    ``body_timeout_ms``: how long a request body may take to arrive once its headers are in
    (ms); then HTTP 408 ``request_timeout`` and the connection is closed.
    ``max_header_bytes``: the most a request line and headers together may take (bytes;
    Hypercorn's ``h11_max_incomplete_size``); a longer head is answered 400 and closed.
    ``max_connections``: open connections each port serves at once; one accepted beyond it is
    closed at once (the kernel's backlog queues the rest).
    ``tls_handshake_timeout_ms``: how long a TLS client may take to finish its handshake (ms).
    ``idle_timeout_ms``: how long a connection may go without a complete request head (ms;
    Hypercorn's keep-alive timer): idle between requests, or sending its head slowly.
    ``workers``: processes serving the KV port (1 to :data:`HTTP_WORKERS_MAX`): 1 serves it
    in the node's process; N > 1 runs N HTTP worker processes that pass each request to the
    node's process (``dengine_trio/api/workers.py``; ``--http-workers`` overrides it).

    HTTPS (``docs/security.md``, "HTTPS"): ``tls_certificate_path`` and
    ``tls_private_key_path`` (PEM files; both or neither) serve the KV port over TLS;
    ``tls_client_ca_path`` (PEM) is the CA client certificates are checked against, and
    ``tls_require_client_cert`` refuses a client without one; ``health_tls`` serves the health
    port over TLS too (off by default: load balancers probe it in plain HTTP). Relative paths
    are taken from the working directory. Empty string: not set.
    """

    listen_backlog: int = DEFAULT_LISTEN_BACKLOG
    body_timeout_ms: int = DEFAULT_BODY_TIMEOUT_MS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    tls_handshake_timeout_ms: int = DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS
    idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS
    workers: int = 1
    tls_certificate_path: str = ""
    tls_private_key_path: str = ""
    tls_client_ca_path: str = ""
    tls_require_client_cert: bool = False
    health_tls: bool = False


AUTH_ROLES = ("read", "write", "admin")
"""Token roles, weakest first: ``read`` (GET of keys), ``write`` (reads and writes),
``admin`` (every endpoint)."""
MIN_TOKEN_CHARS = 16
"""A shorter token is refused: it could be guessed."""


@attrs.frozen(slots=True)
class AuthConfig:
    """``[auth]``: bearer tokens on both HTTP ports (``docs/security.md``, "Tokens").

    ``enable``: require ``Authorization: Bearer <token>``; ``tokens_path``: the token file,
    one ``TOKEN ROLE`` pair a line (``#`` starts a comment), read at start (see
    :func:`read_tokens`).
    """

    enable: bool = False
    tokens_path: str = ""


@attrs.frozen(slots=True)
class WatchConfig:
    """``GET /watch`` and ``Client.watch`` (``dengine_trio/runtime/watch.py``, docs/api.md).

    ``history_events``: changes each node keeps in memory for watchers that come back with
    ``from_index`` (older: HTTP 410 ``compacted``); ``history_bytes``: about the most their keys
    and values take together (bytes; the newest entry's changes are kept whatever their size).
    ``max_watchers``: watches open at once on one node (HTTP 503 ``too_many_watchers`` beyond).
    ``queue_events``: how far one watcher may fall behind the live changes it matches before
    it is ended with a final ``slow_consumer`` event; ``queue_bytes``: the same in bytes (each
    change counted as its key, its value and 64 bytes, as for ``history_bytes``; one change is
    always taken, whatever its size): what bounds the memory a slow watcher holds once the
    history evicted its changes (4 MiB: four of the largest value or transaction; see
    ``DEFAULT_QUEUE_BYTES`` in ``runtime/watch.py``). ``heartbeat_ms``: an idle stream gets an
    SSE comment this often (ms), below the shipped HAProxy's ``timeout server`` (10 s), so
    proxies keep it open and a vanished client is noticed.
    """

    history_events: int = 10_000
    history_bytes: int = 64 * 1024 * 1024
    max_watchers: int = 1_000
    queue_events: int = 1_000
    queue_bytes: int = 4 * 1024 * 1024
    heartbeat_ms: int = 5_000


@attrs.frozen(slots=True)
class KvConfig:
    """``[kv]``: the default key-value state machine's exactly-once table (docs/api.md).

    ``idempotency_ttl_ms``: how long (ms, by the writes' own clock in the log) the outcome of a
    write with an idempotency key is kept, so a retry within it returns that outcome;
    ``idempotency_max_keys``: the most outcomes kept (the oldest go first);
    ``idempotency_max_bytes``: the most bytes of idempotency keys, stored outcomes and request
    fingerprints kept (the oldest go first; a failed compare's outcome holds the key's value,
    a txn's its gets'). All three must be the same on every node: each replica evicts by them,
    and replicas that evicted differently would answer the same retry differently. Each must
    be >= 1 (a 0 is refused at load: one line, exit 2).
    """

    idempotency_ttl_ms: int = 600_000
    idempotency_max_keys: int = 100_000
    idempotency_max_bytes: int = 64 * 1024 * 1024


@attrs.frozen(slots=True)
class _FileSchema:
    """What the TOML file holds; NodeConfig adds where it came from."""

    cluster: ClusterConfig
    raft: RaftSection = attrs.Factory(RaftSection)
    limits: Limits = attrs.Factory(Limits)
    tls: TlsConfig = attrs.Factory(TlsConfig)
    http: HttpConfig = attrs.Factory(HttpConfig)
    auth: AuthConfig = attrs.Factory(AuthConfig)
    watch: WatchConfig = attrs.Factory(WatchConfig)
    kv: KvConfig = attrs.Factory(KvConfig)


@attrs.frozen(slots=True)
class NodeConfig:
    """A validated node configuration: the file's sections plus ``path``, where it came from.

    Construction validates the whole configuration and raises :class:`ConfigError` for the
    first problem (one line: file, dotted key, problem). Frozen; use ``attrs.evolve`` to vary.
    """

    path: Path = attrs.field(converter=Path)
    cluster: ClusterConfig
    raft: RaftSection = attrs.Factory(RaftSection)
    limits: Limits = attrs.Factory(Limits)
    tls: TlsConfig = attrs.Factory(TlsConfig)
    http: HttpConfig = attrs.Factory(HttpConfig)
    auth: AuthConfig = attrs.Factory(AuthConfig)
    watch: WatchConfig = attrs.Factory(WatchConfig)
    kv: KvConfig = attrs.Factory(KvConfig)

    def __attrs_post_init__(self) -> None:
        for key, problem in _problems(self):
            raise ConfigError(self.path, key, problem)

    def own_member(self) -> PeerConfig:
        """This node's own entry of ``initial_cluster`` (validation guarantees there is one)."""
        node_id = self.cluster.node_id
        return next(p for p in self.cluster.initial_cluster if p.id == node_id)

    def joining(self) -> bool:
        """This node joins a running cluster: its own entry has ``role = 3`` (Learner).

        It starts as no member at all, asks the members listed to add it as a learner, and
        catches up from the leader (snapshot, then log). :meth:`promote_after_join` says
        whether it is then promoted to voter."""
        return self.own_member().role == ROLE_LEARNER

    def promote_after_join(self) -> bool:
        """A joining node with ``status = 0`` (Joining): the leader promotes it to voter once
        it has caught up. False for ``status = 2`` (a read replica: a learner for good, which
        ``POST /members/{id}/promote`` can still promote) and for a node that is not joining."""
        own = self.own_member()
        return own.role == ROLE_LEARNER and own.status == STATUS_JOINING

    def bootstrap_voters(self) -> tuple[int, ...]:
        """The ids of the voters ``initial_cluster`` lists (``role = 1``), sorted: the members
        of a brand-new cluster (a joining node's own entry is not one of them)."""
        return tuple(sorted(p.id for p in self.cluster.initial_cluster if p.role == ROLE_FOLLOWER))

    def raft_config(self) -> RaftConfig:
        """The Raft core's tuning (timings in ms, sizes in bytes); ``voters`` are
        :meth:`bootstrap_voters` (the implicit membership of a brand-new cluster)."""
        timing = self.raft.timing
        replication = self.raft.replication
        return RaftConfig(
            node_id=self.cluster.node_id,
            voters=self.bootstrap_voters(),
            election_timeout_min_ms=timing.election_timeout_min_ms,
            election_timeout_max_ms=timing.election_timeout_max_ms,
            heartbeat_interval_ms=timing.heartbeat_interval_ms,
            lease_duration_ms=self.raft.read_consistency.lease_duration_ms,
            max_entries_per_msg=replication.max_entries_per_msg,
            max_bytes_per_msg=replication.max_bytes_per_msg,
            max_inflight_msgs=replication.max_inflight_msgs,
            durability=self.raft.persistence.strategy,
        )

    def peer_addresses(self) -> dict[int, tuple[str, int]]:
        """Raft address of every member, this node included: ``{id: (host, port)}``."""
        return {p.id: _split_address(p.address) for p in self.cluster.initial_cluster}

    def listen_host_port(self) -> tuple[str, int]:
        """Where this node's Raft listener binds: ``(host, port)``, brackets stripped."""
        return _split_address(self.cluster.listen_address)

    def db_root_path(self) -> Path:
        """``db_root_dir`` as an absolute path (a relative one is taken from the cwd)."""
        return Path(self.cluster.db_root_dir).absolute()

    def snapshots_path(self) -> Path:
        """``raft.snapshot.snapshots_dir`` as an absolute path: ``<db_root_dir>/snapshots``
        when it is not set, else the path given (a relative one is taken from the cwd)."""
        configured = self.raft.snapshot.snapshots_dir
        if not configured:
            return self.db_root_path() / DEFAULT_SNAPSHOTS_SUBDIR
        return Path(configured).absolute()

    def cluster_id(self) -> str:
        """Identity exchanged in the node handshake: ``<name>-<12 hex digits>``.

        The digits hash the sorted ``(id, address)`` pairs of the voters ``initial_cluster``
        lists (a joining node's own ``role = 3`` entry left out, so a joiner listing the
        cluster's bootstrap members computes the cluster's own id), so a node configured with
        another membership (or a node of another cluster) is refused instead of voting.
        """
        members = sorted(
            (p.id, p.address) for p in self.cluster.initial_cluster if p.role == ROLE_FOLLOWER
        )
        digest = hashlib.sha256(json.dumps(members).encode()).hexdigest()[:12]
        return f"{self.cluster.name}-{digest}"


# ---------------------------------------------------------------------------------------------
# Validation beyond types: (dotted key, problem) pairs, in file order.

PUT_COMMAND_OVERHEAD_BYTES = 512
"""Upper bound of what a put command adds around key and value: the client's
``kv_commands.encode_kv_put`` with every field at its largest (64-bit clock, deadline and
``prev_index``, a 256-byte idempotency key) adds 301 bytes. A ``prev_value`` is not counted:
a compare-and-swap whose ``prev_value`` and value together exceed the frame is refused
(``TooLarge("command")``, HTTP 413 ``too_large``)."""

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})

TOML_INT_MIN, TOML_INT_MAX = -(2**63), 2**63 - 1
"""TOML 1.0 integers are signed 64-bit, and "if an integer cannot be represented losslessly,
an error must be thrown" (tomllib does not). Every integer key is held to it: ids and terms
fit the hard state's u64 fields and msgpack on the wire."""
MAX_KEY_BYTES_CEILING = 4096
"""The most ``limits.max_key_bytes`` may be: a key travels percent-encoded in the URL path (up
to 3 characters a byte, 12 KiB here), and HAProxy (``tune.bufsize``, 16 KiB less 1 KiB kept for
rewrites) and the node's HTTP parser (h11, 16 KiB) take at most that much of request line and
headers together. A longer key could be written in a JSON body and never read or deleted."""
LISTEN_BACKLOG_MAX = 2**31 - 1
"""listen(2) takes the backlog as a C int (Linux then caps it at ``net.core.somaxconn``)."""


def _split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) -> ``(host, port)``; ValueError if malformed."""
    host, sep, port_text = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} of {address!r} is outside 1-65535")
    problem = _host_problem(host, bracketed)
    if problem:
        raise ValueError(f"host {host!r} of {address!r} {problem}")
    return host, port


def check_member_address(address: str) -> str | None:
    """Why ``address`` cannot be a member's Raft address (one line), or None if it can:
    ``host:port`` as in ``initial_cluster`` (IPv6 hosts in brackets, port 1-65535, a host a
    resolver takes). For addresses that arrive outside a file (``POST /members``)."""
    try:
        _split_address(address)
    except ValueError as exc:
        return f'{exc} (expected e.g. "10.0.0.4:9084")'
    return None


def canonical_member_address(address: str) -> str:
    """``address`` (``host:port``, valid per :func:`check_member_address`) in the one
    spelling a membership stores and compares: port without leading zeros, host name in lower
    case (and IDNA ``xn--`` form), IPv6 compressed in brackets (``raft.membership.
    canonical_address``). Where addresses enter a membership (``initial_cluster``, ``POST
    /members``, a join request) they pass through here, so one endpoint has one spelling."""
    return canonical_address(address)


_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def _host_problem(host: str, bracketed: bool = False) -> str | None:
    """Why the resolver would refuse ``host`` (``bracketed``: written in brackets, which are
    stripped), or None if it takes it.

    An IPv6 literal (in brackets, or any host with a ``:``; a ``%zone`` allowed); an IPv4
    literal in dotted-quad form (a last label of digits only: RFC 1123 section 2.1 keeps such
    names for addresses, and ``inet_aton`` would read ``10.1`` or ``010.0.0.1`` as other
    addresses); else a host name of RFC 1123 labels: 1-63 of letters, digits and ``-``, not
    first or last, at most 253 characters, one final dot allowed. A non-ASCII name is checked
    in the ``xn--`` form the socket layer sends (IDNA 2003, Python's ``idna`` codec)."""
    if bracketed or ":" in host:
        try:
            ipaddress.IPv6Address(host)
            return None
        except ValueError:
            if bracketed:
                return "is not a valid IPv6 address (only those go in brackets)"
        # Not an IPv6 address: the ":" is reported below, as a character no host name has.
    name = host[:-1] if host.endswith(".") else host
    if name.rpartition(".")[2].isdigit():
        try:
            ipaddress.IPv4Address(host)  # no final dot: "10.0.0.2." would be looked up as a name
        except ValueError:
            return "is not a valid IPv4 address (four decimal numbers 0-255, e.g. 10.0.0.2)"
        return None
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        # An empty label, one over 63 characters, or a character IDNA cannot map: the labels
        # of the name as written say which.
        pass
    if len(name) > 253:
        return "is not a valid host name: longer than 253 characters"
    for label in name.split("."):
        if not label:
            return "is not a valid host name: an empty label (two dots, or a leading dot)"
        if len(label) > 63:
            return f"is not a valid host name: label {label[:20]!r}... is over 63 characters"
        bad = next((c for c in label if c not in _LABEL_CHARACTERS), None)
        if bad is not None:
            return (
                f"is not a valid host name: label {label!r} has a {bad!r} (RFC 1123: letters, "
                "digits and '-' only)"
            )
        if label.startswith("-") or label.endswith("-"):
            return f"is not a valid host name: label {label!r} starts or ends with '-'"
    return None


def _problems(cfg: NodeConfig) -> Iterator[tuple[str, str]]:
    for key, value in _integers("", cfg):
        if value > TOML_INT_MAX:
            yield key, f"must be at most {TOML_INT_MAX} (TOML integers are 64-bit), got {value}"
        elif value < TOML_INT_MIN:
            yield key, f"must be at least {TOML_INT_MIN} (TOML integers are 64-bit), got {value}"
    cluster = cfg.cluster
    if cluster.node_id < 1:
        yield "cluster.node_id", f"must be a positive integer, got {cluster.node_id}"
    if not cluster.name:
        yield "cluster.name", "must not be empty"
    if not cluster.db_root_dir:
        yield "cluster.db_root_dir", "must not be empty"
    elif "\x00" in cluster.db_root_dir:
        yield "cluster.db_root_dir", "must not contain a NUL character (no path can)"
    try:
        _split_address(cluster.listen_address)
    except ValueError as exc:
        yield "cluster.listen_address", f'{exc} (expected e.g. "0.0.0.0:9081")'

    seen_ids: set[int] = set()
    seen_addresses: dict[tuple[str, int], int] = {}
    for i, peer in enumerate(cluster.initial_cluster):
        key = f"cluster.initial_cluster[{i}]"
        if peer.id < 1:
            yield f"{key}.id", f"must be a positive integer, got {peer.id}"
        if peer.id in seen_ids:
            yield f"{key}.id", f"duplicate id {peer.id}"
        seen_ids.add(peer.id)
        try:
            host_port = _split_address(peer.address)
        except ValueError as exc:
            yield f"{key}.address", f'{exc} (expected e.g. "0.0.0.0:9081")'
        else:
            # The core's duplicate check (raft.membership.address_key): a zero-padded port,
            # a host name's case or final dot, an IPv6 spelling name the same endpoint.
            normalized = (address_key(peer.address), host_port[1])
            if normalized in seen_addresses:
                other = seen_addresses[normalized]
                yield f"{key}.address", f"duplicate address {peer.address!r} (also node {other})"
            seen_addresses.setdefault(normalized, peer.id)
        yield from _role_problems(key, peer, own=peer.id == cluster.node_id)
    if cluster.node_id not in seen_ids:
        yield (
            "cluster.node_id",
            f"node {cluster.node_id} is not in cluster.initial_cluster "
            f"(ids: {', '.join(str(p.id) for p in cluster.initial_cluster) or 'none'})",
        )
    else:
        if not cluster.behind_proxy:
            yield from _listen_matches_own_address(cluster)
        own = next(p for p in cluster.initial_cluster if p.id == cluster.node_id)
        if own.role == ROLE_LEARNER and len(cluster.initial_cluster) == 1:
            yield (
                "cluster.initial_cluster",
                f"node {own.id} joins a running cluster (role = {ROLE_LEARNER}) but lists no "
                "member of it to contact; add them with role = 1, status = 2",
            )

    timing = cfg.raft.timing
    election_min = timing.election_timeout_min_ms
    yield from _positive("raft.timing", timing)
    if timing.election_timeout_min_ms >= timing.election_timeout_max_ms:
        yield (
            "raft.timing.election_timeout_min_ms",
            f"must be less than raft.timing.election_timeout_max_ms "
            f"({timing.election_timeout_max_ms})",
        )
    if timing.heartbeat_interval_ms >= election_min:
        yield (
            "raft.timing.heartbeat_interval_ms",
            f"must be shorter than raft.timing.election_timeout_min_ms ({election_min})",
        )

    lease_ms = cfg.raft.read_consistency.lease_duration_ms
    if lease_ms <= 0:
        yield "raft.read_consistency.lease_duration_ms", f"must be positive, got {lease_ms}"
    elif lease_ms >= election_min:
        # A lease outliving the election timeout would let an old leader serve reads while a
        # new leader, elected after that timeout, already accepts writes.
        yield (
            "raft.read_consistency.lease_duration_ms",
            f"must be shorter than raft.timing.election_timeout_min_ms ({election_min})",
        )

    yield from _positive(
        "raft.persistence.flush_policy.Batch", cfg.raft.persistence.flush_policy.batch
    )
    yield from _positive("raft.replication", cfg.raft.replication)
    yield from _snapshot_problems(cfg.raft.snapshot)
    yield from _positive("limits", cfg.limits)
    yield from _positive("watch", cfg.watch)
    yield from _positive("kv", cfg.kv)
    yield from _peer_tls_problems(cfg.tls)
    if cfg.limits.max_key_bytes > MAX_KEY_BYTES_CEILING:
        yield (
            "limits.max_key_bytes",
            f"must be at most {MAX_KEY_BYTES_CEILING}, got {cfg.limits.max_key_bytes}: a key is "
            "percent-encoded in URL paths (3 characters a byte), and HAProxy and the node's "
            "HTTP parser read at most 16 KiB of request line and headers",
        )
    yield from _positive("http", cfg.http)
    if cfg.http.listen_backlog > LISTEN_BACKLOG_MAX:
        yield (
            "http.listen_backlog",
            f"must be at most {LISTEN_BACKLOG_MAX} (listen(2) takes a C int; Linux caps it at "
            f"net.core.somaxconn anyway), got {cfg.http.listen_backlog}",
        )
    if cfg.http.workers > HTTP_WORKERS_MAX:
        yield "http.workers", f"must be at most {HTTP_WORKERS_MAX}, got {cfg.http.workers}"
    yield from _http_tls_problems(cfg.http)
    if cfg.auth.enable and not cfg.auth.tokens_path:
        yield "auth.tokens_path", "must be set when auth.enable = true"
    elif cfg.auth.enable:
        try:
            read_tokens(cfg.auth.tokens_path)
        except ValueError as exc:
            yield "auth.tokens_path", str(exc)


def _snapshot_problems(snapshot: SnapshotConfig) -> Iterator[tuple[str, str]]:
    for key in ("max_log_entries_before_snapshot", "chunk_size"):
        value = getattr(snapshot, key)
        if value <= 0:
            yield f"raft.snapshot.{key}", f"must be positive, got {value}"
    if snapshot.retained_log_entries < 0:
        yield (
            "raft.snapshot.retained_log_entries",
            f"must be 0 or more, got {snapshot.retained_log_entries}",
        )
    if "\x00" in snapshot.snapshots_dir:
        yield "raft.snapshot.snapshots_dir", "must not contain a NUL character (no path can)"


def _http_tls_problems(http: HttpConfig) -> Iterator[tuple[str, str]]:
    """The HTTPS keys go together, and the files they name load (see :func:`http_ssl_context`)."""
    cert, key = http.tls_certificate_path, http.tls_private_key_path
    if bool(cert) != bool(key):
        missing = "http.tls_private_key_path" if cert else "http.tls_certificate_path"
        yield missing, "must be set too: HTTPS needs both a certificate and its private key"
        return
    if not cert:
        for name in ("tls_client_ca_path", "tls_require_client_cert", "health_tls"):
            if getattr(http, name):
                yield f"http.{name}", "needs http.tls_certificate_path and tls_private_key_path"
        return
    if http.tls_require_client_cert and not http.tls_client_ca_path:
        yield "http.tls_client_ca_path", "must be set when http.tls_require_client_cert = true"
        return
    try:
        http_ssl_context(http)
    except _TlsFileError as exc:
        yield f"http.{exc.key}", exc.problem


class _TlsFileError(ValueError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


def http_ssl_context(http: HttpConfig) -> ssl.SSLContext | None:
    """The server TLS context of the HTTP ports, or None if ``http`` sets no certificate.

    TLS 1.2 at least (RFC 9325 section 3.1.1), the ``ssl`` module's default ciphers, no TLS
    compression (CRIME), ALPN ``http/1.1`` only: the node's HTTP limits are h11's, so HTTP/2
    is not offered. With ``tls_client_ca_path`` a client certificate is asked for and, if
    given, checked against it (``CERT_OPTIONAL``); ``tls_require_client_cert`` makes it
    ``CERT_REQUIRED``. Raises ValueError (``_TlsFileError``: the key and the problem) when a
    file is missing or unreadable, is not PEM, or the key does not match the certificate.
    """
    if not http.tls_certificate_path:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(["http/1.1"])
    for key, path in (
        ("tls_certificate_path", http.tls_certificate_path),
        ("tls_private_key_path", http.tls_private_key_path),
        ("tls_client_ca_path", http.tls_client_ca_path),
    ):
        if path and not Path(path).is_file():
            raise _TlsFileError(key, f"cannot read {path!r}: no such file")
    try:
        context.load_cert_chain(http.tls_certificate_path, http.tls_private_key_path)
    except (OSError, ssl.SSLError) as exc:
        raise _TlsFileError(
            "tls_private_key_path",
            f"cannot load certificate {http.tls_certificate_path!r} with key "
            f"{http.tls_private_key_path!r}: {_ssl_reason(exc)} (PEM files, the key matching "
            "the certificate, expected)",
        ) from None
    if http.tls_client_ca_path:
        try:
            context.load_verify_locations(cafile=http.tls_client_ca_path)
        except (OSError, ssl.SSLError) as exc:
            raise _TlsFileError(
                "tls_client_ca_path",
                f"cannot load CA {http.tls_client_ca_path!r}: {_ssl_reason(exc)}",
            ) from None
        context.verify_mode = (
            ssl.CERT_REQUIRED if http.tls_require_client_cert else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def _ssl_reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or exc)


def read_tokens(path: str | Path) -> dict[str, str]:
    """The token file at ``path``: ``{token: role}``.

    One ``TOKEN ROLE`` pair a line, separated by white space; ``#`` starts a comment, blank
    lines are skipped. ``ROLE`` is one of :data:`AUTH_ROLES`; a token has at least
    :data:`MIN_TOKEN_CHARS` characters and appears once. Raises ValueError naming
    ``<path>:<line>`` and the problem (never the token itself, which must not reach a log).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {str(path)!r}: not UTF-8") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'TOKEN ROLE', got {len(fields)} fields")
        token, role = fields
        if role not in AUTH_ROLES:
            raise ValueError(
                f"{where}: unknown role {role!r} (expected one of {', '.join(AUTH_ROLES)})"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where}: token shorter than {MIN_TOKEN_CHARS} characters")
        if token in tokens:
            raise ValueError(f"{where}: token repeated (first given a role above)")
        tokens[token] = role
    if not tokens:
        raise ValueError(f"{path}: no tokens (every request would be refused)")
    return tokens


def _peer_tls_problems(tls: TlsConfig) -> Iterator[tuple[str, str]]:
    """``[tls]`` problems: settings that need each other, and files that do not load."""
    if tls.enable_mtls and not tls.enable_tls:
        yield "tls.enable_mtls", "needs tls.enable_tls = true (mutual TLS is TLS)"
        return
    try:
        tls.peer_name_pattern.format(id=1)
    except (KeyError, IndexError, ValueError) as exc:
        yield "tls.peer_name_pattern", f"is not a format string with only {{id}}: {exc!r}"
        return
    if "{id}" not in tls.peer_name_pattern:
        yield "tls.peer_name_pattern", "must contain {id} (each node's name must differ)"
        return
    if not tls.enable_tls:
        return
    files = (
        ("certificate_authority_root_path", tls.certificate_authority_root_path),
        ("server_certificate_path", tls.server_certificate_path),
        ("server_private_key_path", tls.server_private_key_path),
    )
    for key, path in files:
        if not path:
            yield f"tls.{key}", "must be set when tls.enable_tls = true"
            return
    client_ca = tls.client_certificate_authority_root_path
    for key, path in (*files, ("client_certificate_authority_root_path", client_ca)):
        if path and not Path(path).is_file():
            yield f"tls.{key}", f"cannot read {path!r}: no such file"
            return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.server_certificate_path, tls.server_private_key_path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        yield (
            "tls.server_private_key_path",
            f"cannot load certificate {tls.server_certificate_path!r} with key "
            f"{tls.server_private_key_path!r}: {reason} (PEM files, the key matching the "
            "certificate, expected)",
        )
        return
    for key, path in (*files[:1], ("client_certificate_authority_root_path", client_ca)):
        if not path:
            continue
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            yield f"tls.{key}", f"cannot load CA certificates from {path!r}: {reason}"
            return


def _role_problems(key: str, peer: PeerConfig, *, own: bool) -> Iterator[tuple[str, str]]:
    """``role``/``status`` of one ``initial_cluster`` entry (d-engine's numbers): every member
    is ``role = 1, status = 2``; only this node's own entry (``own``) may be a learner,
    ``role = 3`` with ``status = 0`` (joining, promoted once caught up) or ``2`` (a read
    replica)."""
    voter = f"role = {ROLE_FOLLOWER}, status = {STATUS_ACTIVE} (a voting member)"
    if peer.role == ROLE_FOLLOWER:
        if peer.status != STATUS_ACTIVE:
            yield (
                f"{key}.status",
                f"unsupported status {peer.status} with role = {ROLE_FOLLOWER}; supported: "
                f"{STATUS_ACTIVE} (active voting member; a joining node is role = "
                f"{ROLE_LEARNER}, status = {STATUS_JOINING})",
            )
        return
    if peer.role != ROLE_LEARNER:
        what = "leaders are elected, never configured" if peer.role == 2 else "no such role"
        yield (
            f"{key}.role",
            f"unsupported role {peer.role} ({what}); supported: {ROLE_FOLLOWER} (a voting "
            f"member, starts as Follower), or {ROLE_LEARNER} (Learner) on this node's own "
            "entry to join a running cluster",
        )
        return
    if not own:
        yield (
            f"{key}.role",
            f"role {ROLE_LEARNER} (Learner) is for this node's own entry only (a joining "
            f"node); list node {peer.id} as {voter}, or leave out a member that is a learner",
        )
        return
    if peer.status not in (STATUS_JOINING, STATUS_ACTIVE):
        yield (
            f"{key}.status",
            f"unsupported status {peer.status} with role = {ROLE_LEARNER}; supported: "
            f"{STATUS_JOINING} (Joining: promoted to voter once caught up) or {STATUS_ACTIVE} "
            "(a read replica: stays a learner)",
        )


def _listen_matches_own_address(cluster: ClusterConfig) -> Iterator[tuple[str, str]]:
    """``listen_address`` must be where the peers reach this node (its own member address).

    The ports must be equal. The hosts must be equal unless the node listens on every
    interface (``0.0.0.0``, ``[::]``); a host name is not resolved here, so a name and an IP
    address are let through (``localhost`` may well be ``127.0.0.1``). ``behind_proxy = true``
    skips the check (a port mapping or proxy in front of the node).
    """
    index, own = next(
        (i, p) for i, p in enumerate(cluster.initial_cluster) if p.id == cluster.node_id
    )
    try:
        listen_host, listen_port = _split_address(cluster.listen_address)
        own_host, own_port = _split_address(own.address)
    except ValueError:
        return  # reported with its own key
    where = f"this node's address in cluster.initial_cluster[{index}] ({own.address!r})"
    if listen_port != own_port:
        yield (
            "cluster.listen_address",
            f"port {listen_port} differs from {where} (if peers reach it through a proxy "
            "or port mapping, set behind_proxy = true)",
        )
    elif listen_host not in _WILDCARD_HOSTS and listen_host.lower() != own_host.lower():
        if _is_ip(listen_host) and _is_ip(own_host):
            yield (
                "cluster.listen_address",
                f"host {listen_host} differs from {where}; listen on it or on 0.0.0.0 "
                "(or set behind_proxy = true)",
            )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_message_limits(cfg: NodeConfig, max_command_bytes: int, frame_bytes: int) -> None:
    """Raise ConfigError if ``cfg``'s sizes exceed what one transport message carries.

    ``max_command_bytes``: the largest command (and AppendEntries payload) the transport
    carries, its frame limit ``frame_bytes`` less the envelope headroom. Both come from the
    caller because the transport sits above this module. Without this check such limits would
    be accepted, then fail at run time (the first big write refused, or an AppendEntries batch
    or a snapshot chunk (``raft.snapshot.chunk_size``) that can never be sent).
    """
    for key, problem in _fits_in_a_frame(cfg, max_command_bytes, frame_bytes):
        raise ConfigError(cfg.path, key, problem)


def _fits_in_a_frame(
    cfg: NodeConfig, max_command_bytes: int, frame_bytes: int
) -> Iterator[tuple[str, str]]:
    limits = cfg.limits
    largest_put = limits.max_key_bytes + limits.max_value_bytes + PUT_COMMAND_OVERHEAD_BYTES
    if largest_put > max_command_bytes:
        yield (
            "limits.max_value_bytes",
            f"{limits.max_value_bytes} with max_key_bytes {limits.max_key_bytes} makes a "
            f"write of {largest_put} bytes, over the {max_command_bytes} bytes the transport's "
            f"frame limit ({frame_bytes}) leaves for one command; at most "
            f"{max_command_bytes - limits.max_key_bytes - PUT_COMMAND_OVERHEAD_BYTES}",
        )
    largest_txn = limits.max_txn_bytes + limits.max_txn_ops * PUT_COMMAND_OVERHEAD_BYTES
    if largest_txn > max_command_bytes:
        yield (
            "limits.max_txn_bytes",
            f"{limits.max_txn_bytes} with max_txn_ops {limits.max_txn_ops} makes a "
            f"transaction of up to {largest_txn} bytes, over the {max_command_bytes} bytes the "
            f"transport's frame limit ({frame_bytes}) leaves for one command",
        )
    batch = cfg.raft.replication.max_bytes_per_msg
    if batch > max_command_bytes:
        yield (
            "raft.replication.max_bytes_per_msg",
            f"{batch} is over the {max_command_bytes} bytes the transport's frame limit "
            f"({frame_bytes}) leaves for the entries of one message",
        )
    chunk = cfg.raft.snapshot.chunk_size
    if chunk > max_command_bytes:
        yield (
            "raft.snapshot.chunk_size",
            f"{chunk} is over the {max_command_bytes} bytes the transport's frame limit "
            f"({frame_bytes}) leaves for the payload of one snapshot chunk",
        )


def _integers(prefix: str, table: Any) -> Iterator[tuple[str, int]]:
    """Every integer inside ``table`` (an attrs section), as (dotted key as in the file, value)."""
    for field in attrs.fields(type(table)):
        name = "Batch" if isinstance(table, FlushPolicy) else field.name
        key = f"{prefix}.{name}" if prefix else name
        value = getattr(table, field.name)
        if isinstance(value, int) and not isinstance(value, bool):
            yield key, value
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if attrs.has(type(item)):
                    yield from _integers(f"{key}[{i}]", item)
        elif attrs.has(type(value)):
            yield from _integers(key, value)


def _positive(section: str, obj: Any) -> Iterator[tuple[str, str]]:
    """Every integer field of ``obj`` must be > 0 (booleans and strings are not counts)."""
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            yield f"{section}.{field.name}", f"must be positive, got {value}"


# ---------------------------------------------------------------------------------------------
# Structuring: a strict cattrs converter. TOML already has types, so nothing is coerced: a
# quoted "600" where an integer belongs is a mistake worth reporting, not guessing about.


class _Invalid(ValueError):
    """A problem whose message is already written for the operator."""


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string"}
    names |= {list: "array", dict: "table"}
    name = names.get(type(value), type(value).__name__)
    return f"{name} {value!r}" if isinstance(value, (bool, int, float, str)) else name


def _strict(expected: str, check: Callable[[object], bool]) -> Callable[[Any, type], Any]:
    def structure(value: Any, _: type) -> Any:
        if not check(value):
            raise _Invalid(f"expected {expected}, got {_toml_type(value)}")
        return value

    return structure


E = TypeVar("E", bound=Enum)


def _structure_enum(value: Any, cls: type[E]) -> E:
    allowed = [member.value for member in cls]
    if isinstance(value, str):
        for member in cls:
            if member.value == value:
                return member
    choices = ", ".join(f'"{v}"' for v in allowed)
    raise _Invalid(f"must be one of {choices}, got {_toml_type(value)}")


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(
        int, _strict("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
    )
    conv.register_structure_hook(str, _strict("a string", lambda v: isinstance(v, str)))
    conv.register_structure_hook(bool, _strict("a boolean", lambda v: isinstance(v, bool)))
    # Registered per class: the enums derive from str, so the str hook would otherwise win.
    for enum_cls in (ReadPolicy, Durability):
        conv.register_structure_hook(enum_cls, _structure_enum)

    def table_hook(cl: type) -> Callable[[Any, type], Any]:
        inner: Callable[[Any, type], Any] = make_dict_structure_fn(
            cl, conv, _cattrs_forbid_extra_keys=True
        )

        def structure(value: Any, t: type) -> Any:
            if not isinstance(value, dict):
                raise _Invalid(f"expected a table, got {_toml_type(value)}")
            return inner(value, t)

        return structure

    conv.register_structure_hook_factory(attrs.has, table_hook)

    peer_list = list[PeerConfig]
    structure_peers = conv.get_structure_hook(peer_list)

    def peers_hook(value: Any, t: type) -> list[PeerConfig]:
        if not isinstance(value, list):
            raise _Invalid(f"expected an array of tables, got {_toml_type(value)}")
        result: list[PeerConfig] = structure_peers(value, t)
        return result

    conv.register_structure_hook_func(lambda t: t == peer_list, peers_hook)

    def flush_policy_hook(value: Any, _: type) -> FlushPolicy:
        if not isinstance(value, dict) or len(value) != 1:
            raise _Invalid(
                "expected one policy kind, e.g. { Batch = { threshold = 100, interval_ms = 20 } }"
            )
        ((kind, body),) = value.items()
        if kind != "Batch":
            raise _Invalid(f"unknown flush policy kind {kind!r}; supported: Batch")
        try:
            return FlushPolicy(batch=conv.structure(body, Batch))
        except Exception as exc:
            # Re-wrap so the error path reads flush_policy.Batch.<key>, as written in the file.
            note = cattrs.AttributeValidationNote("structuring Batch", "Batch", Batch)
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
            raise ClassValidationError(
                "while structuring FlushPolicy", [exc], FlushPolicy
            ) from None

    conv.register_structure_hook(FlushPolicy, flush_policy_hook)
    return conv


_converter = _make_converter()


def _flatten(exc: BaseException, path: str) -> Iterator[tuple[str, str]]:
    """Walk cattrs' exception groups (as ``cattrs.transform_error`` does) to (key, problem)."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, cattrs.AttributeValidationNote):
                sub_path = f"{path}.{note.name}" if path else note.name
            else:
                sub_path = f"{path}[{note.index!r}]"
            yield from _flatten(sub, sub_path)
        for sub in without:
            yield from _flatten(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for extra in sorted(exc.extra_fields):
            yield (f"{path}.{extra}" if path else extra), "unknown key"
    elif isinstance(exc, KeyError):
        yield path, "required key is missing"
    elif isinstance(exc, _Invalid):
        yield path, str(exc)
    else:
        yield path, f"invalid value ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------------------------
# Public entry points.


def resolve_config_path(arg: str | Path) -> Path:
    """The file ``arg`` names: as given if it is a file, else with ``.toml`` appended.

    So ``--config-path config/n1`` and ``--config-path config/n1.toml`` both work. Raises
    ConfigError if neither exists.
    """
    given = Path(arg)
    if given.is_file():
        return given
    with_suffix = Path(f"{arg}.toml")
    if with_suffix.is_file():
        return with_suffix
    raise ConfigError(arg, None, f"cannot read: no such file (also tried {with_suffix})")


def render_toml(cfg: NodeConfig) -> str:
    """The text of a node file that :func:`load_config` reads back as ``cfg``.

    Every key is written, defaults included: ``load_config`` of the text, saved as a file at
    path P, equals ``attrs.evolve(cfg, path=P)``. Sections follow the schema's order
    (``[cluster]``, ``[raft.*]``, ``[limits]``, ``[http]``); ``initial_cluster`` is an array
    of inline tables and ``flush_policy`` the one-key inline table ``{ Batch = {...} }``, as
    in ``docs/configuration.md``. Raises nothing: ``cfg`` was validated when it was built.
    """
    lines: list[str] = []
    for field in attrs.fields(NodeConfig):
        if field.name != "path":
            _render_table(lines, field.name, getattr(cfg, field.name))
    return "\n".join(lines) + "\n"


def _render_table(lines: list[str], name: str, table: Any) -> None:
    """``[name]`` with the table's scalar keys, then each sub-table as ``[name.key]``."""
    values = [f.name for f in attrs.fields(type(table))]
    sections = [key for key in values if _is_section(getattr(table, key))]
    scalars = [key for key in values if key not in sections]
    if scalars:
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(getattr(table, key))}" for key in scalars)
    for key in sections:
        _render_table(lines, f"{name}.{key}", getattr(table, key))


def _is_section(value: object) -> bool:
    # FlushPolicy is written inline; a one-key table naming the policy kind reads better so.
    return attrs.has(type(value)) and not isinstance(value, FlushPolicy)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return _toml_value(value.value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, FlushPolicy):
        return f"{{ Batch = {_inline_table(value.batch)} }}"
    if isinstance(value, list):
        return "[\n" + "".join(f"    {_toml_value(item)},\n" for item in value) + "]"
    if attrs.has(type(value)):
        return _inline_table(value)
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _inline_table(value: Any) -> str:
    items = ", ".join(
        f"{f.name} = {_toml_value(getattr(value, f.name))}" for f in attrs.fields(type(value))
    )
    return f"{{ {items} }}"


def _toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char < " " or char == "\x7f":
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def load_config(path: str | Path) -> NodeConfig:
    """Read, structure and validate one node's TOML file (``.toml`` may be left off).

    Raises :class:`ConfigError` (one line: file, dotted key, problem) for a missing or
    unreadable file, invalid TOML, an unknown key, a value of the wrong type (nothing is
    coerced) or an invalid value. Does not check the sizes against the transport's frame
    limit: :func:`check_message_limits` does (the node process runs both).
    """
    resolved = resolve_config_path(path)
    try:
        data = tomllib.loads(resolved.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(resolved, None, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(resolved, None, f"cannot read: not UTF-8 ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(resolved, None, f"invalid TOML: {exc}") from exc
    try:
        schema = _converter.structure(data, _FileSchema)
    except Exception as exc:
        key, problem = next(_flatten(exc, ""), ("", str(exc)))
        raise ConfigError(resolved, key or None, problem) from exc
    return NodeConfig(
        path=resolved,
        cluster=schema.cluster,
        raft=schema.raft,
        limits=schema.limits,
        tls=schema.tls,
        http=schema.http,
        auth=schema.auth,
        watch=schema.watch,
        kv=schema.kv,
    )
