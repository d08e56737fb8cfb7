"""``python -m dengine_trio`` and the ``dengine-trio`` console script: run one node, or, when the
first argument names one (``status``, ``kv``, ``snapshot``, ``member``, ``leader``), a client
tool of :mod:`dengine_trio.ctl`."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]

_held_signals: list[int] = []
_CLIENT_COMMANDS = ("status", "kv", "snapshot", "member", "leader")
"""``dengine_trio.ctl.SUBCOMMANDS``, repeated so that running a node imports nothing more."""


def _hold(signum: int, _frame: FrameType | None) -> None:
    _held_signals.append(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a node (see :mod:`dengine_trio.cli`) or a client tool; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in _CLIENT_COMMANDS:
        # A client tool keeps Python's default signals: Ctrl+C interrupts it at once.
        from dengine_trio.ctl import main as run_tool

        return run_tool(args)
    # Before the heavy imports: a stop signal while the node is still starting must not kill
    # it half-way (default action); it is held, and the node stops cleanly once it can.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _hold)
    from dengine_trio.cli import main as run_node

    return run_node(argv, held_signals=_held_signals)


if __name__ == "__main__":
    sys.exit(main())
