"""``python -m dengine_trio`` and the ``dengine-trio`` console script: run one node."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from types import FrameType

__all__ = ["main"]

_held_signals: list[int] = []


def _hold(signum: int, _frame: FrameType | None) -> None:
    _held_signals.append(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a node (see :mod:`dengine_trio.cli`); returns the exit status."""
    # Before the heavy imports: SIGINT/SIGTERM while the node is still starting must not kill
    # it half-way (default action); it is held, and the node stops cleanly once it can.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _hold)
    from dengine_trio.cli import main as run_node

    return run_node(argv, held_signals=_held_signals)


if __name__ == "__main__":
    sys.exit(main())
