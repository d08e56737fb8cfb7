"""What one measured run yields, and how runs of the same thing are combined.

A run is a count of operations, the wall time they took and the latency of each (or, for
loads whose per-operation latency the load generator reports, its percentiles). Repeated runs
of one scenario are combined by their median, and two scenarios are compared as the ratio of
those medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Run:
    """One run of one scenario: ``ops`` operations in ``elapsed_s`` seconds."""

    ops: int
    elapsed_s: float
    p50_s: float
    p99_s: float
    errors: int = 0

    @property
    def throughput(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        return cls(
            ops=int(data["ops"]),
            elapsed_s=float(data["elapsed_s"]),
            p50_s=float(data["p50_s"]),
            p99_s=float(data["p99_s"]),
            errors=int(data.get("errors", 0)),
        )


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def run_from_latencies(ops: int, elapsed_s: float, latencies_s: list[float]) -> Run:
    ordered = sorted(latencies_s)
    return Run(ops, elapsed_s, percentile(ordered, 50), percentile(ordered, 99))


@dataclass(frozen=True)
class Combined:
    """Medians over the runs of one scenario."""

    runs: int
    throughput: float
    p50_s: float
    p99_s: float
    errors: int

    @classmethod
    def of(cls, runs: Sequence[Run]) -> Combined:
        if not runs:
            nan = float("nan")
            return cls(0, nan, nan, nan, 0)
        return cls(
            runs=len(runs),
            throughput=statistics.median(r.throughput for r in runs),
            p50_s=statistics.median(r.p50_s for r in runs),
            p99_s=statistics.median(r.p99_s for r in runs),
            errors=sum(r.errors for r in runs),
        )


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b else float("nan")
