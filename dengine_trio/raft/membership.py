"""Cluster membership: who the members are, which of them vote, and one change at a time.

A ``Membership`` is the whole configuration: every member with its Raft address, whether it
votes, and the data-directory uuid it is bound to. It travels in the log as the data of an
``EntryKind.CONFIG`` entry and in snapshots (``encode_membership``), and takes effect on a
node as soon as the entry is appended to its log, committed or not (Ongaro's thesis §4.1);
a truncated configuration entry takes its membership back with it.

Changes are single-server changes (thesis §4.1): each ``ConfChange`` adds one learner,
promotes one learner, removes one member or (re)binds members' uuids, so the majorities of
the configurations before and after any change always overlap. ``docs/architecture.md``
("Membership changes") explains the choice and the rules ``node.py`` enforces around it.

The membership a node starts with when nothing in its log or snapshot names one is the
*implicit* one: every id of ``RaftConfig.voters`` a voter, no cluster id, nobody bound. The
first leader of a cluster that has a cluster id replaces it with an explicit one (the
bootstrap entry); a node with a wiped data directory restarts with it.
"""

from __future__ import annotations

import ipaddress
from enum import IntEnum
from typing import Any

import attrs
import msgpack

__all__ = [
    "ConfChange",
    "ConfChangeError",
    "ConfChangeKind",
    "Member",
    "Membership",
    "address_key",
    "canonical_address",
    "decode_membership",
    "encode_membership",
    "implicit_membership",
]

FORMAT_VERSION = 1
"""Version of ``encode_membership``'s layout; ``decode_membership`` refuses any other."""


@attrs.frozen(slots=True)
class Member:
    """One member. ``address``: "host:port" of its Raft port (opaque to the core, carried
    for the runtime; "" in the implicit membership); ``voter``: counts in quorums and may be
    elected, else a learner (receives the log and snapshots, never votes for itself or counts);
    ``uuid``: the data-directory uuid the member is bound to ("" = not bound yet: an unbound
    voter neither votes nor campaigns, see ``node.py``); ``promote``: a learner that the
    leader promotes once caught up (a joining node; False for a read replica and for voters).
    """

    id: int
    address: str
    voter: bool
    uuid: str = ""
    promote: bool = False


class ConfChangeKind(IntEnum):
    """What one ``ConfChange`` does (thesis §4.1: one server at a time)."""

    ADD_LEARNER = 1
    PROMOTE = 2
    REMOVE = 3
    BIND = 4


@attrs.frozen(slots=True)
class ConfChange:
    """One membership change. ADD_LEARNER: a new member ``id`` at ``address``, a learner,
    ``promote`` as ``Member.promote`` (``uuids`` may bind it at once); PROMOTE: learner ``id``
    becomes a voter; REMOVE: member ``id`` leaves; BIND: every ``(id, uuid)`` of ``uuids``
    becomes bound to that uuid (``id`` is ignored); a voter bound (or unbound) to another
    uuid is another server on a new disk: BIND makes it a learner to be promoted once caught
    up (``promote``), so at most one voter per BIND."""

    kind: ConfChangeKind
    id: int = 0
    address: str = ""
    promote: bool = False
    uuids: tuple[tuple[int, str], ...] = ()


class ConfChangeError(Exception):
    """A change that cannot apply to a membership. ``code`` is one of ``unknown_member``,
    ``duplicate_id``, ``duplicate_address``, ``last_voter``, ``not_learner``,
    ``bad_request`` (and, raised by the leader rather than here, ``not_leader``, ``pending``,
    ``behind``, ``quorum_at_risk``); ``detail`` holds extra facts for the client (e.g.
    ``{"lag": 1200}``)."""

    def __init__(self, code: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail: dict[str, Any] = detail


@attrs.frozen(slots=True)
class Membership:
    """The full configuration: ``cluster_id`` ("" only in the implicit membership) and
    ``members``, sorted by id, ids unique (``ValueError`` otherwise)."""

    cluster_id: str
    members: tuple[Member, ...]

    def __attrs_post_init__(self) -> None:
        ids = [m.id for m in self.members]
        if ids != sorted(set(ids)):
            raise ValueError(f"members must be sorted by id and unique: {ids}")

    @property
    def implicit(self) -> bool:
        """The bootstrap membership built from ``RaftConfig.voters`` (no cluster id)."""
        return self.cluster_id == ""

    @property
    def voters(self) -> tuple[int, ...]:
        """Ids of the voting members, ascending."""
        return tuple(m.id for m in self.members if m.voter)

    @property
    def learners(self) -> tuple[int, ...]:
        """Ids of the learners, ascending."""
        return tuple(m.id for m in self.members if not m.voter)

    @property
    def ids(self) -> tuple[int, ...]:
        """Every member's id, ascending."""
        return tuple(m.id for m in self.members)

    def get(self, member_id: int) -> Member | None:
        """The member with that id, or None."""
        for m in self.members:
            if m.id == member_id:
                return m
        return None

    def is_voter(self, member_id: int) -> bool:
        """Is ``member_id`` a voting member?"""
        m = self.get(member_id)
        return m is not None and m.voter

    def with_change(self, change: ConfChange) -> Membership:
        """The membership after ``change`` (thesis §4.1: one server at a time). Raises
        ``ConfChangeError``: ``bad_request`` (a non-positive id, an empty address or uuid, an
        implicit membership), ``duplicate_id``/``duplicate_address`` (ADD_LEARNER),
        ``unknown_member``, ``not_learner`` (PROMOTE of a voter), ``last_voter`` (REMOVE of
        the only voter)."""
        if self.implicit:
            raise ConfChangeError(
                "bad_request", "the membership is implicit (no cluster id yet): nothing to change"
            )
        try:
            kind = ConfChangeKind(change.kind)
        except ValueError:
            raise ConfChangeError("bad_request", f"unknown change kind {change.kind!r}") from None
        if kind is ConfChangeKind.BIND:
            return self._bind(change.uuids)
        if change.id <= 0:
            raise ConfChangeError("bad_request", f"member id must be positive, not {change.id}")
        member = self.get(change.id)
        if kind is ConfChangeKind.ADD_LEARNER:
            if member is not None:
                raise ConfChangeError("duplicate_id", f"node {change.id} is already a member")
            if not change.address:
                raise ConfChangeError("bad_request", "a new member needs an address")
            key = address_key(change.address)
            for m in self.members:
                if m.address and address_key(m.address) == key:
                    raise ConfChangeError(
                        "duplicate_address",
                        f"address {change.address} is already node {m.id}'s",
                        id=m.id,
                    )
            uuid = dict(change.uuids).get(change.id, "")
            new = Member(change.id, change.address, False, uuid, change.promote)
            return self._replace(sorted((*self.members, new), key=lambda m: m.id))
        if member is None:
            raise ConfChangeError("unknown_member", f"node {change.id} is not a member")
        if kind is ConfChangeKind.PROMOTE:
            if member.voter:
                raise ConfChangeError("not_learner", f"node {change.id} is already a voter")
            promoted = attrs.evolve(member, voter=True, promote=False)
            return self._replace([promoted if m.id == member.id else m for m in self.members])
        if kind is ConfChangeKind.REMOVE:
            if self.voters == (member.id,):
                raise ConfChangeError(
                    "last_voter", f"node {change.id} is the last voter: the cluster needs one"
                )
            return self._replace([m for m in self.members if m.id != member.id])
        raise AssertionError(f"unhandled change kind {kind!r}")  # pragma: no cover

    def _bind(self, uuids: tuple[tuple[int, str], ...]) -> Membership:
        if not uuids:
            raise ConfChangeError("bad_request", "BIND names no member")
        binding = dict(uuids)
        rebound_voters = []
        for member_id, uuid in uuids:
            member = self.get(member_id)
            if member is None:
                raise ConfChangeError("unknown_member", f"node {member_id} is not a member")
            if not uuid or not isinstance(uuid, str):
                raise ConfChangeError("bad_request", f"node {member_id}: empty uuid")
            if member.voter and member.uuid != uuid:
                rebound_voters.append(member_id)
        if len(rebound_voters) > 1:
            raise ConfChangeError(
                "bad_request", f"BIND rebinds voters {rebound_voters}: one voter at a time"
            )
        if rebound_voters and self.voters == tuple(rebound_voters):
            raise ConfChangeError(
                "last_voter", f"node {rebound_voters[0]} is the last voter: it cannot be rebound"
            )
        members = []
        for m in self.members:
            if m.id not in binding or m.uuid == binding[m.id]:
                members.append(m)
            elif m.voter:
                # A voter on another data directory is another server (its old disk's votes
                # and acknowledgements are forgotten): it comes back as a learner, promoted
                # once caught up. One server out, later one in (thesis §4.1), never a swap.
                members.append(attrs.evolve(m, voter=False, uuid=binding[m.id], promote=True))
            else:
                members.append(attrs.evolve(m, uuid=binding[m.id]))
        return self._replace(members)

    def _replace(self, members: list[Member]) -> Membership:
        return Membership(self.cluster_id, tuple(members))


def _split(address: str) -> tuple[str, int, bool] | None:
    """``host:port`` -> ``(host, port, bracketed)``, brackets stripped; None if it is not."""
    host, sep, port_text = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        return None
    try:
        return host, int(port_text), bracketed
    except ValueError:  # a character isdigit() takes and int() does not (superscripts)
        return None


def canonical_address(address: str) -> str:
    """The one spelling of a ``host:port`` address that names its endpoint, as stored in a
    membership and dialed: the port as a decimal number (``09084`` is ``9084``), an IPv6
    host compressed in lower case and in brackets (``::1:9084``, ``[0:0:0:0:0:0:0:1]:9084``
    are ``[::1]:9084``), an IPv4 host as ``ipaddress`` writes it, a host name in lower case
    (RFC 4343: DNS names are case-insensitive) and in the ``xn--`` form the resolver is sent
    (IDNA). A final dot is kept (``db4.`` is not looked up under search domains). Anything
    that is not ``host:port`` is returned as written: the core carries addresses opaquely, and
    the runtime, config and HTTP layer refuse malformed ones before they get here."""
    split = _split(address)
    if split is None:
        return address
    host, port, bracketed = split
    if bracketed or ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host).compressed}]:{port}"
        except ValueError:
            return address
    try:
        return f"{ipaddress.IPv4Address(host)}:{port}"
    except ValueError:
        pass
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return f"{host.lower()}:{port}"


def address_key(address: str) -> str:
    """What two addresses of one endpoint have in common, for the duplicate check: the
    canonical address (see ``canonical_address``) without a host name's final dot (a fully
    qualified ``db4.example.com.`` and ``db4.example.com`` are one host to the resolver) and
    with an IPv4-mapped IPv6 host (``[::ffff:10.0.0.4]``) as its IPv4 address (a dual-stack
    socket dialing it reaches the IPv4 listener). Host names that resolve to one address are
    not compared (that would need the resolver, whose answer changes)."""
    canonical = canonical_address(address)
    split = _split(canonical)
    if split is None:
        return canonical
    host, port, bracketed = split
    if bracketed:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        return f"{mapped}:{port}" if mapped is not None else canonical
    if host.endswith(".") and not host[:-1].rpartition(".")[2].isdigit():
        return f"{host[:-1]}:{port}"
    return canonical


def implicit_membership(
    voters: tuple[int, ...], addresses: dict[int, str] | None = None
) -> Membership:
    """The bootstrap membership: every id of ``voters`` a voter, no cluster id, nobody bound;
    ``addresses`` (id -> "host:port") if the caller knows them, else ""."""
    addresses = addresses or {}
    return Membership("", tuple(Member(v, addresses.get(v, ""), True) for v in sorted(set(voters))))


def encode_membership(m: Membership) -> bytes:
    """msgpack ``[version, cluster_id, [[id, address, voter, uuid, promote], ...]]``: the
    data of a CONFIG entry, the ``InstallSnapshot.membership`` field and the snapshot file's
    header field."""
    rows = [[x.id, x.address, x.voter, x.uuid, x.promote] for x in m.members]
    return bytes(msgpack.packb([FORMAT_VERSION, m.cluster_id, rows], use_bin_type=True))


def decode_membership(data: bytes) -> Membership:
    """Inverse of ``encode_membership``. Raises ``ValueError`` on anything malformed (not
    msgpack, another version, wrong types, ids unsorted, repeated or not positive)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise ValueError(f"membership is not msgpack: {e}") from None
    if not (isinstance(obj, list) and len(obj) == 3):
        raise ValueError("membership must be [version, cluster_id, members]")
    version, cluster_id, rows = obj
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(f"membership format version {version!r} is not {FORMAT_VERSION}")
    if not isinstance(cluster_id, str) or not isinstance(rows, list):
        raise ValueError("membership cluster_id must be a string and members a list")
    members = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 5):
            raise ValueError(f"member row {row!r} is not [id, address, voter, uuid, promote]")
        member_id, address, voter, uuid, promote = row
        if type(member_id) is not int or member_id <= 0:
            raise ValueError(f"member id {member_id!r} is not a positive integer")
        if not (isinstance(address, str) and isinstance(uuid, str)):
            raise ValueError(f"member {member_id}: address and uuid must be strings")
        if not (isinstance(voter, bool) and isinstance(promote, bool)):
            raise ValueError(f"member {member_id}: voter and promote must be booleans")
        members.append(Member(member_id, address, voter, uuid, promote))
    return Membership(cluster_id, tuple(members))  # ValueError if unsorted or repeated
