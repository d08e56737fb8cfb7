"""The PySyncObj side of the embedded comparison: a worker process of ``make bench``.

Three PySyncObj nodes on 127.0.0.1, each its own process, replicating a ``ReplDict``: this
process runs the leader with the client and starts the two followers as
``python -m bench.pysyncobj_side follower ...``. PySyncObj runs with its defaults (in-memory
log, batched appends on its 50 ms tick), except the election timeouts, chosen as in
``bench.write`` so that the node with the client leads: 0.4-1.4 s (the default) here, 3-4 s
on the followers. Commands arrive one JSON object a line on stdin, results leave as
``RESULT {...}`` on stdout; the worker stops, with its followers, when its stdin ends (the
followers stop when theirs does, so they cannot outlive it).

    python -m bench.pysyncobj_side leader
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from typing import Any

from pysyncobj import SyncObj, SyncObjConf, SyncObjException
from pysyncobj.batteries import ReplDict

from bench.measure import Run, run_from_latencies
from bench.procs import send_result

VALUE = bytes(range(256))
READY_TIMEOUT_S = 20.0
CALL_TIMEOUT_S = 10.0
FOLLOWER_LIFETIME_S = 1800.0
"""A follower whose leader vanished without closing its stdin still ends."""


COMPACTION_OFF = {"logCompactionMinEntries": 2**62, "logCompactionMinTime": 1e12}
"""Log compaction (a forked full dump) never starts: our engine has no snapshots yet."""


def conf(leader: bool, compaction: bool = True) -> SyncObjConf:
    # connectionTimeout must be >= raftMaxTimeout; only elections depend on these values.
    if leader:
        timeouts = {"raftMinTimeout": 0.4, "raftMaxTimeout": 1.4}
    else:
        timeouts = {"raftMinTimeout": 3.0, "raftMaxTimeout": 4.0}
    extra: dict[str, float] = {} if compaction else COMPACTION_OFF
    # A node campaigns only once connected to another, and redials an unreachable one every
    # connectionRetryTime (5 s by default): when the followers were not listening yet at the
    # leader's first dial (four clusters starting at once in make bench), the followers found
    # each other first and one won term 1, three attempts in a row. Redial every 0.2 s.
    return SyncObjConf(
        connectionTimeout=5.0,
        connectionRetryTime=0.2,
        maxBindRetries=5,
        **timeouts,
        **extra,
    )


def follower(self_address: str, partners: list[str], compaction: bool) -> int:
    node = SyncObj(self_address, partners, consumers=[ReplDict()], conf=conf(False, compaction))
    reader = threading.Thread(target=sys.stdin.read, daemon=True)
    reader.start()
    reader.join(FOLLOWER_LIFETIME_S)  # returns at EOF: the leader's worker is gone
    node.destroy()
    return 0


class Leader:
    def __init__(self, addresses: list[str], compaction: bool) -> None:
        self.data = ReplDict()
        self.node = SyncObj(
            addresses[0], addresses[1:], consumers=[self.data], conf=conf(True, compaction)
        )

    def wait_leading(self) -> int:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            status = self.node.getStatus()
            if status["leader"] is not None and status["leader"] != self.node.selfNode:
                break  # another node won: no point waiting
            if status["leader"] == self.node.selfNode and self.node.isReady():
                # The first write of the term commits: the followers are caught up.
                self.data.set(b"warmup", VALUE, sync=True, timeout=CALL_TIMEOUT_S)
                return int(status["raft_term"])
            time.sleep(0.05)
        raise RuntimeError(f"the in-process node did not lead: {self.node.getStatus()}")

    def check_leading(self, term: int, phase: str) -> None:
        status = self.node.getStatus()
        if status["leader"] != self.node.selfNode or status["raft_term"] != term:
            raise RuntimeError(f"lost leadership during {phase}: {status['raft_term']}")

    def sync_writes(self, count: int, tag: str) -> Run:
        latencies = []
        started = time.perf_counter()
        for i in range(count):
            t = time.perf_counter()
            self.data.set(f"y{tag}-{i:08d}".encode(), VALUE, sync=True, timeout=CALL_TIMEOUT_S)
            latencies.append(time.perf_counter() - t)
        return run_from_latencies(count, time.perf_counter() - started, latencies)

    def pipelined_writes(self, count: int, tag: str, timeout_s: float) -> Run:
        """Submit ``count`` writes with callbacks at once; done when every callback ran."""
        sent = [0.0] * count
        latencies: list[float] = []
        failures: list[object] = []
        all_done = threading.Event()
        lock = threading.Lock()

        def callback_for(i: int) -> Any:
            def callback(_result: object, error: object) -> None:
                now = time.perf_counter()
                with lock:
                    if error:  # FAIL_REASON.SUCCESS is 0
                        failures.append(error)
                    latencies.append(now - sent[i])
                    if len(latencies) == count:
                        all_done.set()

            return callback

        started = time.perf_counter()
        for i in range(count):
            sent[i] = time.perf_counter()
            self.data.set(f"p{tag}-{i:08d}".encode(), VALUE, callback=callback_for(i))
        if not all_done.wait(timeout_s):
            raise RuntimeError(f"{len(latencies)}/{count} callbacks within {timeout_s} s")
        run = run_from_latencies(count, time.perf_counter() - started, latencies)
        if failures:
            raise RuntimeError(f"{len(failures)} writes failed, e.g. {failures[0]}")
        return run


START_ATTEMPTS = 3


def stop_followers(followers: list[subprocess.Popen[bytes]]) -> None:
    for process in followers:
        if process.stdin is not None:
            process.stdin.close()
    for process in followers:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    followers.clear()


def start_cluster(followers: list[subprocess.Popen[bytes]], compaction: bool) -> tuple[Leader, int]:
    """The leader (bound before its followers start, so it campaigns first) and two
    followers; a fresh cluster on fresh ports if another node won (bounded attempts)."""
    from tests.support.cluster import free_ports

    failure = ""
    for _ in range(START_ATTEMPTS):
        addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
        leader = Leader(addresses, compaction)
        try:
            leader.node.waitBinded()
        except SyncObjException as exc:  # the port was taken meanwhile: new ports
            failure = repr(exc)
            leader.node.destroy()
            continue
        for i in (1, 2):
            partners = [a for a in addresses if a != addresses[i]]
            command = [sys.executable, "-m", "bench.pysyncobj_side", "follower", addresses[i]]
            command += [*partners, *([] if compaction else ["--no-compaction"])]
            followers.append(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            )
        try:
            return leader, leader.wait_leading()
        except RuntimeError as exc:
            failure = str(exc)
            leader.node.destroy()
            stop_followers(followers)
    raise RuntimeError(f"{START_ATTEMPTS} attempts: {failure}")


def leader_main(phase_timeout_s: float, compaction: bool) -> int:
    followers: list[subprocess.Popen[bytes]] = []
    try:
        try:
            leader, term = start_cluster(followers, compaction)
        except Exception as exc:
            send_result(error=str(exc))
            return 1
        send_result(ready=True, term=term)
        for line in sys.stdin:
            command = json.loads(line)
            cpu0 = time.process_time()
            try:
                leader.check_leading(term, "the pause between phases")
                tag = str(command.get("round", 0))
                if command["phase"] == "sync":
                    run = leader.sync_writes(command["count"], tag)
                elif command["phase"] == "pipelined":
                    run = leader.pipelined_writes(command["count"], tag, phase_timeout_s)
                else:
                    raise RuntimeError(f"unknown phase {command['phase']!r}")
                leader.check_leading(term, command["phase"])
            except Exception as exc:
                send_result(error=f"PySyncObj {command.get('phase')}: {exc!r}")
                continue
            send_result(**run.as_dict(), cpu_s=time.process_time() - cpu0)
        leader.node.destroy()
        return 0
    finally:
        stop_followers(followers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pysyncobj_side")
    sub = parser.add_subparsers(dest="role", required=True)
    lead = sub.add_parser("leader")
    lead.add_argument("--phase-timeout", type=float, default=120.0)
    for role in (lead, follow := sub.add_parser("follower")):
        role.add_argument(
            "--no-compaction", action="store_true", help="never start PySyncObj's log compaction"
        )
    follow.add_argument("address")
    follow.add_argument("partners", nargs=2)
    args = parser.parse_args(argv)
    if args.role == "follower":
        return follower(args.address, args.partners, not args.no_compaction)
    return leader_main(args.phase_timeout, not args.no_compaction)


if __name__ == "__main__":
    sys.exit(main())
