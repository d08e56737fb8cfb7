"""Client-side command-line tools, like etcdctl: ``dengine-trio status``, ``dengine-trio kv``,
``dengine-trio snapshot``, ``dengine-trio member`` and ``dengine-trio leader``. They talk HTTP
to running nodes (the node process itself is :mod:`dengine_trio.cli`); ``snapshot restore``
works on a stopped node's data directory.

``dengine-trio`` dispatches here when its first argument is one of :data:`SUBCOMMANDS`;
anything else runs a node, as before. Exit status 2 is a usage error for every subcommand
(argparse's convention, as for the node); the others are each subcommand's own
(:mod:`dengine_trio.ctl.status`, :mod:`dengine_trio.ctl.kv`,
:mod:`dengine_trio.ctl.snapshot`, :mod:`dengine_trio.ctl.members`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from dengine_trio.ctl._http import Credentials, normalize_endpoint

__all__ = ["EXIT_USAGE", "SUBCOMMANDS", "build_parser", "main"]

SUBCOMMANDS = ("status", "kv", "snapshot", "member", "leader")
EXIT_USAGE = 2
DEFAULT_STATUS_ENDPOINTS = "http://127.0.0.1:10001,http://127.0.0.1:10002,http://127.0.0.1:10003"
DEFAULT_KV_ENDPOINTS = "http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083"


def _endpoints(text: str) -> list[str]:
    try:
        urls = [normalize_endpoint(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return list(dict.fromkeys(urls))


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _add_credentials(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument(
        "--token",
        default=default,
        help="bearer token for a node with [auth] enable = true (default: $DENGINE_TOKEN); "
        "prefer the variable: a command line is visible to other users in ps",
    )
    parser.add_argument(
        "--cacert",
        default=default,
        help="PEM file of the CA that signed the nodes' HTTPS certificates, for https:// "
        "endpoints (default: $DENGINE_CACERT, else the system's trust store)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of the client tools (``dengine-trio status|kv ...``)."""
    parser = argparse.ArgumentParser(
        prog="dengine-trio",
        description="Client tools for a running dengine_trio cluster (run a node with "
        "dengine-trio --config-path FILE).",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{status,kv,snapshot,member,leader}"
    )

    status = sub.add_parser(
        "status",
        help="one row per node: role, term, leader, indexes, lag, health",
        description="Ask each node's health port for GET /status and print one row per node. "
        "Exit status: 0 if an answering node leads with a quorum, 1 if none does, 2 for a "
        "usage error.",
    )
    status.add_argument(
        "--endpoints",
        type=_endpoints,
        default=os.environ.get("DENGINE_STATUS_ENDPOINTS", DEFAULT_STATUS_ENDPOINTS),
        help="health-port URLs, comma separated (default: $DENGINE_STATUS_ENDPOINTS, else "
        f"{DEFAULT_STATUS_ENDPOINTS})",
    )
    status.add_argument("--json", action="store_true", help="print a JSON list of rows")
    _add_credentials(status)
    status.add_argument(
        "--timeout",
        type=_positive,
        default=2.0,
        help="seconds to wait for each node (default 2)",
    )

    kv = sub.add_parser(
        "kv",
        help="get, put or delete one key, following the leader",
        description="One KV request, tried on each endpoint in turn and retried while the "
        "cluster has no leader. Exit status: 0 done, 1 key not found (get), 2 usage error or "
        "request refused (4xx), 3 no node served it in time or another error.",
    )
    kv.add_argument(
        "--endpoints",
        type=_endpoints,
        default=os.environ.get("DENGINE_KV_ENDPOINTS", DEFAULT_KV_ENDPOINTS),
        help="KV-port URLs, comma separated (default: $DENGINE_KV_ENDPOINTS, else "
        f"{DEFAULT_KV_ENDPOINTS})",
    )
    kv.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        help="seconds to keep trying, over all endpoints (default 10)",
    )
    _add_credentials(kv)
    # The same options after the action too (kv get KEY --endpoints ...); SUPPRESS keeps an
    # absent one from overriding the kv-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoints", type=_endpoints, default=argparse.SUPPRESS,
                        help="as for kv")  # fmt: skip
    common.add_argument("--timeout", type=_positive, default=argparse.SUPPRESS, help="as for kv")
    _add_credentials(common, argparse.SUPPRESS)
    actions = kv.add_subparsers(dest="action", required=True, metavar="{get,put,del}")
    get = actions.add_parser(
        "get", parents=[common], help="print the value of KEY (exit 1 if absent)"
    )
    get.add_argument("key")
    get.add_argument(
        "--consistency",
        choices=("linearizable", "lease", "eventual"),
        help="read policy (default: the node's configured default_policy)",
    )
    put = actions.add_parser("put", parents=[common], help="set KEY to VALUE, once committed")
    put.add_argument("key")
    put.add_argument("value")
    delete = actions.add_parser(
        "del", parents=[common], help="delete KEY (done even if it was absent)"
    )
    delete.add_argument("key")
    _add_snapshot(sub)
    _add_membership(sub)
    return parser


def _member_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a node id (a positive integer)")
    return int(text)


def _admin_options() -> argparse.ArgumentParser:
    """--endpoint, --json, --timeout and the credentials, for every member/leader action."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoint",
        action="append",
        type=_endpoints,
        help="health-port URL; repeat it (or separate URLs with commas) to try several in "
        "order, the first that answers serves (default: $DENGINE_STATUS_ENDPOINTS, else "
        f"{DEFAULT_STATUS_ENDPOINTS})",
    )
    common.add_argument("--json", action="store_true", help="print the node's JSON answer")
    common.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        help="seconds to keep trying, over all endpoints (default 10)",
    )
    _add_credentials(common)
    return common


def _add_membership(sub: Any) -> None:
    exits = (
        "Exit status: 0 done, 2 usage error or the cluster refused it (4xx: unknown id, "
        "duplicate id or address, last voter, a change pending, a learner too far behind), "
        "3 no node answered in time or another error."
    )
    common = _admin_options()
    member = sub.add_parser(
        "member",
        help="list the members, add a learner, promote it, remove a member",
        description="Membership of a running cluster through the health ports' /members "
        "(docs/operations.md, Membership). One change at a time; each is a configuration "
        "entry in the log, done once committed. " + exits,
    )
    actions = member.add_subparsers(
        dest="action", required=True, metavar="{list,add,promote,remove}"
    )
    actions.add_parser(
        "list",
        parents=[common],
        help="one row per member: id, address, role (leader, voter, learner), match index",
    )
    add = actions.add_parser(
        "add",
        parents=[common],
        help="add node ID, reachable at ADDRESS (its Raft host:port), as a learner",
        description="Add a learner: it receives the log and snapshots but does not vote. "
        "Start the node with an empty data directory; promote it once it has caught up (or "
        "pass --promote). A node started with role = 3 in its own initial_cluster entry "
        "asks to be added by itself. " + exits,
    )
    add.add_argument("id", type=_member_id, metavar="ID")
    add.add_argument("address", metavar="ADDRESS", help="its Raft address, host:port")
    add.add_argument(
        "--promote",
        action="store_true",
        help="the leader promotes it to voter by itself once it has caught up",
    )
    promote = actions.add_parser(
        "promote",
        parents=[common],
        help="make the learner ID a voter (refused while it is far behind)",
    )
    promote.add_argument("id", type=_member_id, metavar="ID")
    remove = actions.add_parser(
        "remove",
        parents=[common],
        help="remove member ID (a leader removed hands leadership over)",
    )
    remove.add_argument("id", type=_member_id, metavar="ID")

    leader = sub.add_parser(
        "leader",
        help="hand leadership to another voter",
        description="Leadership of a running cluster through the health ports (POST "
        "/leader/transfer). " + exits,
    )
    leader_actions = leader.add_subparsers(dest="action", required=True, metavar="{transfer}")
    transfer = leader_actions.add_parser(
        "transfer",
        parents=[common],
        help="hand leadership to voter --to ID, or to the most caught-up voter",
    )
    transfer.add_argument(
        "--to", type=_member_id, metavar="ID", help="the voter to lead (default: any)"
    )


def _add_snapshot(sub: Any) -> None:
    snapshot = sub.add_parser(
        "snapshot",
        help="save a snapshot of a running cluster, or restore one into a new cluster",
        description="Backups and disaster recovery (docs/operations.md). Exit status: 0 done, "
        "1 no endpoint gave a snapshot (save), 2 usage or configuration error, a bad snapshot "
        "file, or a data directory that is not empty (restore).",
    )
    actions = snapshot.add_subparsers(dest="action", required=True, metavar="{save,status,restore}")
    save = actions.add_parser(
        "save",
        help="download a fresh snapshot from a node's health port to FILE",
        description="Ask each --endpoint (health ports) in turn for GET /snapshot; write the "
        "first snapshot received to a temporary name beside FILE, verify it (length, CRC, "
        "format version, cluster, index and term), then rename it to FILE. The snapshot holds "
        "every write acknowledged before the command started.",
    )
    save.add_argument("file", metavar="FILE")
    save.add_argument(
        "--endpoint",
        action="append",
        type=_endpoints,
        help="health-port URL; repeat it (or separate URLs with commas) to try several in "
        "order, the first that gives a snapshot wins (default: $DENGINE_STATUS_ENDPOINTS, "
        f"else {DEFAULT_STATUS_ENDPOINTS})",
    )
    save.add_argument(
        "--timeout",
        type=_positive,
        default=60.0,
        help="seconds to wait for each endpoint to start answering, and for each read of the "
        "download (default 60)",
    )
    save.add_argument(
        "--consistency",
        choices=("linearizable", "eventual"),
        default="linearizable",
        help="linearizable (default): the snapshot holds every write acknowledged before the "
        "command (the node needs a leader); eventual: what the node has applied, also from a "
        "node without a leader",
    )
    _add_credentials(save)
    check = actions.add_parser(
        "status",
        help="verify a snapshot FILE and print what it holds",
        description="Read FILE whole, check its CRCs and format version, and print one line: "
        "index, term, cluster id, members, bytes. Exit 0 if it is intact, 2 if not.",
    )
    check.add_argument("file", metavar="FILE")
    restore = actions.add_parser(
        "restore",
        help="seed a stopped node's empty data directory from a snapshot FILE",
        description="Verify FILE, refuse a data directory that is not empty, then write the "
        "snapshot into the node's snapshots_dir for the cluster of --config-path (a restore "
        "starts a new cluster) and a hard state at the snapshot's term. Restore every node of "
        "the new cluster from the same FILE, then start them.",
    )
    restore.add_argument("file", metavar="FILE")
    restore.add_argument(
        "--config-path",
        default=os.environ.get("CONFIG_PATH"),
        help="the node's TOML file, with or without .toml (default: $CONFIG_PATH)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dengine-trio status|kv ...``; return the exit status (see each subcommand)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        credentials = Credentials(
            getattr(args, "token", None) or os.environ.get("DENGINE_TOKEN"),
            getattr(args, "cacert", None) or os.environ.get("DENGINE_CACERT"),
        )
    except ValueError as exc:
        parser.exit(EXIT_USAGE, f"dengine-trio {args.command}: {exc}\n")
    if args.command == "snapshot":
        return _run_snapshot(parser, args, credentials)
    if args.command in ("member", "leader"):
        return _run_membership(args, credentials)
    if args.command == "status":
        from dengine_trio.ctl.status import run_status

        return run_status(
            args.endpoints,
            as_json=args.json,
            timeout_s=args.timeout,
            out=sys.stdout,
            err=sys.stderr,
            credentials=credentials,
        )
    from dengine_trio.ctl.kv import run_kv

    return run_kv(
        args.action,
        args.key,
        getattr(args, "value", None),
        args.endpoints,
        consistency=getattr(args, "consistency", None),
        timeout_s=args.timeout,
        out=sys.stdout,
        err=sys.stderr,
        credentials=credentials,
    )


def _run_snapshot(
    parser: argparse.ArgumentParser, args: argparse.Namespace, credentials: Credentials
) -> int:
    from dengine_trio.ctl.snapshot import run_restore, run_save, run_status_of_file

    if args.action == "status":
        return run_status_of_file(args.file, out=sys.stdout, err=sys.stderr)
    if args.action == "restore":
        if not args.config_path:
            parser.exit(
                EXIT_USAGE,
                "dengine-trio snapshot restore: no configuration: pass --config-path or set "
                "CONFIG_PATH\n",
            )
        return run_restore(args.file, args.config_path, out=sys.stdout, err=sys.stderr)
    groups = args.endpoint or [
        _endpoints(os.environ.get("DENGINE_STATUS_ENDPOINTS", DEFAULT_STATUS_ENDPOINTS))
    ]
    endpoints = list(dict.fromkeys(url for group in groups for url in group))
    return run_save(
        endpoints,
        args.file,
        timeout_s=args.timeout,
        out=sys.stdout,
        err=sys.stderr,
        credentials=credentials,
        consistency=args.consistency,
    )


def _run_membership(args: argparse.Namespace, credentials: Credentials) -> int:
    from dengine_trio.ctl.members import run_leader_transfer, run_member

    groups = args.endpoint or [
        _endpoints(os.environ.get("DENGINE_STATUS_ENDPOINTS", DEFAULT_STATUS_ENDPOINTS))
    ]
    endpoints = list(dict.fromkeys(url for group in groups for url in group))
    if args.command == "leader":
        return run_leader_transfer(
            args.to,
            endpoints,
            as_json=args.json,
            timeout_s=args.timeout,
            out=sys.stdout,
            err=sys.stderr,
            credentials=credentials,
        )
    return run_member(
        args.action,
        endpoints,
        member_id=getattr(args, "id", None),
        address=getattr(args, "address", None),
        promote=getattr(args, "promote", False),
        as_json=args.json,
        timeout_s=args.timeout,
        out=sys.stdout,
        err=sys.stderr,
        credentials=credentials,
    )
