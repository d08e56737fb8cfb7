"""Where a node's time went during one load run, from its ``/metrics`` (replaces the
monkeypatching ``bench/trace_hook``).

Scrapes every node's ``GET /metrics`` (health ports), runs the given command (e.g. ``wrk``),
scrapes again, and prints for each histogram that moved (heartbeat round trip per peer, log
fsync, state machine apply, HTTP request duration per route) the number of observations in
between, their mean, and the median and p99 estimated from the bucket counts, as PromQL's
``histogram_quantile`` does (linear within a bucket, so the resolution is the bucket's width);
and the counters that moved. Needs no Prometheus.

    .venv/bin/python -m bench.metrics_delta --health 10001,10002,10003 -- \\
        wrk -t1 -c1 -d3s -s bench/kv.lua http://127.0.0.1:8081 -- kv-get g 100000

``--health`` takes ports on 127.0.0.1 or URLs. Exits with the command's status.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

Series = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's name and its labels but ``le``, sorted."""


def scrape(url: str) -> tuple[dict[Series, float], dict[Series, dict[float, float]]]:
    """``url``'s samples: plain ones (name, labels) -> value, and histogram buckets
    (name without ``_bucket``, labels) -> {upper bound: cumulative count}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    plain: dict[Series, float] = {}
    buckets: dict[Series, dict[float, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_bucket"):
                buckets[(s.name.removesuffix("_bucket"), labels)][float(s.labels["le"])] = s.value
            else:
                plain[(s.name, labels)] = s.value
    return plain, buckets


def quantile(q: float, cumulative: dict[float, float]) -> float:
    """PromQL's ``histogram_quantile`` over cumulative bucket counts (upper bound -> count)."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]]
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all we know
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def describe(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""


def report(
    node: str,
    before: tuple[dict[Series, float], dict[Series, dict[float, float]]],
    after: tuple[dict[Series, float], dict[Series, dict[float, float]]],
) -> list[str]:
    lines = [f"{node}:"]
    (plain0, buckets0), (plain1, buckets1) = before, after
    for (name, labels), cumulative in sorted(buckets1.items()):
        earlier = buckets0.get((name, labels), {})
        delta = {b: n - earlier.get(b, 0.0) for b, n in cumulative.items()}
        count = plain1.get((name + "_count", labels), 0.0) - plain0.get(
            (name + "_count", labels), 0.0
        )
        if count <= 0:
            continue
        total = plain1.get((name + "_sum", labels), 0.0) - plain0.get((name + "_sum", labels), 0.0)
        lines.append(
            f"  {name}{describe(labels)}: {count:.0f} observed, mean {total / count * 1e6:.0f} us, "
            f"p50 ~{quantile(0.5, delta) * 1e6:.0f} us, p99 ~{quantile(0.99, delta) * 1e6:.0f} us"
        )
    for (name, labels), value in sorted(plain1.items()):
        if name.endswith("_total") and value != plain0.get((name, labels), 0.0):
            moved = value - plain0.get((name, labels), 0.0)
            lines.append(f"  {name}{describe(labels)}: +{moved:.0f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--health", required=True, help="health ports or URLs, comma-separated")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    urls = [
        (h if "://" in h else f"http://127.0.0.1:{h}").rstrip("/") + "/metrics"
        for h in args.health.split(",")
    ]
    before = [scrape(url) for url in urls]
    status = subprocess.run(command, check=False).returncode
    after = [scrape(url) for url in urls]
    for url, b, a in zip(urls, before, after, strict=True):
        print("\n".join(report(url, b, a)))
    return status


if __name__ == "__main__":
    sys.exit(main())
