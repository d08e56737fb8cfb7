"""What every suite that runs real nodes needs, once: free ports, bounded waits, node files.

Used by the end-to-end, integration and chaos suites and by the benchmarks. A cluster's node
files are built as :class:`NodeConfig` values and written with :func:`render_toml`, so the
file a node reads is the configuration the test built (``render_toml`` round-trips through
``load_config``, see ``tests/unit/test_config.py``). Every wait polls a condition under a
deadline; nothing sleeps in place of a condition.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from dengine_trio.config import ClusterConfig, NodeConfig, PeerConfig, load_config, render_toml

__all__ = ["free_ports", "node_config", "wait_until", "wait_until_async", "write_cluster"]

T = TypeVar("T")

Settings = Mapping[str, object]
"""Dotted keys as in the file and in ConfigError (``"raft.timing.request_timeout_ms"``) to
values of the schema's types (ints, bools, strings, ``ReadPolicy``, ``Durability``)."""


LOWEST_TEST_PORT = 15000
"""Test ports are drawn from here up to the kernel's ephemeral range: above the ports a
developer's own cluster uses (8080-8083, 9081-9085, 10001-10005)."""


def _ephemeral_ports() -> range:
    """``net.ipv4.ip_local_port_range``: where connect() and bind(port 0) take their ports."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on every interface right now.

    Drawn at random below the kernel's ephemeral range, so that no outgoing connection (the
    nodes dial their peers from the first moment) takes one as its source port between this
    call and the bind; ports chosen by bind(port 0) are in that range and raced exactly so.
    Each is checked by binding it on 0.0.0.0 (free for a wildcard listener as well as for
    127.0.0.1), and all are held until all are chosen. Another process may still take one
    before the test binds it.
    """
    ephemeral = _ephemeral_ports()
    candidates = range(LOWEST_TEST_PORT, ephemeral.start)
    if ephemeral.start <= LOWEST_TEST_PORT:  # an unusual range: let the kernel choose
        candidates = range(0, 0)
    chooser = random.SystemRandom()  # not the random module: tests seed it alike
    socks: list[socket.socket] = []
    try:
        for port in chooser.sample(candidates, min(len(candidates), 20 * count + 100)):
            if len(socks) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                sock.close()
                continue
            socks.append(sock)
        while len(socks) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _timed_out(check: Callable[[], object], timeout_s: float, what: str | None) -> AssertionError:
    waited_for = what or getattr(check, "__qualname__", repr(check))
    return AssertionError(f"timed out after {timeout_s:g} s waiting for {waited_for}")


def wait_until(
    check: Callable[[], T | None],
    timeout_s: float = 15.0,
    what: str | None = None,
    *,
    interval_s: float = 0.05,
) -> T:
    """Poll ``check`` (blocking) until it returns something other than None or False.

    Returns that value. Raises AssertionError naming ``what`` after ``timeout_s`` seconds.
    For synchronous tests driving node processes; in a trio test use
    :func:`wait_until_async`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise _timed_out(check, timeout_s, what)
        time.sleep(interval_s)


async def wait_until_async(
    check: Callable[[], T | None],
    timeout_s: float = 15.0,
    what: str | None = None,
    *,
    interval_s: float = 0.01,
) -> T:
    """:func:`wait_until` for trio code: the same contract, polling with ``trio.sleep``."""
    deadline = trio.current_time() + timeout_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if trio.current_time() > deadline:
            raise _timed_out(check, timeout_s, what)
        await trio.sleep(interval_s)


def _with_settings(sections: dict[str, Any], settings: Settings) -> None:
    """Set each dotted key inside ``sections`` (NodeConfig's fields but ``path``), in place."""
    for dotted, value in settings.items():
        section, *keys = dotted.split(".")
        if section not in sections or not keys:
            raise KeyError(f"{dotted!r} names no key of the node file")
        sections[section] = _evolve(sections[section], keys, value, dotted)


def _evolve(table: Any, keys: list[str], value: object, dotted: str) -> Any:
    name, *rest = keys
    if not attrs.has(type(table)) or name not in attrs.fields_dict(type(table)):
        raise KeyError(f"{dotted!r} names no key of the node file")
    if rest:
        value = _evolve(getattr(table, name), rest, value, dotted)
    return attrs.evolve(table, **{name: value})


def node_config(
    path: Path,
    node_id: int,
    listen_address: str,
    member_addresses: Mapping[int, str],
    db_dir: Path,
    settings: Settings | None = None,
) -> NodeConfig:
    """Node ``node_id`` of the members ``{id: address}``; every other key from ``settings``
    or the documented default. Raises ConfigError if the result is not a valid node."""
    cluster = ClusterConfig(
        node_id=node_id,
        listen_address=listen_address,
        initial_cluster=[PeerConfig(i, a) for i, a in sorted(member_addresses.items())],
        db_root_dir=db_dir.as_posix(),
    )
    # Applied to the sections first, validated once: a setting may only be valid together
    # with another (election_timeout_min_ms with _max_ms; behind_proxy with listen_address).
    sections: dict[str, Any] = {"cluster": cluster}
    for field in attrs.fields(NodeConfig):
        factory = getattr(field.default, "factory", None)  # the sections' attrs.Factory
        if field.name not in sections and factory is not None:
            sections[field.name] = factory()
    _with_settings(sections, settings or {})
    return NodeConfig(path=path, **sections)


def write_cluster(
    root: Path,
    raft_ports: Sequence[int],
    settings: Settings | None = None,
    *,
    node_settings: Callable[[int], Settings] | None = None,
    member_addresses: Sequence[str] | None = None,
    db_dir: Callable[[int], Path] | None = None,
    host: str = "127.0.0.1",
) -> list[NodeConfig]:
    """Write ``root/n<id>.toml`` for nodes 1..len(raft_ports); return them as loaded.

    Node ``i`` listens on ``host:raft_ports[i-1]``. Its peers dial it there, or at
    ``member_addresses[i-1]`` (a proxy in front: set ``cluster.behind_proxy`` in
    ``settings``). ``settings`` apply to every node, then ``node_settings(i)`` to node ``i``.
    Data lives in ``db_dir(i)``, by default ``root/db/<i>``. What is returned is what
    ``load_config`` reads from each file, i.e. what a node process started on it uses.
    """
    root.mkdir(parents=True, exist_ok=True)
    ids = range(1, len(raft_ports) + 1)
    listen = {i: f"{host}:{raft_ports[i - 1]}" for i in ids}
    members = dict(zip(ids, member_addresses, strict=True)) if member_addresses else listen
    configs = []
    for i in ids:
        path = root / f"n{i}.toml"
        cfg = node_config(
            path,
            i,
            listen[i],
            members,
            db_dir(i) if db_dir else root / "db" / str(i),
            {**(settings or {}), **(node_settings(i) if node_settings else {})},
        )
        path.write_text(render_toml(cfg), encoding="utf-8")
        configs.append(load_config(path))
    return configs
