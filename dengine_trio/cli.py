"""The node process, e.g. ``python -m dengine_trio --config-path config/n1 --port 8081``.

One trio run per process. Its nursery holds the embedded engine, the KV app on ``--port`` and
the health app on ``--health-port``. The HTTP servers listen at once, whether or not peers are
up: a node never exits because the rest of the cluster is missing.

SIGINT, SIGTERM or SIGHUP (its terminal closed) stops the node gracefully: a leader first hands
leadership to an up-to-date follower (so a planned restart costs about one round trip of
unavailability instead of an election timeout), then the HTTP servers stop (requests still
pending just before their graceful timeout fail with 503 stopped: each gets an answer), then
the engine flushes and stops; exit 0. A second signal more than a second after the first skips
what is left of the graceful part but still flushes; one within that second (make forwarding a
SIGTERM) is the same stop.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from functools import partial
from importlib import metadata

import trio
from hypercorn.trio import serve

from dengine_trio import errors, gc_tuning
from dengine_trio.api import bind_listener, hypercorn_config, kernel_backlog_cap
from dengine_trio.api.health import create_health_app
from dengine_trio.api.kv import create_kv_app
from dengine_trio.api.workers import WorkerPool
from dengine_trio.config import (
    HTTP_WORKERS_MAX,
    ConfigError,
    NodeConfig,
    check_message_limits,
    http_ssl_context,
    load_config,
)
from dengine_trio.engine import EmbeddedEngine
from dengine_trio.log import LEVELS, LOG_FORMATS, parse_level, setup_logging
from dengine_trio.metrics.http import instrument_app
from dengine_trio.metrics.prometheus import PrometheusSink
from dengine_trio.runtime.node import MAX_COMMAND_BYTES
from dengine_trio.storage import StorageError
from dengine_trio.wire import MAX_FRAME_BYTES

__all__ = [
    "EXIT_CONFIG",
    "EXIT_STARTUP",
    "build_parser",
    "load_node_config",
    "main",
    "package_version",
    "serve_node",
]

EXIT_CONFIG = 2
"""Exit status for a configuration or usage error (as argparse uses for usage errors)."""
EXIT_STARTUP = 1
"""Exit status when the node cannot start, e.g. a port is taken."""

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each starts the graceful stop. SIGHUP is a closed terminal: by default it would kill the node
with no hand-over, no final flush and no line saying why."""

REPEAT_WINDOW_S = 1.0
"""A stop signal this soon (seconds) after the first one is part of the same stop."""

DEFAULT_HOST = "0.0.0.0"
KV_PORT_BASE = 8080
HEALTH_PORT_BASE = 10000

log = logging.getLogger("dengine_trio.node")


def build_parser() -> argparse.ArgumentParser:
    """The command line of a node process."""
    parser = argparse.ArgumentParser(
        prog="dengine-trio",
        description="Run one node of a dengine_trio cluster: the embedded Raft engine, "
        "the KV HTTP API and the health API.",
        epilog="Client tools for a running cluster: dengine-trio status --endpoints URL,..., "
        "dengine-trio kv get|put|del ..., dengine-trio snapshot save|status|restore ..., "
        "dengine-trio member list|add|promote|remove ... and dengine-trio leader transfer "
        "(see dengine-trio COMMAND --help).",
    )
    parser.add_argument(
        "--config-path",
        help="node TOML file, with or without .toml (the CONFIG_PATH environment variable "
        "overrides it)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"KV API port (default {KV_PORT_BASE} + node_id, e.g. 8081 for node 1)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        help=f"health API port (default {HEALTH_PORT_BASE} + node_id, e.g. 10001 for node 1)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address both APIs bind (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "info"),
        help=f"one of {', '.join(LEVELS)} (default: $LOG_LEVEL, else info)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        help="text (for people, the default) or json (one JSON object per line: time, level, "
        "node, logger, event, message, fields; see docs/monitoring.md)",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every HTTP request (off by default)"
    )
    parser.add_argument(
        "--http-workers",
        type=int,
        help="processes serving the KV port: 1 serves it in the node's process, N > 1 runs N "
        f"HTTP worker processes in front of it (default: ${HTTP_WORKERS_ENV}, else [http] "
        "workers, else 1)",
    )
    parser.add_argument(
        "--stop-on-stdin-close",
        action="store_true",
        help="stop gracefully, as on SIGTERM, once standard input reaches end of file (for a "
        "supervisor holding the other end of a pipe: the node stops when the supervisor dies)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    return parser


def package_version() -> str:
    """The installed distribution's version (``pyproject.toml``), from its metadata."""
    try:
        return metadata.version("dengine_trio")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _fail(message: str) -> int:
    print(f"dengine-trio: {message}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None, *, held_signals: Sequence[int] = ()) -> int:
    """Run a node until SIGINT/SIGTERM/SIGHUP; return the process exit status.

    0 after a graceful stop; :data:`EXIT_CONFIG` (2) for a usage or configuration error, one
    line on stderr; :data:`EXIT_STARTUP` (1) when the node cannot start (a port taken, the
    ``db_root_dir`` locked or damaged), one log line; 130 for a SIGINT that came before the
    node could receive it. Raises nothing but a bug of the node's own.
    ``held_signals`` is a list the caller's own handler appends :data:`STOP_SIGNALS` to until the
    node installs its receiver; each counts as if it had arrived afterwards.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    config_arg = os.environ.get("CONFIG_PATH") or args.config_path
    if not config_arg:
        return _fail("no configuration: pass --config-path or set CONFIG_PATH")
    try:
        level = parse_level(args.log_level)
    except ValueError as exc:
        return _fail(str(exc))
    if args.log_format not in LOG_FORMATS:
        return _fail(f"--log-format: {args.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    try:
        config = load_node_config(config_arg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG

    node_id = config.cluster.node_id
    http_workers = _http_workers(args.http_workers, config)
    if isinstance(http_workers, str):
        return _fail(http_workers)
    port = KV_PORT_BASE + node_id if args.port is None else args.port
    health_port = HEALTH_PORT_BASE + node_id if args.health_port is None else args.health_port
    for flag, value in (("--port", port), ("--health-port", health_port)):
        if not 0 <= value <= 65535:
            return _fail(f"{flag}: {value} is not a TCP port")
    if port == health_port and port != 0:
        return _fail(f"--port and --health-port must differ (both {port})")
    raft_host, raft_port = config.listen_host_port()
    for flag, value in (("--port", port), ("--health-port", health_port)):
        if value == raft_port and _same_interface(args.host, raft_host):
            return _fail(
                f"{flag}: {value} is this node's Raft port "
                f"(cluster.listen_address = {config.cluster.listen_address!r} in {config.path})"
            )

    setup_logging(level, node_id, args.log_format)
    cap = kernel_backlog_cap()
    if cap is not None and cap < config.http.listen_backlog:
        log.warning(
            "http.listen_backlog = %d is capped by the kernel at net.core.somaxconn = %d: "
            "a burst above %d simultaneous connects may be refused (raise it with "
            "sysctl -w net.core.somaxconn=%d)",
            config.http.listen_backlog,
            cap,
            cap,
            config.http.listen_backlog,
        )
    listeners: list[socket.socket] = []
    for what, value in (("KV API", port), ("health API", health_port)):
        try:
            listeners.append(bind_listener(args.host, value))
        except OSError as exc:
            log.error("cannot listen on %s:%d for the %s: %s", args.host, value, what, exc)
            for sock in listeners:
                sock.close()
            return EXIT_STARTUP
    worker_args = ["--node-id", str(node_id)]
    worker_args += ["--log-level", args.log_level, "--log-format", args.log_format]
    worker_args += ["--access-log"] if args.access_log else []
    gc_tuning.tune_for_serving()
    try:
        trio.run(
            partial(
                serve_node,
                config,
                *listeners,
                access_log=args.access_log,
                held_signals=held_signals,
                stop_on_stdin_close=args.stop_on_stdin_close,
                http_workers=http_workers,
                worker_args=worker_args,
            )
        )
    except KeyboardInterrupt:  # SIGINT before the receiver, when no one held it for us
        return 130
    except Exception as exc:
        cause = next(_startup_errors(exc), None)
        if cause is None:
            raise
        log.error("node %d cannot run: %s", node_id, _describe(cause, config))
        return EXIT_STARTUP
    return 0


HTTP_WORKERS_ENV = "DENGINE_HTTP_WORKERS"
"""Environment variable that overrides ``[http] workers`` (``--http-workers`` overrides it)."""


def _http_workers(flag: int | None, config: NodeConfig) -> int | str:
    """The number of KV port processes: ``--http-workers``, else ``$DENGINE_HTTP_WORKERS``,
    else ``[http] workers``; a one-line problem (str) if out of range."""
    if flag is not None:
        source, value = "--http-workers", str(flag)
    elif os.environ.get(HTTP_WORKERS_ENV):
        source, value = HTTP_WORKERS_ENV, os.environ[HTTP_WORKERS_ENV]
    else:
        return config.http.workers
    try:
        workers = int(value)
    except ValueError:
        workers = 0
    if not 1 <= workers <= HTTP_WORKERS_MAX:
        return f"{source}: {value!r} is not a number of workers from 1 to {HTTP_WORKERS_MAX}"
    return workers


def load_node_config(path: str) -> NodeConfig:
    """:func:`load_config`, plus the sizes the transport can carry.

    Raises ConfigError (one line: file, key, problem) for either; ``limits`` whose largest
    write, or a ``max_bytes_per_msg``, exceeds one transport frame are refused here.
    """
    config = load_config(path)
    check_message_limits(config, MAX_COMMAND_BYTES, MAX_FRAME_BYTES)
    return config


def _startup_errors(exc: BaseException) -> Iterator[Exception]:
    """Errors a node cannot run through (the OS refused something, the db_root_dir is locked
    or corrupt) inside ``exc``, looking through (trio's) exception groups."""
    if isinstance(exc, (OSError, StorageError)):
        yield exc
    for inner in getattr(exc, "exceptions", ()):
        yield from _startup_errors(inner)


def _same_interface(host: str, other: str) -> bool:
    """Two binds on these hosts (not resolved) collide on an equal port."""
    wildcards = ("0.0.0.0", "::", "")
    return host in wildcards or other in wildcards or host.lower() == other.lower()


_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _describe(cause: Exception, config: NodeConfig) -> str:
    """``cause`` for the operator. The HTTP ports are bound (and named) before the engine
    starts, so a bind error from inside it is the Raft listener's, which trio does not name."""
    if isinstance(cause, OSError) and cause.filename is None and cause.errno in _BIND_ERRNOS:
        return (
            f"cannot listen on {config.cluster.listen_address} for the Raft port "
            f"(cluster.listen_address in {config.path}): {cause.strerror or cause}"
        )
    return str(cause)


async def serve_node(
    config: NodeConfig,
    kv_listener: socket.socket,
    health_listener: socket.socket,
    *,
    access_log: bool = False,
    held_signals: Sequence[int] = (),
    stop_on_stdin_close: bool = False,
    http_workers: int = 1,
    worker_args: Sequence[str] = (),
) -> None:
    """Run the engine and both HTTP apps on the given bound sockets until a stop signal.

    With ``http_workers`` > 1 that many HTTP worker processes (started with ``worker_args``;
    :mod:`dengine_trio.api.workers`) serve the KV port on ``kv_listener`` and pass its
    requests to this process.

    Once both servers listen, the objects of startup are frozen out of garbage collection
    (:func:`dengine_trio.gc_tuning.freeze_startup`: this runs a node's process).
    Signals in ``held_signals`` (see :func:`main`) count as received once the receiver is up.
    With ``stop_on_stdin_close``, end of file on standard input counts as a SIGTERM.
    Returns after the graceful stop described in the module docstring. Raises OSError or
    ``StorageError`` (possibly inside an exception group) if the engine cannot start.
    """
    timing = config.raft.timing
    kv_address = _address(kv_listener)
    health_address = _address(health_listener)
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with EmbeddedEngine.start(config, metrics=PrometheusSink()) as engine:
            http = config.http
            tls = http_ssl_context(http)
            limits = partial(
                hypercorn_config,
                backlog=http.listen_backlog,
                access_log=access_log,
                max_header_bytes=http.max_header_bytes,
                max_connections=http.max_connections,
                tls_handshake_timeout_s=http.tls_handshake_timeout_ms / 1000,
                idle_timeout_s=http.idle_timeout_ms / 1000,
            )
            health_config = limits(health_listener, ssl_context=tls if http.health_tls else None)
            kv_config = None if http_workers > 1 else limits(kv_listener, ssl_context=tls)
            http_stop = trio.Event()
            with trio.CancelScope() as graceful:
                async with trio.open_nursery() as nursery:
                    shutdown = partial(
                        _shut_down,
                        engine,
                        http_stop,
                        timing.election_timeout_max_ms / 1000,
                        max(0.0, health_config.graceful_timeout - ANSWER_MARGIN_S),
                    )
                    nursery.start_soon(
                        _watch_signals, signals, held_signals, nursery, shutdown, graceful
                    )
                    nursery.start_soon(_report_ready, engine, timing.request_timeout_ms / 1000)
                    if stop_on_stdin_close:
                        nursery.start_soon(_sigterm_at_stdin_eof)
                    async with trio.open_nursery() as servers:
                        kv_app = create_kv_app(engine)
                        health_app = create_health_app(engine)
                        instrument_app(kv_app, engine.metrics)
                        instrument_app(health_app, engine.metrics)
                        if kv_config is None:
                            pool = WorkerPool(
                                kv_app,
                                kv_listener,
                                http_workers,
                                http,
                                worker_args,
                                health_config.graceful_timeout,
                                http.listen_backlog,
                            )
                            engine.metrics.watch_http_workers(pool.pids, lambda: pool.restarts)
                            await servers.start(pool.run, http_stop)
                        else:
                            await servers.start(
                                partial(serve, kv_app, kv_config, shutdown_trigger=http_stop.wait)
                            )
                        await servers.start(
                            partial(
                                serve, health_app, health_config, shutdown_trigger=http_stop.wait
                            )
                        )
                        log.info(
                            "KV API on %s://%s%s, health API on %s://%s%s",
                            "https" if tls else "http",
                            kv_address,
                            f" ({http_workers} HTTP worker processes)" if http_workers > 1 else "",
                            "https" if tls and http.health_tls else "http",
                            health_address,
                            ", bearer tokens required" if config.auth.enable else "",
                        )
                        frozen = gc_tuning.freeze_startup()
                        log.debug("%d objects of startup frozen out of garbage collection", frozen)
                    log.info("HTTP servers stopped")
                    nursery.cancel_scope.cancel()
            log.info("stopping the engine")
            await engine.stop()
    log.info("stopped")


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


async def _watch_signals(
    signals: AsyncIterator[int],
    held_signals: Sequence[int],
    nursery: trio.Nursery,
    shutdown: Callable[[], Awaitable[None]],
    graceful: trio.CancelScope,
) -> None:
    """First signal: start the graceful shutdown. Another one, later than
    :data:`REPEAT_WINDOW_S` after the first: cut what is left of it.

    A repeat inside the window is the same stop, not impatience: ``kill %1`` on a
    ``make start-nodeN`` job signals make and the node, and make forwards its SIGTERM too.
    """
    first_at: float | None = None

    def on_signal(signum: int) -> None:
        nonlocal first_at
        name = signal.Signals(signum).name
        now = trio.current_time()
        if first_at is None:
            first_at = now
            log.info("%s received: shutting down", name)
            nursery.start_soon(shutdown)
        elif now - first_at <= REPEAT_WINDOW_S:
            log.info(
                "%s received again within %.0f s: already stopping (send it again later to "
                "skip the rest of the graceful shutdown)",
                name,
                REPEAT_WINDOW_S,
            )
        else:
            log.warning("%s received again: skipping the rest of the graceful shutdown", name)
            graceful.cancel()

    # The receiver is open by now, so nothing more lands in held_signals.
    for signum in list(held_signals):
        on_signal(signum)
    async for signum in signals:
        on_signal(signum)


DRAIN_POLL_S = 0.02
ANSWER_MARGIN_S = 0.25
"""How long before the HTTP servers' graceful timeout the requests still pending are failed,
so that each handler has time to write its 503."""


async def _shut_down(
    engine: EmbeddedEngine, http_stop: trio.Event, transfer_timeout_s: float, answer_by_s: float
) -> None:
    """Hand leadership over, stop the HTTP servers, and answer every pending request.

    Requests pending on the engine go on while the servers drain (a write the new leader
    commits succeeds), but those still pending ``answer_by_s`` seconds after the servers were
    told to stop (just before Hypercorn's graceful timeout cancels their handlers, which would
    close the connection without a response) fail with ``Stopped``: 503 stopped."""
    await _hand_over_leadership(engine, transfer_timeout_s)
    log.info("stopping HTTP servers")
    http_stop.set()
    with trio.move_on_after(answer_by_s):
        while engine.pending_requests():
            await trio.sleep(DRAIN_POLL_S)
    engine.refuse_requests()


async def _sigterm_at_stdin_eof() -> None:
    """Send this process a SIGTERM once standard input is at end of file.

    A signal rather than a call, so the stop is exactly the one SIGTERM starts (hand-over,
    drain, flush), a later signal included. A supervisor that dies, even of SIGKILL, closes
    its end of the pipe, which no signal to it would tell its children.
    """
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some():
            pass  # what a supervisor writes means nothing; only the end does
    log.info("standard input closed: stopping")
    os.kill(os.getpid(), signal.SIGTERM)


async def _hand_over_leadership(engine: EmbeddedEngine, timeout_s: float) -> None:
    if not engine.is_leader():
        return
    if not engine.reachable_peers():
        # E.g. the whole cluster is stopping: not a failure, and not worth a wait.
        log.info("leader: no peer reachable to hand leadership to; stopping")
        return
    log.info("leader: transferring leadership before stopping (up to %.1f s)", timeout_s)
    try:
        moved = await engine.transfer_leadership(timeout_s)
    except errors.DengineError as exc:
        log.warning("leadership transfer failed: %s", exc)
        return
    if moved:
        log.info("leadership transferred to node %s", engine.leader_id())
    elif not engine.reachable_peers():
        log.info("leadership not handed over: the peers stopped meanwhile; stopping")
    else:
        log.warning("leadership transfer did not finish in %.1f s; stopping anyway", timeout_s)


async def _report_ready(engine: EmbeddedEngine, interval_s: float) -> None:
    """One line once a leader is known, and a reminder while the cluster has none."""
    while True:
        try:
            leader_id, term = await engine.wait_ready(interval_s)
        except errors.Timeout:
            log.info("no leader yet: waiting for a majority of the cluster to be up")
            continue
        except errors.DengineError:  # stopping: nothing left to report
            return
        log.info("cluster ready: node %d leads in term %d", leader_id, term)
        return
