"""Raft scenario transcripts: a text file of commands, each followed by the output it produced.

In the style of etcd raft's interaction tests (``datadriven``): the runner drives ``RaftNode``
cores directly, with explicit message delivery, so a transcript reads as the exact exchange of
messages, role changes, commits and read results that a schedule produces. A transcript is a
sequence of blocks::

    # comment lines and blank lines between blocks are kept as they are
    <command> <args...>
    ----
    <expected output, one line per event or effect>

The expected output of a block ends at the first blank line. ``run_transcript`` replays the
commands and returns the file as it should be; the test compares it with the file on disk, and
with ``DENGINE_REWRITE=1`` writes it back instead (then review the diff). The commands, their
arguments and the output format are documented in ``docs/testing.md`` ("Scenario transcripts").

The model, kept simple on purpose:

- Each node has its own clock (ms). Time moves only through ``run`` (every node, messages
  delivered as they are sent), ``advance`` (every node, or the ones named, messages left queued)
  and ``campaign`` (the campaigning node's clock alone jumps to its election deadline).
  Election timeouts are not random: node ``i`` draws ``min + (max - min) * ((i - 1) % 10) / 10``
  (600, 630, 660 ms ... with the default range) unless ``timeout`` fixes them.
- The network is a FIFO queue of messages. Nothing is delivered until ``deliver`` or
  ``stabilize`` says so; ``drop`` discards, ``hold`` sets aside until ``release``. A message sent
  over a cut link (``partition``, ``cut``) or to a node that is down is lost.
- The disk: hard state is durable at once (the runtime awaits it). Entry writes complete at once
  with ``disk=sync`` (the default; the ``Persisted`` event follows the step that asked), or wait
  for ``persist`` (or ``stabilize``) with ``disk=manual``. ``crash`` loses unfinished writes.
- The state machine is a dictionary: a command ``k=v`` sets ``k``. Reads print the value.
- Snapshots (``snapshot``) copy that dictionary as of the applied index; they are durable at
  once, and the disk log drops what the core compacts. An InstallSnapshot carries the image of
  the snapshot it names out of band, as the runtime streams the file; the follower's
  ``RestoreSnapshot`` replaces its dictionary, its disk log and its pending writes with it.
  The leader hears how the transfer went only from ``report-snapshot``.

Safety is checked as the transcript runs: at most one leader per term, no two nodes apply
different entries at one index, and no read misses a write applied anywhere before it began.
A violation raises ``TranscriptError`` even in rewrite mode, so a transcript can never bless a
broken run.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import attrs

from dengine_trio.raft import (
    Apply,
    ConfChangeRejected,
    Durability,
    Effect,
    Entry,
    EntryKind,
    Event,
    MembershipChanged,
    Message,
    Persisted,
    PersistEntries,
    PersistHardState,
    ProposalRejected,
    Propose,
    Proposed,
    RaftConfig,
    RaftNode,
    ReadFailed,
    ReadReady,
    ReadRequest,
    Receive,
    RestoreSnapshot,
    Role,
    RoleChanged,
    Send,
    SnapshotStatus,
    SnapshotTaken,
    Tick,
    TransferLeader,
)
from dengine_trio.raft.events import PeerIdentity, ProposeConfChange
from dengine_trio.raft.membership import (
    ConfChange,
    ConfChangeKind,
    Membership,
    decode_membership,
)
from dengine_trio.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)

REWRITE_ENV = "DENGINE_REWRITE"
SCENARIOS_ENV = "DENGINE_SCENARIOS_DIR"
SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"

MAX_DELIVERIES = 10_000  # per stabilize: a transcript that never settles is a bug, not a hang
MAX_TICKS = 10_000  # per advance


# The key=value options each command takes; ``start`` takes any RaftConfig field.
_FILTER = {"from", "to", "type"}
OPTIONS: dict[str, set[str]] = {
    "load": {"terms", "term", "vote"},
    "timeout": {"ms"},
    "read": {"lease"},
    "transfer-leader": {"to"},
    "snapshot": {"through"},
    "deliver": _FILTER | {"count"},
    "drop": _FILTER,
    "hold": _FILTER,
    "release": _FILTER,
    "duplicate": _FILTER,
    "change": {"promote", "address", "uuid"},
    "add-node": set(),
    "wipe": set(),
}
# Commands whose positional arguments may contain "=" (proposal data: ``propose 1 k=v``).
POSITIONAL_EQUALS = {"propose", "change"}


class TranscriptError(Exception):
    """A command could not run (bad syntax, unknown node) or a safety check failed."""


def _unreachable(value: NoReturn) -> NoReturn:
    # mypy reports a call here when a new Effect or Message type is not handled above it.
    raise AssertionError(f"unhandled {value!r}")


# ---------------------------------------------------------------------------------- formatting


def fmt_data(data: bytes) -> str:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return "0x" + data.hex()
    return '"' + text + '"' if text.isprintable() else "0x" + data.hex()


def fmt_membership(m: Membership) -> str:
    """``c1: 1=v/u1 2=v 3=l+``: the cluster id ("implicit" if none), then each member as
    voter (``v``) or learner (``l``, ``+`` if to be promoted), and ``/uuid`` if bound."""
    members = " ".join(
        f"{x.id}={'v' if x.voter else 'l'}{'+' if x.promote else ''}"
        + (f"/{x.uuid}" if x.uuid else "")
        for x in m.members
    )
    return f"{m.cluster_id or 'implicit'}: {members or '(none)'}"


def fmt_entry(e: Entry) -> str:
    """``term/index`` and the payload: ``2/5 "k=v"``, ``2/4 noop`` or ``2/6 conf{c1: ...}``."""
    if e.kind is EntryKind.NOOP:
        return f"{e.term}/{e.index} noop"
    if e.kind is EntryKind.CONFIG:
        try:
            return f"{e.term}/{e.index} conf{{{fmt_membership(decode_membership(e.data))}}}"
        except ValueError:
            return f"{e.term}/{e.index} conf(undecodable {fmt_data(e.data)})"
    return f"{e.term}/{e.index} " + fmt_data(e.data)


def fmt_entries(entries: Sequence[Entry]) -> str:
    return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"


def fmt_time(ms: float) -> str:
    return f"{ms:g}"


def fmt_message(m: Message) -> str:
    """One line per message: ``src->dst MsgType term=T`` and the fields that type carries."""
    head = f"{m.src}->{m.dst}"
    if isinstance(m, RequestVote):
        kind = "MsgPreVote" if m.pre_vote else "MsgVote"
        extra = " transfer" if m.transfer else ""
        return f"{head} {kind} term={m.term} last={m.last_log_term}/{m.last_log_index}{extra}"
    if isinstance(m, RequestVoteResponse):
        kind = "MsgPreVoteResp" if m.pre_vote else "MsgVoteResp"
        return f"{head} {kind} term={m.term} {'granted' if m.granted else 'rejected'}"
    if isinstance(m, AppendEntries):
        return (
            f"{head} MsgApp term={m.term} prev={m.prev_log_term}/{m.prev_log_index}"
            f" commit={m.leader_commit} entries={fmt_entries(m.entries)}"
        )
    if isinstance(m, AppendEntriesResponse):
        if m.success:
            return f"{head} MsgAppResp term={m.term} match={m.match_index}"
        if m.reject_index == 0 and m.conflict_index == 0:
            return f"{head} MsgAppResp term={m.term} rejected (stale term)"
        return (
            f"{head} MsgAppResp term={m.term} rejected prev={m.reject_index}"
            f" hint={m.conflict_term}/{m.conflict_index}"
        )
    if isinstance(m, Heartbeat):
        # The commit index comes with the term of the leader's entry there: a position.
        return f"{head} MsgHeartbeat term={m.term} commit={m.commit_term}/{m.commit} seq={m.seq}"
    if isinstance(m, HeartbeatResponse):
        return f"{head} MsgHeartbeatResp term={m.term} seq={m.seq} last={m.last_index}"
    if isinstance(m, TimeoutNow):
        return f"{head} MsgTimeoutNow term={m.term}"
    if isinstance(m, ReadIndex):
        lease = " lease" if m.lease else ""
        return f"{head} MsgReadIndex term={m.term} req=#{m.request_id}{lease}"
    if isinstance(m, ReadIndexResponse):
        outcome = f"index={m.read_index}" if m.ok else "failed"
        return f"{head} MsgReadIndexResp term={m.term} req=#{m.request_id} {outcome}"
    if isinstance(m, InstallSnapshot):
        conf = ""
        if m.membership:
            try:
                conf = f" conf{{{fmt_membership(decode_membership(m.membership))}}}"
            except ValueError:
                conf = " conf(undecodable)"
        return f"{head} MsgSnap term={m.term} snapshot={m.last_term}/{m.last_index}{conf}"
    _unreachable(m)


def message_type(m: Message) -> str:
    return fmt_message(m).split()[1]


# ---------------------------------------------------------------------------------- the model


class Timeouts:
    """The node's ``RandomSource``: fixed, readable election timeouts instead of random ones."""

    def __init__(self, node_id: int) -> None:
        self.fraction = ((node_id - 1) % 10) / 10
        self.fixed: float | None = None

    def uniform(self, a: float, b: float) -> float:
        if self.fixed is not None:
            return self.fixed
        return a + (b - a) * self.fraction


@dataclass(frozen=True)
class Image:
    """A durable snapshot: the state machine as of applied entry (``index``, ``term``), and
    the membership in effect there (None: implicit), as a snapshot file's header has it."""

    index: int
    term: int
    state: tuple[tuple[str, str], ...]
    membership: Membership | None = None


@dataclass
class Node:
    id: int
    config: RaftConfig
    timeouts: Timeouts
    clock: float = 0.0
    raft: RaftNode | None = None
    hard_state: tuple[int, int] = (0, 0)  # durable (term, voted_for)
    disk: list[Entry] = field(default_factory=list)  # durable log (after the snapshot, if any)
    snapshot: Image | None = None  # the newest durable snapshot
    pending_writes: list[tuple[Entry, ...]] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    applied: int = 0
    waiting_reads: list[tuple[int, int]] = field(default_factory=list)  # (read_index, request)
    uuid: str = ""  # data-directory uuid ("" unless the transcript runs with cluster=)
    incarnation: int = 0  # data directories this node has had (wipe makes a new one)
    joiner: bool = False  # started by add-node: no member until a change adds it


@dataclass
class Filter:
    src: set[int] | None = None
    dst: set[int] | None = None
    types: set[str] | None = None

    def __call__(self, m: Message) -> bool:
        return (
            (self.src is None or m.src in self.src)
            and (self.dst is None or m.dst in self.dst)
            and (self.types is None or message_type(m) in self.types)
        )


def _ints(text: str) -> set[int]:
    return {int(x) for x in text.strip("()").replace(",", " ").split()}


def _bool(text: str) -> bool:
    if text.lower() in ("true", "on", "yes", "1"):
        return True
    if text.lower() in ("false", "off", "no", "0"):
        return False
    raise TranscriptError(f"not a boolean: {text!r}")


class Interaction:
    """The nodes, network and disks of one transcript, and its commands."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.queue: list[Message] = []
        self.held: list[Message] = []
        self.cut: set[tuple[int, int]] = set()
        self.manual_disk = False
        self.quiet = False
        self.out: list[str] = []
        self.next_request = 0
        self.read_keys: dict[int, str] = {}
        # request -> highest index applied anywhere when the read was invoked: every write up
        # to it completed before the read began, so the read must see it (linearizability).
        self.read_floor: dict[int, int] = {}
        self.leaders: dict[int, int] = {}  # term -> leader, for election safety
        self.applied_log: dict[int, Entry] = {}  # index -> entry applied somewhere
        # (index, term) -> the snapshot image taken there: what an InstallSnapshot carries.
        self.images: dict[tuple[int, int], Image] = {}
        self.cluster_id = ""  # start cluster=<id>: the bootstrap cluster id; "" stays implicit
        self.voters: tuple[int, ...] = ()
        self.overrides: dict[str, object] = {}
        self.commands: dict[str, Callable[[list[str], dict[str, str]], None]] = {
            "start": self.cmd_start,
            "output": self.cmd_output,
            "load": self.cmd_load,
            "timeout": self.cmd_timeout,
            "advance": self.cmd_advance,
            "run": self.cmd_run,
            "campaign": self.cmd_campaign,
            "propose": self.cmd_propose,
            "read": self.cmd_read,
            "transfer-leader": self.cmd_transfer,
            "snapshot": self.cmd_snapshot,
            "report-snapshot": self.cmd_report_snapshot,
            "deliver": self.cmd_deliver,
            "drop": self.cmd_drop,
            "hold": self.cmd_hold,
            "release": self.cmd_release,
            "duplicate": self.cmd_duplicate,
            "msgs": self.cmd_msgs,
            "persist": self.cmd_persist,
            "stabilize": self.cmd_stabilize,
            "partition": self.cmd_partition,
            "cut": self.cmd_cut,
            "heal": self.cmd_heal,
            "crash": self.cmd_crash,
            "restart": self.cmd_restart,
            "status": self.cmd_status,
            "log": self.cmd_log,
            "raft-state": self.cmd_raft_state,
            "kv": self.cmd_kv,
            "change": self.cmd_change,
            "add-node": self.cmd_add_node,
            "wipe": self.cmd_wipe,
            "membership": self.cmd_membership,
        }

    # ------------------------------------------------------------------ running commands

    def run(self, line: str) -> list[str]:
        """Run one command line; return its output lines (``ok`` when there is nothing)."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise TranscriptError(f"cannot parse {line!r}: {e}") from None
        name, rest = words[0], words[1:]
        command = self.commands.get(name)
        if command is None:
            raise TranscriptError(f"unknown command {name!r} (known: {', '.join(self.commands)})")
        if name != "start" and not self.nodes:
            raise TranscriptError("the first command must be start")
        allowed = OPTIONS.get(name, set())
        args: list[str] = []
        opts: dict[str, str] = {}
        for word in rest:
            key, sep, value = word.partition("=")
            if sep and (name == "start" or key in allowed):
                opts[key] = value
            elif sep and name not in POSITIONAL_EQUALS:
                raise TranscriptError(f"{name} takes no option {key!r}")
            else:
                args.append(word)
        self.out = []
        command(args, opts)
        return self.out or ["ok"]

    def emit(self, line: str, indent: int = 0) -> None:
        """An event or effect line: left out while ``output off``."""
        if not self.quiet:
            self.out.append("  " * indent + line)

    def show(self, line: str, indent: int = 0) -> None:
        """An inspection line (status, log, ...): printed even while ``output off``."""
        self.out.append("  " * indent + line)

    def node(self, text: str) -> Node:
        try:
            node = self.nodes[int(text)]
        except (ValueError, KeyError):
            raise TranscriptError(f"no node {text!r}") from None
        return node

    def live(self, text: str) -> tuple[Node, RaftNode]:
        node = self.node(text)
        if node.raft is None:
            raise TranscriptError(f"node {node.id} is down")
        return node, node.raft

    def selected(self, args: list[str]) -> list[Node]:
        return [self.node(a) for a in args] if args else list(self.nodes.values())

    def filter(self, opts: dict[str, str]) -> Filter:
        return Filter(
            src=_ints(opts["from"]) if "from" in opts else None,
            dst=_ints(opts["to"]) if "to" in opts else None,
            types=set(opts["type"].split(",")) if "type" in opts else None,
        )

    # ------------------------------------------------------------------ stepping

    def step(self, node: Node, event: Event, header: str) -> None:
        """Step ``node`` with ``event`` at its clock, print ``header`` and the effects, carry
        them out, and let the disk finish (``disk=sync``)."""
        assert node.raft is not None
        self.emit("> " + header)
        effects = node.raft.step(node.clock, event)
        wrote = False
        for effect in effects:
            wrote |= isinstance(effect, PersistEntries)
            self.carry_out(node, effect)
        if wrote and not self.manual_disk and node.raft is not None:
            self.finish_writes(node, indent=1)

    def carry_out(self, node: Node, effect: Effect) -> None:
        if isinstance(effect, Send):
            self.send(effect.message)
        elif isinstance(effect, PersistHardState):
            node.hard_state = (effect.term, effect.voted_for)
            vote = effect.voted_for or "none"
            self.emit(f"hardstate term={effect.term} vote={vote}", 1)
        elif isinstance(effect, PersistEntries):
            node.pending_writes.append(effect.entries)
            self.emit(f"append {fmt_entries(effect.entries)}", 1)
        elif isinstance(effect, Apply):
            self.apply(node, effect.entries)
        elif isinstance(effect, ReadReady):
            self.emit(f"read-ready #{effect.request_id} index={effect.read_index}", 1)
            node.waiting_reads.append((effect.read_index, effect.request_id))
            self.serve_reads(node)
        elif isinstance(effect, ReadFailed):
            leader = effect.leader_id or "unknown"
            self.emit(f"read-failed #{effect.request_id} leader={leader}", 1)
        elif isinstance(effect, Proposed):
            self.emit(f"proposed #{effect.request_id} as {effect.term}/{effect.index}", 1)
        elif isinstance(effect, ProposalRejected):
            leader = effect.leader_id or "unknown"
            self.emit(f"proposal-rejected #{effect.request_id} leader={leader}", 1)
        elif isinstance(effect, RoleChanged):
            self.emit(f"role {effect.role.value} term={effect.term} leader={effect.leader_id}", 1)
            if effect.role is Role.LEADER:
                other = self.leaders.setdefault(effect.term, node.id)
                if other != node.id:
                    raise TranscriptError(
                        f"election safety: {other} and {node.id} both lead term {effect.term}"
                    )
        elif isinstance(effect, RestoreSnapshot):
            self.restore(node, effect)
        elif isinstance(effect, MembershipChanged):
            self.emit(f"membership @{effect.index} {fmt_membership(effect.membership)}", 1)
        elif isinstance(effect, ConfChangeRejected):
            leader = effect.leader_id or "unknown"
            detail = "".join(f" {k}={v}" for k, v in sorted(effect.detail.items()))
            self.emit(
                f"conf-change-rejected #{effect.request_id} {effect.code}"
                f" leader={leader}{detail}: {effect.message}",
                1,
            )
        else:
            _unreachable(effect)

    def restore(self, node: Node, effect: RestoreSnapshot) -> None:
        """What the runtime does for ``RestoreSnapshot`` before anything else: the staged
        image becomes the node's snapshot, its log is reset after it (pending writes too),
        and the state machine is the image's."""
        image = self.images.get((effect.index, effect.term))
        if image is None:
            raise TranscriptError(f"node {node.id}: no snapshot was taken at {effect!r}")
        node.snapshot = image
        node.disk = []
        node.pending_writes = []
        node.state = dict(image.state)
        node.applied = image.index
        adopted = ""
        if effect.membership:
            adopted = f" conf{{{fmt_membership(decode_membership(effect.membership))}}}"
        self.emit(f"restore snapshot {image.term}/{image.index}{adopted}", 1)
        self.serve_reads(node)

    def check_vote(self, m: Message) -> None:
        """The amnesia rule: a node never grants a vote while its explicit membership (or one
        its log may fall back to) does not bind it to its own data directory."""
        if not (isinstance(m, RequestVoteResponse) and m.granted):
            return
        raft = self.nodes[m.src].raft
        assert raft is not None
        if raft.membership.implicit:
            return
        # Bound in the membership in effect, or in one a truncation could still bring back
        # (a removal of this node not committed yet).
        for ms in raft._fallback_memberships():
            me = ms.get(m.src)
            if me is not None and (ms.implicit or me.uuid == raft.uuid):
                return
        raise TranscriptError(f"node {m.src} granted a vote while unbound or no member")

    def send(self, m: Message) -> None:
        self.check_vote(m)
        line = fmt_message(m)
        if (m.src, m.dst) in self.cut:
            self.emit(line + "  (lost: link cut)", 1)
        else:
            self.emit(line, 1)
            self.queue.append(m)

    def apply(self, node: Node, entries: Iterable[Entry]) -> None:
        entries = list(entries)
        for e in entries:
            if e.index != node.applied + 1:
                raise TranscriptError(f"node {node.id} applied {e.index} after {node.applied}")
            seen = self.applied_log.setdefault(e.index, e)
            if seen != e:
                raise TranscriptError(
                    f"state machine safety: index {e.index} applied as {fmt_entry(seen)}"
                    f" and as {fmt_entry(e)} (node {node.id})"
                )
            node.applied = e.index
            if e.kind is EntryKind.COMMAND:
                key, sep, value = e.data.decode(errors="replace").partition("=")
                if sep:
                    node.state[key] = value
        self.emit(f"apply {fmt_entries(entries)}", 1)
        self.serve_reads(node)

    def serve_reads(self, node: Node) -> None:
        still = []
        for index, request in node.waiting_reads:
            if node.applied >= index:
                key = self.read_keys.get(request, "")
                self.check_fresh(node, request, key)
                value = node.state.get(key)
                shown = "(absent)" if value is None else f'"{value}"'
                self.emit(f"read #{request} {key} = {shown} (applied {node.applied})", 1)
            else:
                still.append((index, request))
        node.waiting_reads = still

    def check_fresh(self, node: Node, request: int, key: str) -> None:
        """A read served from ``node``'s state must not miss a write of ``key`` that was applied
        somewhere (so committed, and acknowledged to its client) before the read began."""
        floor = self.read_floor.get(request, 0)
        for index in range(node.applied + 1, floor + 1):
            entry = self.applied_log[index]
            if entry.kind is EntryKind.COMMAND and entry.data.split(b"=", 1)[0] == key.encode():
                raise TranscriptError(
                    f"linearizability: read #{request} of {key} served by node {node.id} at"
                    f" applied index {node.applied} misses {fmt_entry(entry)}, committed before"
                    " the read began"
                )

    def finish_writes(self, node: Node, indent: int) -> None:
        """The disk completes every pending entry write of ``node``; report ``Persisted``."""
        if not node.pending_writes:
            return
        for entries in node.pending_writes:
            first = entries[0].index
            node.disk = [e for e in node.disk if e.index < first]
            node.disk.extend(entries)
        node.pending_writes = []
        last = node.disk[-1]
        assert node.raft is not None
        if indent:
            self.emit(f"persisted {last.term}/{last.index}", indent)
            for effect in node.raft.step(node.clock, Persisted(last.index, last.term)):
                self.carry_out(node, effect)
        else:
            self.step(
                node,
                Persisted(last.index, last.term),
                f"{node.id} persisted {last.term}/{last.index}",
            )

    def deliver(self, m: Message) -> None:
        dst = self.nodes.get(m.dst)
        if dst is None or dst.raft is None:
            self.emit(f"lost {fmt_message(m)}  (node {m.dst} is down)")
        elif (m.src, m.dst) in self.cut:
            self.emit(f"lost {fmt_message(m)}  (link cut)")
        else:
            self.step(dst, Receive(m), fmt_message(m))

    def tick_until(self, node: Node, until: float) -> None:
        for _ in range(MAX_TICKS):
            if node.raft is None:
                return
            deadline = node.raft.next_deadline()
            if deadline > until:
                break
            node.clock = max(node.clock, deadline)
            self.step(node, Tick(), f"{node.id} tick @{fmt_time(node.clock)}")
        else:
            raise TranscriptError(f"node {node.id} keeps asking for ticks before {until}")
        node.clock = max(node.clock, until)

    # ------------------------------------------------------------------ commands: setup

    def cmd_start(self, args: list[str], opts: dict[str, str]) -> None:
        """``start <n> [disk=sync|manual] [<RaftConfig field>=<value> ...]``"""
        if self.nodes:
            raise TranscriptError("start runs once")
        if len(args) != 1:
            raise TranscriptError("usage: start <number of nodes> [option=value ...]")
        size = int(args[0])
        self.manual_disk = opts.pop("disk", "sync") == "manual"
        self.cluster_id = opts.pop("cluster", "")
        overrides: dict[str, object] = {}
        fields = {f.name: f for f in attrs.fields(RaftConfig)}
        for key, value in opts.items():
            if key not in fields or key in ("node_id", "voters"):
                raise TranscriptError(f"unknown option {key!r}")
            default = fields[key].default
            if isinstance(default, bool):
                overrides[key] = _bool(value)
            elif isinstance(default, Durability):
                overrides[key] = Durability(value)
            elif isinstance(default, int):
                overrides[key] = int(value)
            else:
                overrides[key] = float(value)
        voters = tuple(range(1, size + 1))
        self.voters = voters
        self.overrides = overrides
        for i in voters:
            config = RaftConfig(node_id=i, voters=voters, **overrides)  # type: ignore[arg-type]
            self.nodes[i] = Node(i, config, Timeouts(i))
            if self.cluster_id:
                self.nodes[i].uuid = f"u{i}"
            self.boot(self.nodes[i])
        for node in self.nodes.values() if self.cluster_id else ():
            # Every process knows every other's data directory from its connections (a
            # follower has nothing to say about it but its first role).
            assert node.raft is not None
            for other in self.nodes.values():
                if other.id != node.id:
                    node.raft.step(node.clock, PeerIdentity(other.id, other.uuid))
        self.cmd_raft_state([], {})

    def cmd_output(self, args: list[str], opts: dict[str, str]) -> None:
        """``output off|on``: leave the events and effects of the commands that follow out of
        the transcript (setup nobody needs to read), or put them back. Inspection commands
        (status, log, raft-state, kv, msgs) always print."""
        if args not in (["on"], ["off"]):
            raise TranscriptError("usage: output on|off")
        self.quiet = args == ["off"]

    def boot(self, node: Node) -> None:
        """Start the core from the durable state, as storage recovery does: the snapshot,
        then the disk log after it (dropped whole if it does not continue the snapshot)."""
        term, vote = node.hard_state
        snap = node.snapshot or Image(0, 0, ())
        log = [e for e in node.disk if e.index > snap.index]
        if log and log[0].index != snap.index + 1:
            log = []
        node.disk = log
        membership, membership_index = snap.membership, snap.index
        if membership is None and node.joiner:
            membership, membership_index = Membership("", ()), 0  # no member yet
        node.raft = RaftNode(
            node.config,
            node.timeouts,
            term=term,
            voted_for=vote,
            entries=log,
            now_ms=node.clock,
            snapshot_index=snap.index,
            snapshot_term=snap.term,
            membership=membership,
            membership_index=membership_index,
            uuid=node.uuid,
            bootstrap_cluster_id=self.cluster_id,
        )
        node.state = dict(snap.state)
        node.applied = snap.index
        node.waiting_reads = []
        if self.cluster_id and self.nodes.keys() >= set(self.voters):
            # The runtime steps each peer's identity as its connection comes up: the new
            # process learns every live peer's (a follower's answer is only its first role).
            for other in self.nodes.values():
                if other.id != node.id and other.raft is not None:
                    node.raft.step(node.clock, PeerIdentity(other.id, other.uuid))

    def cmd_load(self, args: list[str], opts: dict[str, str]) -> None:
        """``load <node> terms=1,1,2 [term=T] [vote=V]``: replace a node's durable state (its
        log holds one entry per listed term, commands ``<term>.<index>``) and reboot it."""
        for arg in args:
            node = self.node(arg)
            terms = [int(t) for t in opts.get("terms", "").replace(",", " ").split()]
            node.disk = [Entry(t, i, f"{t}.{i}".encode()) for i, t in enumerate(terms, 1)]
            node.snapshot = None
            node.pending_writes = []
            node.hard_state = (
                int(opts.get("term", terms[-1] if terms else 0)),
                int(opts.get("vote", 0)),
            )
            self.boot(node)
            self.show(self.state_line(node))

    def cmd_timeout(self, args: list[str], opts: dict[str, str]) -> None:
        """``timeout <node>... ms=<ms>``: the election timeouts these nodes draw from now on
        (``ms=default`` restores the fixed spread). Takes effect at the next timer reset."""
        for node in self.selected(args):
            node.timeouts.fixed = None if opts["ms"] == "default" else float(opts["ms"])

    # ------------------------------------------------------------------ commands: time

    def tick_first_due(
        self, nodes: Collection[Node], start: dict[int, float], delta: float
    ) -> bool:
        """Tick the node of ``nodes`` whose deadline (relative to its clock at ``start``) comes
        first within ``delta`` ms; False if none is due. Every clock of ``nodes`` moves to that
        moment first."""
        due = [
            (n.raft.next_deadline() - start[n.id], n.id)
            for n in nodes
            if n.raft is not None and n.raft.next_deadline() <= start[n.id] + delta
        ]
        if not due:
            return False
        offset, node_id = min(due)
        # Time passes for every node advanced, not only the one whose timer fires.
        for other in nodes:
            other.clock = max(other.clock, start[other.id] + offset)
        node = self.nodes[node_id]
        assert node.raft is not None
        node.clock = max(node.clock, node.raft.next_deadline())
        self.step(node, Tick(), f"{node.id} tick @{fmt_time(node.clock)}")
        return True

    def cmd_advance(self, args: list[str], opts: dict[str, str]) -> None:
        """``advance <ms> [node...]``: move the clocks of the nodes named (default: all)
        forward, ticking each live one at every deadline it asked for. Messages stay queued."""
        if not args:
            raise TranscriptError("usage: advance <ms> [node...]")
        delta = float(args[0])
        nodes = self.selected(args[1:])  # a down node's clock moves too: it restarts later
        start = {n.id: n.clock for n in nodes}
        # Interleave the nodes' ticks in the order of their deadlines (relative to where each
        # clock started), as they would happen in real time.
        for _ in range(MAX_TICKS * max(len(nodes), 1)):
            if not self.tick_first_due(nodes, start, delta):
                break
        else:
            raise TranscriptError(f"the nodes keep asking for ticks within {delta} ms")
        for node in nodes:
            node.clock = max(node.clock, start[node.id] + delta)

    def cmd_run(self, args: list[str], opts: dict[str, str]) -> None:
        """``run <ms>``: let the whole cluster run for that long on a network without delay:
        deliver every message (as ``stabilize``), tick the node whose deadline comes first,
        and again, until no live node has a deadline within ``ms``."""
        if len(args) != 1:
            raise TranscriptError("usage: run <ms>")
        delta = float(args[0])
        start = {n.id: n.clock for n in self.nodes.values()}
        for _ in range(MAX_TICKS):
            self.cmd_stabilize([], {})
            if not self.tick_first_due(self.nodes.values(), start, delta):
                break
        else:
            raise TranscriptError(f"the nodes keep asking for ticks within {delta} ms")
        for node in self.nodes.values():
            node.clock = max(node.clock, start[node.id] + delta)

    def cmd_campaign(self, args: list[str], opts: dict[str, str]) -> None:
        """``campaign <node>``: jump the node's clock to its election deadline and tick it, so
        it starts an election (a pre-vote with pre_vote=true) as its timer would."""
        for arg in args:
            node, raft = self.live(arg)
            if raft.role is Role.LEADER:
                raise TranscriptError(f"node {node.id} is the leader")
            deadline = raft.next_deadline()
            self.tick_until(node, deadline)

    # ------------------------------------------------------------------ commands: clients

    def request(self) -> int:
        self.next_request += 1
        return self.next_request

    def cmd_propose(self, args: list[str], opts: dict[str, str]) -> None:
        """``propose <node> <data>...``: one ``Propose`` per datum, each its own step."""
        node, _ = self.live(args[0])
        for data in args[1:]:
            request = self.request()
            self.step(
                node,
                Propose(request, data.encode()),
                f"{node.id} propose #{request} {fmt_data(data.encode())}",
            )

    def cmd_read(self, args: list[str], opts: dict[str, str]) -> None:
        """``read <node> <key> [lease=true]``: a linearizable (ReadIndex) or lease read."""
        node, _ = self.live(args[0])
        lease = _bool(opts.get("lease", "false"))
        request = self.request()
        self.read_keys[request] = args[1]
        self.read_floor[request] = max(n.applied for n in self.nodes.values())
        kind = "lease" if lease else "linearizable"
        self.step(
            node, ReadRequest(request, lease), f"{node.id} read #{request} {args[1]} ({kind})"
        )

    def cmd_transfer(self, args: list[str], opts: dict[str, str]) -> None:
        """``transfer-leader <leader> [to=<node>]`` (default: the most up-to-date follower)."""
        node, _ = self.live(args[0])
        target = int(opts.get("to", 0))
        self.step(node, TransferLeader(target), f"{node.id} transfer-leader to {target or 'best'}")

    def cmd_snapshot(self, args: list[str], opts: dict[str, str]) -> None:
        """``snapshot <node> [through=<index>]``: the runtime snapshots the node's state machine
        at its applied index (durable at once), steps ``SnapshotTaken`` with ``compact_through``
        (default: the snapshot's index) and drops the disk log through that point."""
        node, raft = self.live(args[0])
        index = node.applied
        term = raft.log.term_at(index)
        if index == 0 or term is None:
            raise TranscriptError(f"node {node.id} has applied nothing to snapshot")
        through = int(opts.get("through", index))
        at = raft.membership_at(index)
        image = Image(index, term, tuple(sorted(node.state.items())), None if at.implicit else at)
        self.images[(index, term)] = image
        node.snapshot = image
        self.step(
            node,
            SnapshotTaken(index, term, through),
            f"{node.id} snapshot {term}/{index} compact through {min(through, index)}",
        )
        node.disk = [e for e in node.disk if e.index > raft.log.snapshot_index]

    def cmd_report_snapshot(self, args: list[str], opts: dict[str, str]) -> None:
        """``report-snapshot <leader> <peer> ok|failed``: the leader's runtime finished
        streaming its snapshot to ``peer``, or gave up (``SnapshotStatus``)."""
        if len(args) != 3 or args[2] not in ("ok", "failed"):
            raise TranscriptError("usage: report-snapshot <leader> <peer> ok|failed")
        node, _ = self.live(args[0])
        peer = self.node(args[1]).id
        self.step(
            node, SnapshotStatus(peer, args[2] == "ok"), f"{node.id} snapshot to {peer} {args[2]}"
        )

    # ------------------------------------------------------------------ commands: network

    def take(self, source: list[Message], flt: Filter) -> list[Message]:
        taken = [m for m in source if flt(m)]
        source[:] = [m for m in source if not flt(m)]
        return taken

    def cmd_deliver(self, args: list[str], opts: dict[str, str]) -> None:
        """``deliver [from=] [to=] [type=] [count=]``: deliver the queued messages that match,
        in queue order. Messages they cause are queued, not delivered."""
        batch = self.take(self.queue, self.filter(opts))
        if "count" in opts:
            keep = batch[int(opts["count"]) :]
            batch = batch[: int(opts["count"])]
            self.queue[0:0] = keep
        for m in batch:
            self.deliver(m)

    def cmd_drop(self, args: list[str], opts: dict[str, str]) -> None:
        """``drop [from=] [to=] [type=]``: discard the queued messages that match."""
        for m in self.take(self.queue, self.filter(opts)):
            self.emit(f"dropped {fmt_message(m)}")

    def cmd_hold(self, args: list[str], opts: dict[str, str]) -> None:
        """``hold [from=] [to=] [type=]``: set the matching queued messages aside."""
        taken = self.take(self.queue, self.filter(opts))
        for m in taken:
            self.emit(f"held {fmt_message(m)}")
        self.held.extend(taken)

    def cmd_release(self, args: list[str], opts: dict[str, str]) -> None:
        """``release [from=] [to=] [type=]``: put held messages back at the end of the queue."""
        for m in self.take(self.held, self.filter(opts)):
            self.emit(f"released {fmt_message(m)}")
            self.queue.append(m)

    def cmd_duplicate(self, args: list[str], opts: dict[str, str]) -> None:
        """``duplicate [from=] [to=] [type=]``: the network delivers the matching queued
        messages twice: a copy of each goes to the end of the queue."""
        copies = [m for m in self.queue if self.filter(opts)(m)]
        for m in copies:
            self.emit(f"duplicated {fmt_message(m)}")
        self.queue.extend(copies)

    def cmd_msgs(self, args: list[str], opts: dict[str, str]) -> None:
        """``msgs``: the queue and the held messages, without delivering anything."""
        for m in self.queue:
            self.show(fmt_message(m))
        for m in self.held:
            self.show(f"{fmt_message(m)}  (held)")
        if not self.queue and not self.held:
            self.show("no messages")

    def cmd_persist(self, args: list[str], opts: dict[str, str]) -> None:
        """``persist [node...]``: finish the pending entry writes (``disk=manual``)."""
        for node in self.selected(args):
            if node.raft is not None:
                self.finish_writes(node, indent=0)

    def cmd_stabilize(self, args: list[str], opts: dict[str, str]) -> None:
        """``stabilize [node...]``: finish writes and deliver messages until nothing is left;
        with nodes named, only messages among them (and only their writes)."""
        among = {n.id for n in self.selected(args)}
        for _ in range(MAX_DELIVERIES):
            for node in self.nodes.values():
                if node.id in among and node.raft is not None and node.pending_writes:
                    self.finish_writes(node, indent=0)
            ready = next((m for m in self.queue if m.src in among and m.dst in among), None)
            if ready is None:
                return
            self.queue.remove(ready)
            self.deliver(ready)
        raise TranscriptError(f"no quiet after {MAX_DELIVERIES} deliveries")

    def cmd_partition(self, args: list[str], opts: dict[str, str]) -> None:
        """``partition 1 2 / 3``: cut every link between the groups, both ways."""
        groups: list[set[int]] = [set()]
        for arg in args:
            if arg == "/":
                groups.append(set())
            else:
                groups[-1].add(self.node(arg).id)
        for a in groups:
            for b in groups:
                if a is not b:
                    self.cut |= {(x, y) for x in a for y in b}
        self.show(self.links_line())

    def cmd_cut(self, args: list[str], opts: dict[str, str]) -> None:
        """``cut <src> <dst>``: drop what ``src`` sends to ``dst`` (one way)."""
        self.cut.add((self.node(args[0]).id, self.node(args[1]).id))
        self.show(self.links_line())

    def cmd_heal(self, args: list[str], opts: dict[str, str]) -> None:
        """``heal``: restore every link (held messages stay held)."""
        self.cut.clear()
        self.show(self.links_line())

    def links_line(self) -> str:
        if not self.cut:
            return "all links up"
        return "cut: " + " ".join(f"{a}->{b}" for a, b in sorted(self.cut))

    # ------------------------------------------------------------------ commands: nodes

    def cmd_crash(self, args: list[str], opts: dict[str, str]) -> None:
        """``crash <node>...``: the node stops; writes not yet durable are lost."""
        for arg in args:
            node, _ = self.live(arg)
            lost = [e for entries in node.pending_writes for e in entries]
            node.pending_writes = []
            node.raft = None
            note = f" (lost unsynced {fmt_entries(lost)})" if lost else ""
            self.show(f"{node.id} crashed{note}")

    def cmd_restart(self, args: list[str], opts: dict[str, str]) -> None:
        """``restart <node>...``: boot from the durable hard state and log, at the node's
        clock (which ``run`` and ``advance`` move while the node is down)."""
        for arg in args:
            node = self.node(arg)
            if node.raft is not None:
                raise TranscriptError(f"node {node.id} is running")
            self.boot(node)
            self.show(self.state_line(node))
            self.announce(node)

    def announce(self, node: Node) -> None:
        """Every live peer learns ``node``'s data-directory uuid (``PeerIdentity``), as the
        runtime's handshake tells it when the restarted process connects."""
        if not self.cluster_id:
            return
        for other in self.nodes.values():
            if other.id != node.id and other.raft is not None:
                self.step(
                    other,
                    PeerIdentity(node.id, node.uuid),
                    f"{other.id} identity {node.id}={node.uuid}",
                )

    def cmd_add_node(self, args: list[str], opts: dict[str, str]) -> None:
        """``add-node <id>``: start a new, joining node (an empty data directory, no member
        of any membership until a change adds it; needs ``start ... cluster=<id>``)."""
        if not self.cluster_id:
            raise TranscriptError("add-node needs start ... cluster=<id>")
        for arg in args:
            node_id = int(arg)
            if node_id in self.nodes:
                raise TranscriptError(f"node {node_id} exists")
            config = RaftConfig(node_id=node_id, voters=self.voters, **self.overrides)  # type: ignore[arg-type]
            node = Node(node_id, config, Timeouts(node_id), uuid=f"u{node_id}", joiner=True)
            node.clock = max(n.clock for n in self.nodes.values())
            self.nodes[node_id] = node
            self.boot(node)
            self.show(self.state_line(node))
            self.announce(node)

    def cmd_wipe(self, args: list[str], opts: dict[str, str]) -> None:
        """``wipe <node>...``: the node (crashed first if up) loses its data directory and
        restarts on an empty one: no log, no vote, no snapshot, a new uuid (``u<id>-<n>``),
        and the implicit membership of the initial voters (what ``initial_cluster`` gives)."""
        for arg in args:
            node = self.node(arg)
            if node.raft is not None:
                self.cmd_crash([arg], {})
            node.disk = []
            node.snapshot = None
            node.pending_writes = []
            node.hard_state = (0, 0)
            node.incarnation += 1
            if self.cluster_id:
                node.uuid = f"u{node.id}-{node.incarnation}"
            self.boot(node)
            self.show(f"{node.id} wiped: uuid={node.uuid or '(none)'}")
            self.show(self.state_line(node))
            self.announce(node)

    def cmd_change(self, args: list[str], opts: dict[str, str]) -> None:
        """``change <node> add <id> [address=] [promote=true] [uuid=]``, ``change <node>
        promote <id>``, ``change <node> remove <id>``, ``change <node> bind <id>=<uuid>...``:
        a ``ProposeConfChange`` at ``node``."""
        if len(args) < 3:
            raise TranscriptError("usage: change <node> add|promote|remove|bind <id>...")
        node, _ = self.live(args[0])
        verb, rest = args[1], args[2:]
        if verb == "bind":
            pairs = []
            for item in rest:
                bound, sep, uuid = item.partition("=")
                if not sep:
                    raise TranscriptError(f"bind takes <id>=<uuid>, not {item!r}")
                pairs.append((int(bound), uuid))
            change = ConfChange(ConfChangeKind.BIND, uuids=tuple(pairs))
            shown = "bind " + " ".join(rest)
        else:
            kinds = {
                "add": ConfChangeKind.ADD_LEARNER,
                "promote": ConfChangeKind.PROMOTE,
                "remove": ConfChangeKind.REMOVE,
            }
            if verb not in kinds or len(rest) != 1:
                raise TranscriptError("usage: change <node> add|promote|remove|bind <id>...")
            member = int(rest[0])
            uuid = opts.get("uuid", "")
            change = ConfChange(
                kinds[verb],
                member,
                address=opts.get("address", f"n{member}" if verb == "add" else ""),
                promote=_bool(opts.get("promote", "false")),
                uuids=((member, uuid),) if uuid else (),
            )
            shown = f"{verb} {member}" + "".join(f" {k}={v}" for k, v in sorted(opts.items()))
        request = self.request()
        self.step(node, ProposeConfChange(request, change), f"{node.id} change #{request} {shown}")

    def cmd_membership(self, args: list[str], opts: dict[str, str]) -> None:
        """``membership [node...]``: the membership in effect at each live node, the index of
        the entry (or snapshot) it came from, and the uncommitted change, if any."""
        for node in self.selected(args):
            if node.raft is None:
                self.show(f"{node.id}: down")
                continue
            raft = node.raft
            pending = f" pending={raft.pending_conf_index}" if raft.pending_conf_index else ""
            self.show(
                f"{node.id}: @{raft.membership_index} {fmt_membership(raft.membership)}{pending}"
            )

    # ------------------------------------------------------------------ commands: inspection

    def state_line(self, node: Node) -> str:
        raft = node.raft
        if raft is None:
            last = self.last(node.disk)
            if not node.disk and node.snapshot:
                last = f"{node.snapshot.term}/{node.snapshot.index}"
            return f"{node.id}: down term={node.hard_state[0]} last={last}"
        vote = raft.voted_for or "none"
        snap = (
            f" snapshot={raft.snapshot_term}/{raft.snapshot_index}" if raft.snapshot_index else ""
        )
        return (
            f"{node.id}: {raft.role.value} term={raft.term} vote={vote} leader={raft.leader_id}"
            f" last={raft.log.last_term}/{raft.log.last_index} commit={raft.commit_index}"
            f" applied={node.applied}{snap}"
        )

    @staticmethod
    def last(log: list[Entry]) -> str:
        return f"{log[-1].term}/{log[-1].index}" if log else "0/0"

    def cmd_raft_state(self, args: list[str], opts: dict[str, str]) -> None:
        """``raft-state [node...]``: one line per node."""
        for node in self.selected(args):
            self.show(self.state_line(node))

    def cmd_status(self, args: list[str], opts: dict[str, str]) -> None:
        """``status <node>...``: the state line, the clock, and a leader's view of each peer."""
        for node in self.selected(args):
            self.show(self.state_line(node))
            raft = node.raft
            if raft is None:
                continue
            self.show(f"clock={fmt_time(node.clock)} durable={raft.durable_index}", 1)
            for peer, p in sorted(raft.progress.items()):
                flags = []
                if p.paused(raft.config.max_inflight_msgs):
                    flags.append("paused")
                inflight = f" inflight={len(p.inflight)}" if p.inflight else ""
                if p.pending_snapshot:
                    inflight += f" pending={p.pending_snapshot_term}/{p.pending_snapshot}"
                self.show(
                    f"{peer}: {p.state.value} match={p.match_index} next={p.next_index}"
                    f"{inflight}{''.join(' ' + f for f in flags)}",
                    1,
                )

    def cmd_log(self, args: list[str], opts: dict[str, str]) -> None:
        """``log <node>...``: the node's log (in memory if up, on disk if down), after the
        position it was compacted through, if any (``compacted=T/I``)."""
        for node in self.selected(args):
            if node.raft is not None:
                log = node.raft.log
                entries = log.slice(log.first_index, log.last_index)
                offset = (log.snapshot_index, log.snapshot_term)
            else:
                entries = node.disk
                snap = node.snapshot
                offset = (snap.index, snap.term) if snap else (0, 0)
                entries = [e for e in entries if e.index > offset[0]]
            head = f"compacted={offset[1]}/{offset[0]} " if offset[0] else ""
            self.show(f"{node.id}: {head}{fmt_entries(entries)}")

    def cmd_kv(self, args: list[str], opts: dict[str, str]) -> None:
        """``kv [node...]``: the state machine's contents."""
        for node in self.selected(args):
            pairs = " ".join(f"{k}={v}" for k, v in sorted(node.state.items()))
            self.show(f"{node.id}: applied={node.applied} {pairs or '(empty)'}")


# ---------------------------------------------------------------------------------- files


@dataclass
class Block:
    """A command, the comment/blank lines before it, and its expected output (None: none yet)."""

    preamble: list[str]
    command: str
    line_no: int
    expected: list[str] | None


def parse(text: str) -> tuple[list[Block], list[str]]:
    """Split a transcript into blocks; also return the trailing comment lines."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            pending.append(line)
            i += 1
            continue
        command, line_no = line.strip(), i + 1
        i += 1
        expected: list[str] | None = None
        if i < len(lines) and lines[i].strip() == "----":
            expected = []
            i += 1
            while i < len(lines) and lines[i].strip():
                expected.append(lines[i])
                i += 1
        blocks.append(Block(pending, command, line_no, expected))
        pending = []
    return blocks, pending


def render(blocks: Iterable[tuple[Block, list[str]]], trailer: list[str]) -> str:
    out: list[str] = []
    for block, output in blocks:
        out += block.preamble
        out += [block.command, "----", *output]
    out += trailer
    return "\n".join(out) + "\n"


def run_transcript(path: Path) -> tuple[str, str]:
    """Replay ``path``; return (the file as it is, the file as the run says it should be)."""
    text = path.read_text()
    blocks, trailer = parse(text)
    interaction = Interaction()
    results = []
    for block in blocks:
        try:
            output = interaction.run(block.command)
        except TranscriptError as e:
            raise TranscriptError(f"{path}:{block.line_no}: {block.command}: {e}") from None
        results.append((block, output))
    return text, render(results, trailer)


def transcript_paths() -> list[Path]:
    """``tests/scenarios/*.txt``, then every ``*.txt`` in the directories listed in
    ``DENGINE_SCENARIOS_DIR`` (separated by ``os.pathsep``)."""
    dirs = [SCENARIOS_DIR]
    dirs += [Path(d) for d in os.environ.get(SCENARIOS_ENV, "").split(os.pathsep) if d]
    paths: list[Path] = []
    for d in dirs:
        if not d.is_dir():
            raise TranscriptError(f"{SCENARIOS_ENV}: {d} is not a directory")
        paths += sorted(d.glob("*.txt"))
    return paths


def transcript_id(path: Path) -> str:
    """The test id: the file name, prefixed by its directory unless it is tests/scenarios."""
    if path.parent == SCENARIOS_DIR:
        return path.stem
    return f"{path.parent.name}/{path.stem}"


def rewrite_requested() -> bool:
    return os.environ.get(REWRITE_ENV, "") not in ("", "0")


__all__ = [
    "Interaction",
    "TranscriptError",
    "fmt_message",
    "parse",
    "render",
    "rewrite_requested",
    "run_transcript",
    "transcript_id",
    "transcript_paths",
]


def _main(argv: Sequence[str]) -> int:  # pragma: no cover - a convenience for the shell
    """``python -m tests.sim.transcript FILE...``: print each file as the run produces it."""
    for name in argv:
        print(run_transcript(Path(name))[1], end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(_main(sys.argv[1:]))
