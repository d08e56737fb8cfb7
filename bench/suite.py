"""The benchmark suite (``make bench``): embedded against PySyncObj, HTTP against its ceiling
and etcd, every comparison measured in the same run with the sides alternating.

1. **Embedded**, client in the leader's process, three processes per cluster, three clusters
   up at once (ours MemFirst, ours DiskFirst, PySyncObj), each driven by a worker process
   (``bench.embedded_side``, ``bench.pysyncobj_side``). Each round runs every phase on every
   side in turn (A, B, C, A, B, C, ...): single-client writes, 64 concurrent writers (PySyncObj:
   synchronous writes, and pipelined writes with callbacks), and reads per policy.
2. **Snapshots** (``bench.snapshots`` parts 1-3 at ``--snapshot-puts``): overwrites on three
   processes with snapshots on and off (memory, disk, restart, catch-up), one snapshot under
   load. The like-for-like comparison with PySyncObj (both compacting) is part 1's.
3. **HTTP** (``bench.http_side``): wrk against our leader and a follower, the ceiling app and
   etcd, round-robin over every target, at 16 connections (throughput) and at 1 (latency).
4. **KV API second edition** (``bench.kv2``, issue 17): compare-and-swap, a transaction of 16
   puts and watch fan-out (100 watchers), ours and etcd alternating, as ratios.
5. **Membership** (``bench.membership``, issue 14, at ``--membership-keys``): join to voter on
   a loaded cluster, then the write unavailability of removing the leader and of killing it.

Progress goes to stderr; the table is printed at the end and written to
``docs/benchmarks.md`` (between generated-section markers) with a chart in
``docs/benchmarks.png``. Every run is bounded in count and time, the whole suite by
``--max-minutes``; temporary directories are removed and every process group ended, also on
failure or Ctrl+C.

    .venv/bin/python -m bench.suite [--rounds 5] [--http-rounds 5] [--snapshot-puts 100000]
        [--no-doc]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from bench import http_side, kv2, membership, snapshots
from bench.measure import Run, ratio
from bench.procs import Worker, WorkerError, worker
from bench.report import (
    Report,
    Scenario,
    Target,
    chart,
    cpu_model,
    markdown,
    ratio_text,
    update_doc,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"
WORKER_READY_S = 120.0
NO_COMPACTION = "PySyncObj, no log compaction"
CALL_TIMEOUT_S = 120.0


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.scenarios: dict[str, Scenario] = {}
        self.notes: list[str] = []
        self.snapshot_results: snapshots.Results | None = None
        self.membership_results: membership.Results | None = None
        self.membership_options: argparse.Namespace | None = None

    def progress(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)

    def scenario(self, key: str, section: str, system: str, operation: str, load: str) -> Scenario:
        if key not in self.scenarios:
            self.scenarios[key] = Scenario(key, section, system, operation, load)
        return self.scenarios[key]

    def record(self, scenario: Scenario, run: Run, label: str) -> None:
        scenario.runs.append(run)
        extra = f", {run.errors} errors" if run.errors else ""
        self.progress(
            f"{label} {scenario.system} {scenario.operation} ({scenario.load}): "
            f"{run.throughput:,.0f} ops/s, "
            f"p50 {run.p50_s * 1000:.3f} ms, p99 {run.p99_s * 1000:.3f} ms{extra}"
        )

    # ------------------------------------------------------------------ embedded

    async def embedded(self) -> None:
        a = self.args
        python = sys.executable
        ours = {
            s: [python, "-m", "bench.embedded_side", "--strategy", s]
            for s in ("MemFirst", "DiskFirst")
        }
        pso = [python, "-m", "bench.pysyncobj_side", "leader"]
        phases: list[tuple[str, str, str, dict[str, object]]] = [
            # (scenario suffix, operation, load, command) for our clusters
            ("single", "write", "1 client, sequential", {"phase": "single", "count": a.writes}),
            (
                "writers",
                "write",
                f"{a.writers} concurrent writers",
                {"phase": "writers", "count": a.concurrent_writes, "writers": a.writers},
            ),
            (
                "read_eventual",
                "read eventual",
                "1 task, tight loop",
                {"phase": "read_eventual", "count": a.eventual_reads},
            ),
            (
                "read_lease",
                "read lease",
                "1 task, tight loop",
                {"phase": "read_lease", "count": a.lease_reads},
            ),
            (
                "read_linearizable",
                "read linearizable",
                f"{a.writers} concurrent readers",
                {
                    "phase": "read_linearizable",
                    "count": a.linearizable_reads,
                    "readers": a.writers,
                },
            ),
        ]
        self.progress(
            "embedded: starting four clusters (ours MemFirst, DiskFirst; PySyncObj with and "
            "without log compaction)"
        )
        async with (
            worker("MemFirst", ours["MemFirst"], ready_timeout_s=WORKER_READY_S) as mem,
            worker("DiskFirst", ours["DiskFirst"], ready_timeout_s=WORKER_READY_S) as disk,
            worker("PySyncObj", pso, ready_timeout_s=WORKER_READY_S) as syncobj,
            worker(
                "PySyncObj-nc", [*pso, "--no-compaction"], ready_timeout_s=WORKER_READY_S
            ) as syncobj_nc,
        ):
            sides: list[tuple[str, Worker]] = [("MemFirst", mem), ("DiskFirst", disk)]
            failed: dict[str, str] = {}
            for round_no in range(1, a.rounds + 1):
                label = f"embedded {round_no}/{a.rounds}"
                for suffix, operation, load, command in phases:
                    for name, side in sides:
                        s = self.scenario(
                            f"{name} {suffix}", "embedded", f"ours {name}", operation, load
                        )
                        await self.call(side, name, failed, s, label, round=round_no, **command)
                    if suffix == "single":
                        s = self.scenario(
                            "PySyncObj sync",
                            "embedded",
                            "PySyncObj",
                            "write, sync=True",
                            "1 client, sequential",
                        )
                        await self.call(
                            syncobj, "PySyncObj", failed, s, label,
                            phase="sync", count=a.pysyncobj_sync_writes, round=round_no,
                        )  # fmt: skip
                    if suffix == "writers":
                        for key, system, side in (
                            ("PySyncObj pipelined", "PySyncObj", syncobj),
                            ("PySyncObj-nc pipelined", NO_COMPACTION, syncobj_nc),
                        ):
                            s = self.scenario(
                                key,
                                "embedded",
                                system,
                                "write, pipelined (callbacks)",
                                f"{a.concurrent_writes} submitted at once",
                            )
                            await self.call(
                                side, key.split()[0], failed, s, label,
                                phase="pipelined", count=a.concurrent_writes, round=round_no,
                            )  # fmt: skip
            self.notes += [f"{name} stopped early: {why}" for name, why in failed.items()]
        self.progress("embedded: clusters stopped")

    async def call(
        self,
        side: Worker,
        name: str,
        failed: dict[str, str],
        scenario: Scenario,
        label: str,
        **command: object,
    ) -> None:
        if name in failed:
            return
        try:
            result = await side.call(CALL_TIMEOUT_S, **command)
        except (WorkerError, trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
            failed[name] = repr(exc)
            scenario.failure = repr(exc)
            self.progress(f"{label} {name} FAILED: {exc!r}; its remaining phases are skipped")
            return
        self.record(scenario, Run.from_dict(result), label)

    # ------------------------------------------------------------------ snapshots

    async def snapshots(self) -> None:
        """``bench.snapshots`` parts 1-3 at ``--snapshot-puts`` (part 4, 64 writers against
        PySyncObj, is the embedded half's comparison)."""
        n = self.args.snapshot_puts
        options = snapshots.Options(
            puts=n,
            down_for=n // 5,
            today_puts=(n // 20, n // 5),
            snapshot_keys=n,
            parts=("overwrites", "today", "snapshot"),
            phase_timeout_s=CALL_TIMEOUT_S * 3,
            restart_timeout_s=60.0,
        )
        self.progress(
            f"snapshots: {n:,} overwrites of 1,000 keys (snapshots on), the same with them off "
            f"at {n // 20:,} and {n // 5:,}, one snapshot of {n:,} keys"
        )
        self.snapshot_results = await snapshots.run_all(options, CALL_TIMEOUT_S * 4)
        self.progress("snapshots: done")

    # ------------------------------------------------------------------ HTTP

    async def http(self) -> None:
        a = self.args
        wrk = shutil.which("wrk")
        if wrk is None:
            note = f"HTTP part skipped: `wrk` is not installed ({http_side.WRK_INSTALL_HINT})"
            self.notes.append(note)
            self.progress(note)
            return
        self.progress("HTTP: starting our clusters (1 and 2 HTTP workers), 3 ceilings and etcd")
        async with http_side.http_servers(with_etcd=not a.no_etcd) as servers:
            self.notes += servers.notes
            loads = [
                ("c16", a.http_connections, a.http_seconds, f"{a.http_connections} connections"),
                ("c1", 1, a.latency_seconds, "1 connection"),
            ]
            max_requests = a.http_max_requests
            for round_no in range(1, a.http_rounds + 1):
                label = f"HTTP {round_no}/{a.http_rounds}"
                for suffix, connections, seconds, load in loads:
                    for i, target in enumerate(servers.targets):
                        s = self.scenario(
                            f"{target.name} {suffix}", "http", target.system, target.operation, load
                        )
                        if s.failure:
                            continue
                        try:
                            run = await http_side.run_wrk(
                                wrk,
                                target,
                                connections=connections,
                                duration_s=seconds,
                                max_requests=max_requests,
                                prefix=f"w{round_no}{suffix[1:]}{i}",
                            )
                        except (RuntimeError, OSError, trio.TooSlowError) as exc:
                            s.failure = repr(exc)
                            self.progress(f"{label} {target.name} FAILED: {exc!r}")
                            continue
                        if run.ops >= max_requests:
                            self.notes.append(
                                f"{target.name} ({load}) hit the {max_requests}-request bound: "
                                "its throughput is understated"
                            )
                        self.record(s, run, label)
        self.progress("HTTP: servers stopped")

    # ------------------------------------------------------------------ KV API 2nd edition

    async def kv2(self) -> None:
        """Issue 17: CAS, a txn of 16 puts and watch fan-out on our leader (1 HTTP worker)
        and etcd (``bench.kv2``), alternating sides each round."""
        a = self.args
        self.progress("KV2: starting our cluster and etcd (CAS, txn, watch fan-out)")
        root = Path(tempfile.mkdtemp(prefix="dengine-bench-kv2-"))
        try:
            async with AsyncExitStack() as stack:
                ours = await stack.enter_async_context(http_side.our_cluster(root, 1))
                leader = next(t.url for t in ours if t.system == "ours (leader)")
                sides = [kv2.Side("ours", leader)]
                etcd = shutil.which("etcd")
                if etcd and not a.no_etcd:
                    targets = await stack.enter_async_context(http_side.etcd_cluster(root, etcd))
                    sides.append(kv2.Side("etcd", targets[0].url))
                elif not a.no_etcd:
                    self.notes.append("KV2: etcd is not installed, ours alone")
                for round_no in range(1, a.kv2_rounds + 1):
                    label = f"KV2 {round_no}/{a.kv2_rounds}"
                    for side in sides:
                        system = "ours (leader)" if side.name == "ours" else "etcd"
                        try:
                            runs = await kv2.one_round(side, a, f"{round_no}")
                        except (kv2.LoadError, OSError, trio.TooSlowError) as exc:
                            self.notes.append(f"{label} {side.name} failed: {exc!r}")
                            self.progress(self.notes[-1])
                            continue
                        for name, run in runs:
                            load = (
                                f"{a.watch_writes} writes by 4 writers; ops = events delivered, "
                                "latency = event after the write's ack"
                                if name.startswith("watch")
                                else f"{a.connections} connections"
                            )
                            s = self.scenario(f"kv2 {side.name} {name}", "kv2", system, name, load)
                            self.record(s, run, label)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        self.progress("KV2: servers stopped")

    # ------------------------------------------------------------------ membership

    async def membership(self) -> None:
        """Issue 14: ``bench.membership`` at ``--membership-keys`` (join to voter, removing the
        leader and killing it under a steady writer)."""
        a = self.args
        options = membership.build_parser().parse_args(
            ["--keys", str(a.membership_keys), "--no-doc"]
        )
        options.argv = ["--keys", str(a.membership_keys)]
        self.progress(f"membership: {a.membership_keys:,} keys, join node 4, remove the leader")
        try:
            self.membership_results = await membership.run(options)
        except (membership.BenchError, OSError) as exc:
            self.notes.append(f"membership failed: {exc!r}")
            self.progress(self.notes[-1])
            return
        self.membership_options = options
        self.progress("membership: done")

    # ------------------------------------------------------------------ report

    def get(self, key: str) -> Scenario | None:
        s = self.scenarios.get(key)
        return s if s is not None and s.runs else None

    def comparisons_and_targets(self) -> tuple[list[tuple[str, str]], list[Target]]:
        comparisons: list[tuple[str, str]] = []
        targets: list[Target] = []
        mem_w, pso_p = self.get("MemFirst writers"), self.get("PySyncObj pipelined")
        disk_w = self.get("DiskFirst writers")
        mem_s, pso_s = self.get("MemFirst single"), self.get("PySyncObj sync")
        disk_s = self.get("DiskFirst single")
        if mem_w and pso_p:
            r = ratio(mem_w.combined.throughput, pso_p.combined.throughput)
            comparisons.append(
                ("ours MemFirst 64 writers / PySyncObj pipelined (throughput)", f"{r:.2f}x")
            )
            targets.append(
                Target(
                    "Embedded writes, 64 concurrent, MemFirst: >= 1.5x PySyncObj pipelined, "
                    "both compacting their logs (ours: a snapshot every 10,000 entries; "
                    "PySyncObj: a forked dump every 5,000)",
                    f"{mem_w.combined.throughput:,.0f} vs {pso_p.combined.throughput:,.0f} "
                    f"ops/s = {r:.2f}x",
                    r >= 1.5,
                )
            )
        pso_nc = self.get("PySyncObj-nc pipelined")
        if mem_w and pso_nc:
            # Not like for like (ours compacts, this PySyncObj does not): what PySyncObj's
            # compaction costs it shows beside the target's ratio.
            r = ratio(mem_w.combined.throughput, pso_nc.combined.throughput)
            comparisons.append(
                (
                    f"ours MemFirst 64 writers (snapshots on) / {NO_COMPACTION} pipelined "
                    "(throughput)",
                    f"{r:.2f}x",
                )
            )
        if disk_w and pso_p:
            comparisons.append(
                (
                    "ours DiskFirst 64 writers / PySyncObj pipelined (throughput)",
                    ratio_text(disk_w.combined.throughput, pso_p.combined.throughput),
                )
            )
        for name, ours in (("MemFirst", mem_s), ("DiskFirst", disk_s)):
            if ours and pso_s:
                comparisons.append(
                    (
                        f"PySyncObj sync write p50 / ours {name} single-client p50",
                        ratio_text(pso_s.combined.p50_s, ours.combined.p50_s),
                    )
                )
                comparisons.append(
                    (
                        f"ours {name} single client / PySyncObj sync (throughput)",
                        ratio_text(ours.combined.throughput, pso_s.combined.throughput),
                    )
                )
        if mem_s:
            p50 = mem_s.combined.p50_s * 1000
            targets.append(
                Target(
                    "Embedded single-client write p50 <= 1 ms (MemFirst)",
                    f"{p50:.2f} ms (DiskFirst "
                    f"{disk_s.combined.p50_s * 1000 if disk_s else float('nan'):.2f} ms)",
                    p50 <= 1.0,
                )
            )
        for policy, floor in (("eventual", 1_000_000), ("lease", 300_000)):
            found = [s for s in (self.get(f"{n} read_{policy}") for n in ("MemFirst",)) if s]
            if found:
                rate = found[0].combined.throughput
                targets.append(
                    Target(
                        f"Embedded {policy} reads >= {floor:,}/s (leader, MemFirst)",
                        f"{rate:,.0f}/s",
                        rate >= floor,
                    )
                )
        # Issue 17: CAS, txn and watch fan-out, ours / etcd (same run, alternating).
        for name, what in (
            ("CAS", "throughput"),
            (f"txn of {self.args.txn_ops} puts", "writes/s"),
            (f"watch fan-out ({self.args.watchers} watchers)", "events/s delivered"),
        ):
            ours, etcd = self.get(f"kv2 ours {name}"), self.get(f"kv2 etcd {name}")
            if ours and etcd:
                comparisons.append(
                    (
                        f"KV2 {name}: ours / etcd ({what})",
                        ratio_text(ours.combined.throughput, etcd.combined.throughput),
                    )
                )
                label = "delay after ack" if name.startswith("watch") else "latency"
                comparisons.append(
                    (
                        f"KV2 {name}: ours / etcd (p99 {label})",
                        ratio_text(ours.combined.p99_s, etcd.combined.p99_s),
                    )
                )
        # HTTP: every figure of ours (1 and 2 workers) against the ceilings and etcd.
        http_comparisons, http_targets = http_side.comparisons(self.get, self.args.http_connections)
        comparisons += http_comparisons
        targets += http_targets
        return comparisons, targets

    def header(self, elapsed_s: float) -> list[str]:
        a = self.args
        cpu = cpu_model()
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
        command = "make bench" + (
            f"  # = python -m bench.suite {shlex.join(a.argv)}" if a.argv else ""
        )
        return [
            f"### make bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            "",
            f"* **Command**: `{command}` (took {elapsed_s / 60:.1f} min)",
            f"* **Machine**: `nproc` = {len(os.sched_getaffinity(0))}, {cpu}, "
            f"{platform.system()} {platform.release()}; load average at the end {load}",
            f"* **Python**: {platform.python_implementation()} {platform.python_version()}",
            f"* **Load**: embedded {a.rounds} rounds per side (single client {a.writes} puts; "
            f"{a.writers} writers share {a.concurrent_writes} puts; {a.eventual_reads:,} eventual "
            f"and {a.lease_reads:,} lease reads; {a.linearizable_reads:,} linearizable reads by "
            f"{a.writers} readers; PySyncObj {a.pysyncobj_sync_writes} sync writes and "
            f"{a.concurrent_writes} pipelined); HTTP {a.http_rounds} rounds of wrk "
            f"({a.http_seconds:g} s at {a.http_connections} connections, {a.latency_seconds:g} s "
            "at 1). Keys 10-12 bytes, values 256 bytes. "
            f"KV2 (issue 17): {a.kv2_rounds} rounds per side of CAS and txn of {a.txn_ops} puts "
            f"({a.connections} connections, {a.seconds:g} s or {a.max_requests:,} requests) and "
            f"watch fan-out ({a.watchers} watchers, {a.watch_writes} writes), bench.kv2's "
            f"raw HTTP/1.1 client, values 64 bytes; membership (issue 14): bench.membership at "
            f"{a.membership_keys:,} keys.",
        ]


async def run_suite(suite: Suite) -> None:
    a = suite.args
    with trio.fail_after(a.max_minutes * 60):
        if not a.skip_embedded:
            await suite.embedded()
        if not a.skip_snapshots:
            await suite.snapshots()
        if not a.skip_http:
            await suite.http()
        if not a.skip_kv2:
            await suite.kv2()
        if not a.skip_membership:
            await suite.membership()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=(__doc__ or "").split("\n")[0]
    )
    add = parser.add_argument
    add("--rounds", type=int, default=7, help="embedded rounds (each side once a round)")
    add("--writes", type=int, default=500, help="single-client puts per run")
    add("--writers", type=int, default=64, help="concurrent writers (and linearizable readers)")
    add("--concurrent-writes", type=int, default=10_000, help="puts per concurrent run")
    add("--eventual-reads", type=int, default=400_000)
    add("--lease-reads", type=int, default=200_000)
    add("--linearizable-reads", type=int, default=5_000)
    add("--pysyncobj-sync-writes", type=int, default=30, help="PySyncObj sync writes per run")
    add("--http-rounds", type=int, default=5)
    add("--http-seconds", type=float, default=3.0, help="wrk duration of a throughput run")
    add("--latency-seconds", type=float, default=2.0, help="wrk duration at 1 connection")
    add("--http-connections", type=int, default=16)
    add("--http-max-requests", type=int, default=200_000, help="count bound of one wrk run")
    add(
        "--snapshot-puts",
        type=int,
        default=100_000,
        help="bench.snapshots at this size: overwrites (node 3 down for the last fifth) and "
        "keys of the one snapshot; snapshots off at a twentieth and a fifth",
    )
    add("--skip-snapshots", action="store_true")
    add("--no-etcd", action="store_true", help="leave etcd out")
    add("--skip-embedded", action="store_true")
    add("--skip-http", action="store_true")
    add("--skip-kv2", action="store_true", help="leave out CAS, txn and watch fan-out")
    add("--kv2-rounds", type=int, default=3, help="rounds of CAS, txn and watch per side")
    kv2.add_arguments(parser)
    add("--skip-membership", action="store_true", help="leave out bench.membership")
    add(
        "--membership-keys",
        type=int,
        default=200_000,
        help="keys the cluster holds before node 4 joins (make bench-membership: 1,000,000)",
    )
    add("--max-minutes", type=float, default=30.0, help="abort the whole suite after this")
    add("--no-doc", action="store_true", help="do not write docs/benchmarks.md and the chart")
    return parser


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(raw)
    args.argv = raw
    counts = ["rounds", "writes", "writers", "concurrent_writes", "eventual_reads"]
    counts += ["lease_reads", "linearizable_reads", "pysyncobj_sync_writes", "http_rounds"]
    counts += ["snapshot_puts", "kv2_rounds", "membership_keys", "watchers", "watch_writes"]
    for flag in counts:
        if getattr(args, flag) < 1:
            print(f"--{flag.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    suite = Suite(args)
    suite.progress(
        f"make bench: {len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}; "
        f"this takes about 16 minutes (bounded at {args.max_minutes:g})"
    )
    status = 0
    try:
        trio.run(run_suite, suite)
    except trio.TooSlowError:
        suite.notes.append(f"the suite hit its {args.max_minutes:g}-minute bound: partial results")
        status = 1
    except KeyboardInterrupt:
        print("interrupted: partial results, docs not written", file=sys.stderr)
        return 130
    except Exception as exc:
        suite.notes.append(f"the suite failed: {exc!r}")
        print(f"bench failed: {exc!r}", file=sys.stderr)
        status = 1
    elapsed = time.monotonic() - suite.started
    comparisons, targets = suite.comparisons_and_targets()
    report = Report(suite.header(elapsed), suite.scenarios, comparisons, targets, suite.notes)
    if suite.snapshot_results is not None:
        text, snapshot_targets = snapshots.markdown(suite.snapshot_results)
        report.targets += snapshot_targets
        n = args.snapshot_puts
        report.sections.append((f"Snapshots and compaction (bench.snapshots at {n:,})", text))
    if suite.membership_results is not None and suite.membership_options is not None:
        text = membership.markdown(suite.membership_results, suite.membership_options, None)
        report.sections.append(
            (f"Membership (bench.membership at {args.membership_keys:,} keys)", text)
        )
    text = markdown(report)
    print()
    print(text)
    if not args.no_doc and suite.scenarios:
        why_not = chart(report, CHART)
        if why_not:
            print(why_not, file=sys.stderr)
        update_doc(DOC, text)
        print(f"written: {DOC.relative_to(ROOT)}" + ("" if why_not else f", {CHART.name}"))
    suite.progress(f"done in {elapsed / 60:.1f} min")
    return status


if __name__ == "__main__":
    sys.exit(main())
