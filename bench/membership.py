"""Membership changes measured on real processes (issue 14; ``make bench-membership``).

1. **Join to voter**: three node processes (the e2e suite's MemFirst nodes, a snapshot every
   ``--snapshot-every`` entries so the log before the join is compacted away) are loaded with
   ``--keys`` distinct keys through ``POST /txn`` (``--txn-ops`` puts per request, a few
   requests in flight). Then node 4 is started with an empty data directory and a file like
   ``config/n4.toml`` (itself ``role = 3``, ``status = 0``). Timed, by polling every 20 ms:

   * *added*: from the start of its process until the leader's ``GET /members`` lists it
     (the joiner's interpreter start, its dial and the learner's configuration entry);
   * *snapshot*: until its log says ``received snapshot`` (the leader's snapshot of all the
     keys sent in chunks, checked and installed);
   * *catch-up*: until its ``match_index`` in the leader's ``/members`` reaches the leader's
     commit index as it was when the snapshot arrived;
   * *promotion*: until every live node's ``/members`` shows it ``voter: true``.

2. **Removing the leader under writes**: a single writer writes distinct keys to the node
   that answers ``/primary`` at a steady rate (``--write-interval-ms``; bounded in count and
   time), finding the leader again after any failure. ``DELETE /members/<leader id>`` is sent
   on the leader's health port: the removed leader hands leadership over once the change
   commits. Measured: the longest gap between two acknowledged writes around it, the writes
   that failed, and the time until another node answers ``/primary``. For comparison in the
   same run, under the same writer: **SIGKILL of the (new) leader**, the failover figure.
   At the end every acknowledged write is read back (linearizable): a lost one fails the run.

Loopback only; the temporary directory is removed at the end; every wait is bounded.

    .venv/bin/python -m bench.membership [--keys 1000000] [--txn-ops 128] [--no-doc]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from bench.report import cpu_model
from tests.e2e.cluster import Cluster, Node
from tests.e2e.membership import add_joiner

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- bench.membership: begin (generated, replaced on every run) -->"
END = "<!-- bench.membership: end -->"
POLL_S = 0.02
STEP_TIMEOUT_S = 600.0
"""Bound on each wait of the join (a snapshot of a million keys on a busy machine)."""
FAULT_TIMEOUT_S = 30.0
SETTLE_S = 3.0
"""Writes counted after a fault: the gap and the failures are taken in [fault, fault + this]
once the new leader has acknowledged a write."""
VALUE = "v" * 32
RECEIVED = re.compile(r"received snapshot through index (\d+)")
SENT = re.compile(r"sending snapshot through index \d+ term \d+ \((\d+) bytes\) to peer 4")


class BenchError(Exception):
    """A step did not finish in time or the cluster misbehaved."""


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


async def until(
    check: Callable[[], Awaitable[object]], what: str, timeout_s: float = STEP_TIMEOUT_S
) -> object:
    """Poll ``check`` every POLL_S until it returns something truthy; BenchError after
    ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        while True:
            try:
                found = await check()
            except httpx.HTTPError:
                found = None
            if found:
                return found
            await trio.sleep(POLL_S)
    raise BenchError(f"{what}: not within {timeout_s:g} s")


async def get_json(client: httpx.AsyncClient, url: str) -> dict[str, object] | None:
    try:
        response = await client.get(url, timeout=1.0)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def health(node: Node) -> str:
    return f"http://127.0.0.1:{node.health_port}"


def kv(node: Node) -> str:
    return f"http://127.0.0.1:{node.port}"


async def leader_of(client: httpx.AsyncClient, nodes: list[Node]) -> Node | None:
    for node in nodes:
        if not node.running():
            continue
        try:
            response = await client.get(health(node) + "/primary", timeout=0.5)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            return node
    return None


# ---------------------------------------------------------------------------- load


async def load_keys(
    client: httpx.AsyncClient, leader: Node, keys: int, ops: int, in_flight: int
) -> float:
    """``keys`` distinct keys through ``POST /txn`` of ``ops`` puts; returns the seconds."""
    batches = [range(start, min(start + ops, keys)) for start in range(0, keys, ops)]
    send, receive = trio.open_memory_channel[range](len(batches))
    for batch in batches:
        send.send_nowait(batch)
    send.close()
    done = 0
    started = time.monotonic()

    async def one() -> None:
        nonlocal done
        async for batch in receive:
            body = {
                "compare": [],
                "success": [{"op": "put", "key": f"k{i:07d}", "value": VALUE} for i in batch],
            }
            for _attempt in range(5):
                response = await client.post(kv(leader) + "/txn", json=body, timeout=30.0)
                if response.status_code == 200:
                    break
                await trio.sleep(0.2)
            else:
                raise BenchError(f"/txn answered {response.status_code}: {response.text[:200]}")
            done += len(batch)
            if done % 100_000 < ops:
                progress(f"loaded {done:,} keys ({time.monotonic() - started:.0f} s)")

    async with trio.open_nursery() as nursery:
        for _ in range(in_flight):
            nursery.start_soon(one)
    return time.monotonic() - started


# ---------------------------------------------------------------------------- join


@dataclass
class Join:
    keys: int
    load_s: float = 0.0
    snapshot_index: int = 0
    snapshot_bytes: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.phases.values())


async def join(client: httpx.AsyncClient, cluster: Cluster, result: Join) -> Node:
    """Start node 4 and time its way to voter (the phases of the module docstring). The
    leader is looked up on every poll (the node that says it leads in its ``/members``):
    the one that took the load may have handed over since."""
    original = list(cluster.nodes)
    t0 = time.monotonic()
    joiner = add_joiner(cluster, 4)
    marks: dict[str, float] = {}

    async def leader_and_view() -> tuple[Node, dict[str, object]] | None:
        for node in original:
            view = await get_json(client, health(node) + "/members")
            if view is not None and view.get("leader_id") == node.node_id:
                return node, view
        return None

    async def members() -> dict[str, object] | None:
        found = await leader_and_view()
        return found[1] if found else None

    def entry(view: dict[str, object] | None) -> dict[str, object] | None:
        if view is None:
            return None
        found = [m for m in view["members"] if m["id"] == 4]  # type: ignore[attr-defined]
        return found[0] if found else None

    async def added() -> bool:
        return entry(await members()) is not None

    await until(added, "node 4 listed by the leader")
    marks["added"] = time.monotonic()
    progress(f"join: node 4 is a learner after {marks['added'] - t0:.2f} s")

    async def commit_index() -> int:
        found = await until(leader_and_view, "a leader", FAULT_TIMEOUT_S)
        assert isinstance(found, tuple)
        status = await get_json(client, health(found[0]) + "/status")
        return int(status["commit_index"]) if status else 0  # type: ignore[call-overload]

    async def matched(target: int) -> bool:
        mine = entry(await members())
        return bool(mine and (mine.get("match_index") or 0) >= target)  # type: ignore[operator]

    # A snapshot, unless the leader still holds the whole log (fewer entries than its
    # snapshot threshold): then the learner catches up from the log alone.
    commit_at_add = await commit_index()

    async def received_or_matched() -> str | None:
        found = RECEIVED.search(joiner.log_text())
        if found:
            result.snapshot_index = int(found.group(1))
            return "snapshot"
        return "log" if await matched(commit_at_add) else None

    how = await until(received_or_matched, "node 4's snapshot (or catch-up from the log)")
    marks["snapshot"] = time.monotonic()
    if how == "snapshot":
        for node in original:
            sent = SENT.search(node.log_text())
            if sent:
                result.snapshot_bytes = int(sent.group(1))
        progress(f"join: snapshot through index {result.snapshot_index:,} received")

        async def installed() -> bool:
            return "installed snapshot" in joiner.log_text()

        await until(installed, "node 4's snapshot installed")
        marks["installed"] = time.monotonic()
        progress("join: snapshot installed")
    else:
        progress("join: no snapshot sent (the leader's log still starts at 1)")
    commit = await commit_index()

    async def caught_up() -> bool:
        return await matched(commit)

    await until(caught_up, "node 4's catch-up")
    marks["caught_up"] = time.monotonic()

    async def voter_everywhere() -> bool:
        for node in cluster.alive():
            mine = entry(await get_json(client, health(node) + "/members"))
            if not (mine and mine["voter"]):
                return False
        return True

    await until(voter_everywhere, "node 4 a voter on every node")
    marks["voter"] = time.monotonic()
    installed_at = marks.get("installed", marks["snapshot"])
    result.phases = {
        "added as learner": marks["added"] - t0,
        ("snapshot transfer" if result.snapshot_index else "log replication"): marks["snapshot"]
        - marks["added"],
        "snapshot install (restore on node 4)": installed_at - marks["snapshot"],
        "catch-up": marks["caught_up"] - installed_at,
        "promotion": marks["voter"] - marks["caught_up"],
    }
    progress(f"join: node 4 is a voter {result.total_s:.2f} s after its start")
    return joiner


# ---------------------------------------------------------------------------- writer


@dataclass
class Writes:
    acked: dict[str, str] = field(default_factory=dict)
    ack_times: list[float] = field(default_factory=list)
    attempts: list[tuple[float, float, str]] = field(default_factory=list)
    """(sent, answered, outcome: "200", another status, or the client's exception name) of
    every attempt."""

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without an acknowledgement from the last one before ``start``
        through the acknowledgements up to ``end``."""
        before = [t for t in self.ack_times if t < start]
        inside = [t for t in self.ack_times if start <= t <= end]
        points = ([before[-1]] if before else [start]) + inside
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    def failed(self, start: float, end: float) -> list[tuple[float, str]]:
        """(seconds it took, outcome) of each failed attempt sent in [start, end]."""
        return [
            (answered - sent, outcome)
            for sent, answered, outcome in self.attempts
            if start <= sent <= end and outcome != "200"
        ]


async def steady_writer(
    client: httpx.AsyncClient,
    cluster: Cluster,
    writes: Writes,
    interval_s: float,
    limit: int,
    timeout_s: float,
) -> None:
    """One write every ``interval_s`` (or right after the previous if it took longer) to the
    node answering ``/primary``; at most ``limit`` writes; until cancelled."""
    target: Node | None = None
    next_at = time.monotonic()
    for seq in range(limit):
        now = time.monotonic()
        if next_at > now:
            await trio.sleep(next_at - now)
        next_at = max(next_at + interval_s, time.monotonic())
        if target is None or not target.running():
            target = await leader_of(client, cluster.alive())
        key, value = f"m{seq}", f"value {seq}"
        sent = time.monotonic()
        outcome = "no leader"
        if target is not None:
            try:
                response = await client.post(
                    kv(target) + "/kv", json={"key": key, "value": value}, timeout=timeout_s
                )
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
        ok = outcome == "200"
        writes.attempts.append((sent, time.monotonic(), outcome))
        if ok:
            writes.acked[key] = value
            writes.ack_times.append(time.monotonic())
        else:
            target = None


@dataclass
class Fault:
    what: str
    gap_s: float
    failures: list[tuple[float, str]]
    new_leader_s: float

    @property
    def failed(self) -> int:
        return len(self.failures)

    def outcomes(self) -> str:
        """The failed attempts by outcome: "2 x 503 (longest 0.01 s)", ..."""
        by: dict[str, list[float]] = {}
        for took, outcome in self.failures:
            by.setdefault(outcome, []).append(took)
        return (
            ", ".join(f"{len(t)} x {o} (longest {max(t):.2f} s)" for o, t in sorted(by.items()))
            or "none"
        )


async def fault(
    client: httpx.AsyncClient,
    cluster: Cluster,
    writes: Writes,
    what: str,
    act: Callable[[Node], Awaitable[None]],
) -> Fault:
    leader = await until(lambda: leader_of(client, cluster.alive()), "a leader", FAULT_TIMEOUT_S)
    assert isinstance(leader, Node)
    before = len(writes.ack_times)
    await until(lambda: _more(writes, before + 20), "a steady stream", FAULT_TIMEOUT_S)
    t0 = time.monotonic()
    await act(leader)

    async def other() -> Node | None:
        found = await leader_of(client, [n for n in cluster.alive() if n is not leader])
        return found

    await until(other, "another leader", FAULT_TIMEOUT_S)
    new_leader_s = time.monotonic() - t0
    # The first acknowledgement of a write sent after the new leader showed.
    shown = time.monotonic()
    await until(
        lambda: _acked_after(writes, shown), "a write acknowledged by the new leader",
        FAULT_TIMEOUT_S,
    )  # fmt: skip
    end = max(time.monotonic(), t0 + SETTLE_S)
    await trio.sleep(max(0.0, end - time.monotonic()))
    result = Fault(what, writes.longest_gap(t0, end), writes.failed(t0, end), new_leader_s)
    progress(
        f"{what}: longest write gap {result.gap_s * 1000:.0f} ms, {result.failed} failed "
        f"writes ({result.outcomes()}), another leader after {new_leader_s * 1000:.0f} ms"
    )
    return result


async def _more(writes: Writes, count: int) -> bool:
    return len(writes.ack_times) >= count


async def _acked_after(writes: Writes, t: float) -> bool:
    return bool(writes.ack_times) and writes.ack_times[-1] > t


async def verify(client: httpx.AsyncClient, cluster: Cluster, writes: Writes) -> int:
    """Every acknowledged write read back linearizably; returns how many are missing."""
    lost = 0
    items = list(writes.acked.items())
    send, receive = trio.open_memory_channel[tuple[str, str]](len(items))
    for item in items:
        send.send_nowait(item)
    send.close()
    leader = await until(lambda: leader_of(client, cluster.alive()), "a leader", FAULT_TIMEOUT_S)
    assert isinstance(leader, Node)

    async def one() -> None:
        nonlocal lost
        async for key, value in receive:
            response = await client.get(
                kv(leader) + f"/kv/{key}", params={"consistency": "linearizable"}, timeout=10.0
            )
            if response.status_code != 200 or response.json()["value"] != value:
                lost += 1

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    return lost


# ---------------------------------------------------------------------------- run


@dataclass
class Results:
    join: Join
    faults: list[Fault]
    acked: int
    lost: int
    notes: list[str] = field(default_factory=list)


async def run(args: argparse.Namespace) -> Results:
    root = Path(tempfile.mkdtemp(prefix="dengine-bench-membership-"))
    settings = {
        "raft.snapshot.max_log_entries_before_snapshot": args.snapshot_every,
        "raft.timing.request_timeout_ms": 10000,
    }
    cluster = Cluster(root, 3, settings)
    try:
        cluster.start()
        async with httpx.AsyncClient(trust_env=False, limits=httpx.Limits()) as client:
            leader = await until(
                lambda: leader_of(client, cluster.alive()), "a leader", FAULT_TIMEOUT_S
            )
            assert isinstance(leader, Node)
            result = Join(args.keys)
            progress(f"loading {args.keys:,} keys through /txn of {args.txn_ops} puts")
            result.load_s = await load_keys(client, leader, args.keys, args.txn_ops, 4)
            progress(f"loaded in {result.load_s:.1f} s")
            await join(client, cluster, result)
            writes = Writes()
            faults = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    steady_writer,
                    client,
                    cluster,
                    writes,
                    args.write_interval_ms / 1000,
                    args.max_writes,
                    args.write_timeout_ms / 1000,
                )

                removed: list[Node] = []

                async def remove(node: Node) -> None:
                    removed.append(node)
                    response = await client.delete(
                        health(node) + f"/members/{node.node_id}", timeout=FAULT_TIMEOUT_S
                    )
                    if response.status_code != 200:
                        raise BenchError(f"DELETE /members answered {response.status_code}")

                async def kill(node: Node) -> None:
                    node.kill()

                faults.append(await fault(client, cluster, writes, "remove the leader", remove))
                # The removed node is no member any more: stop it, as an operator would.
                removed[0].terminate()
                faults.append(await fault(client, cluster, writes, "SIGKILL the leader", kill))
                nursery.cancel_scope.cancel()
            lost = await verify(client, cluster, writes)
            progress(f"{len(writes.acked):,} acknowledged writes read back, {lost} lost")
            return Results(result, faults, len(writes.acked), lost)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def markdown(results: Results, args: argparse.Namespace, elapsed_s: float | None) -> str:
    """The results as markdown; ``elapsed_s`` None leaves out the line saying how it ran."""
    j = results.join
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = []
    if elapsed_s is not None:
        lines += [
            f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"`{' '.join(['.venv/bin/python -m bench.membership', *args.argv])}` "
            f"({elapsed_s / 60:.1f} min); `nproc` = {len(os.sched_getaffinity(0))}, "
            f"{cpu_model()}, Python {platform.python_version()}; load average at the end {load}.",
            "",
        ]
    lines += [
        f"Join to voter, a cluster holding {j.keys:,} keys (loaded through `/txn` of "
        f"{args.txn_ops} puts in {j.load_s:.1f} s; "
        + (
            f"snapshot through index {j.snapshot_index:,}, {j.snapshot_bytes / 1e6:.1f} MB):"
            if j.snapshot_index
            else "no snapshot sent: the leader's log still held every entry):"
        ),
        "",
        "| phase | seconds |",
        "|---|---:|",
        *[f"| {name} | {s:.2f} |" for name, s in j.phases.items()],
        f"| **join to voter** | **{j.total_s:.2f}** |",
        "",
        f"Write unavailability, one writer at a steady {1000 / args.write_interval_ms:.0f} "
        "writes/s to the leader (found again after a failure), 4 voters then 3:",
        "",
        "| fault | longest gap between acknowledged writes | failed writes | another "
        "leader after |",
        "|---|---:|---|---:|",
        *[
            f"| {f.what} | {f.gap_s * 1000:.0f} ms | {f.failed}: {f.outcomes()} "
            f"| {f.new_leader_s * 1000:.0f} ms |"
            for f in results.faults
        ],
        "",
        f"{results.acked:,} acknowledged writes read back linearizably at the end: "
        f"{results.lost} lost.",
    ]
    return "\n".join(lines) + "\n"


def update_doc(text: str) -> None:
    doc = DOC.read_text()
    block = f"{BEGIN}\n{text}{END}\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: block, doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    DOC.write_text(doc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.membership", description=(__doc__ or "").split("\n")[0]
    )
    add = parser.add_argument
    add("--keys", type=int, default=1_000_000, help="keys the cluster holds before the join")
    add("--txn-ops", type=int, default=128, help="puts per /txn while loading")
    add("--snapshot-every", type=int, default=2_000, help="snapshot threshold (entries)")
    add("--write-interval-ms", type=float, default=20.0, help="the steady writer's period")
    add("--write-timeout-ms", type=float, default=2000.0, help="the writer's client timeout")
    add("--max-writes", type=int, default=20_000, help="bound on the steady writer's writes")
    add("--max-minutes", type=float, default=20.0, help="abort after this")
    add("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    return parser


async def bounded(args: argparse.Namespace) -> Results:
    with trio.fail_after(args.max_minutes * 60):
        return await run(args)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(raw)
    args.argv = raw
    for flag in ("keys", "txn_ops", "snapshot_every", "max_writes"):
        if getattr(args, flag) < 1:
            print(f"--{flag.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    started = time.monotonic()
    try:
        results = trio.run(bounded, args)
    except (BenchError, trio.TooSlowError) as exc:
        print(f"bench.membership failed: {exc!r}", file=sys.stderr)
        return 1
    text = markdown(results, args, time.monotonic() - started)
    print(text)
    if not args.no_doc:
        update_doc(text)
        print(f"written: {DOC.relative_to(ROOT)}")
    return 1 if results.lost else 0


if __name__ == "__main__":
    sys.exit(main())
