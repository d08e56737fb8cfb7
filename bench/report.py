"""Tables, targets, chart and ``docs/benchmarks.md`` section of ``make bench``.

Each scenario's runs are combined by their medians (``bench.measure.Combined``); every
comparison is a ratio of two such medians, both measured in the same run of the suite.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.measure import Combined, Run, ratio

BEGIN = "<!-- make bench: begin (generated, replaced on every run) -->"
END = "<!-- make bench: end -->"


@dataclass
class Scenario:
    """Something measured ``runs`` times: who (``system``), what, under which load."""

    key: str
    section: str  # "embedded" or "http"
    system: str
    operation: str
    load: str
    runs: list[Run] = field(default_factory=list)
    failure: str | None = None

    @property
    def combined(self) -> Combined:
        return Combined.of(self.runs)


@dataclass
class Target:
    """A goal of issue 7 or 13 with its measurement."""

    goal: str
    measured: str
    met: bool | None  # None: not measured


@dataclass
class Report:
    header: list[str]
    scenarios: dict[str, Scenario]
    comparisons: list[tuple[str, str]]
    targets: list[Target]
    notes: list[str]
    sections: list[tuple[str, str]] = field(default_factory=list)
    """(title, markdown body) printed after the tables, e.g. ``bench.snapshots``'s."""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for a report's header ("unknown CPU" off
    Linux or when it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def fmt_rate(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}"


def fmt_ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    ms = seconds * 1000
    if abs(ms) < 0.1:
        return f"{ms * 1000:.1f} µs"
    return f"{ms:.2f} ms"


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def scenario_table(scenarios: Sequence[Scenario]) -> str:
    rows = [
        "| system | operation | load | runs | ops/s (median) | p50 (median) | p99 (median) "
        "| errors |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        c = s.combined
        if s.failure and not s.runs:
            rows.append(f"| {s.system} | {s.operation} | {s.load} | 0 | failed: {s.failure} |||")
            continue
        rows.append(
            f"| {s.system} | {s.operation} | {s.load} | {c.runs} | {fmt_rate(c.throughput)} "
            f"| {fmt_ms(c.p50_s)} | {fmt_ms(c.p99_s)} | {c.errors} |"
        )
    return "\n".join(rows)


def markdown(report: Report) -> str:
    embedded = [s for s in report.scenarios.values() if s.section == "embedded"]
    http = [s for s in report.scenarios.values() if s.section == "http"]
    kv2 = [s for s in report.scenarios.values() if s.section == "kv2"]
    parts = [*report.header, ""]
    parts += ["#### Targets (issues 7 and 13)", ""]
    parts += ["| target | measured (medians) | |", "|---|---|---|"]
    for t in report.targets:
        verdict = "not measured" if t.met is None else ("**met**" if t.met else "**missed**")
        parts.append(f"| {t.goal} | {t.measured} | {verdict} |")
    parts += ["", "#### Comparisons (ratio of medians, same run, alternating sides)", ""]
    parts += ["| comparison | ratio |", "|---|---:|"]
    parts += [f"| {name} | {value} |" for name, value in report.comparisons]
    if embedded:
        parts += ["", "#### Embedded (client in the leader's process, no HTTP)", ""]
        parts.append(scenario_table(embedded))
    if http:
        parts += ["", "#### HTTP (wrk in its own process, one thread)", ""]
        parts.append(scenario_table(http))
    if kv2:
        parts += [
            "",
            "#### KV API second edition (issue 17; bench.kv2's client in the suite's process)",
            "",
            "CAS and txn: ops/s counts writes (16 per txn request), latency per request. Watch "
            "fan-out: ops/s counts events delivered to all watchers together; p50/p99 are the "
            "delay of an event after its write's acknowledgement reached the writer (negative: "
            "the event came first).",
            "",
        ]
        parts.append(scenario_table(kv2))
    for title, body in report.sections:
        parts += ["", f"#### {title}", "", body.rstrip("\n")]
    if report.notes:
        parts += ["", *[f"* {note}" for note in report.notes]]
    parts += ["", "![make bench chart](benchmarks.png)"]
    return "\n".join(parts) + "\n"


def update_doc(path: Path, section: str) -> None:
    """Replace the generated section of ``path`` (or append it), keeping the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}{END}\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def chart(report: Report, path: Path) -> str | None:
    """A PNG of the throughputs; returns why not, if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is missing (pip install -e '.[bench]')"
    groups = [
        ("Embedded writes (ops/s)", lambda s: s.section == "embedded" and "read" not in s.key),
        (
            "Embedded reads (ops/s, log scale)",
            lambda s: s.section == "embedded" and "read" in s.key,
        ),
        ("HTTP, 16 connections (req/s)", lambda s: s.section == "http" and s.key.endswith("c16")),
    ]
    fig, axes = plt.subplots(1, len(groups), figsize=(18, 7.5))
    for ax, (title, keep) in zip(axes, groups, strict=True):
        chosen = [s for s in report.scenarios.values() if keep(s) and s.runs]
        labels = [f"{s.system}\n{s.operation}\n{s.load}" for s in chosen]
        values = [s.combined.throughput for s in chosen]
        colors = [
            "#888888"
            if s.system.startswith(("ceiling", "PySyncObj"))
            else "#d62728"
            if s.system == "etcd"
            else "#1f77b4"
            for s in chosen
        ]
        bars = ax.barh(range(len(chosen)), values, color=colors)
        ax.set_yticks(range(len(chosen)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if "log" in title:
            ax.set_xscale("log")
        for bar, value in zip(bars, values, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {value:,.0f}",
                va="center",
                fontsize=7,
            )
        ax.margins(x=0.25)
    fig.suptitle(report.header[0].lstrip("# ") if report.header else "make bench", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def ratio_text(a: float, b: float) -> str:
    return fmt_ratio(ratio(a, b))
