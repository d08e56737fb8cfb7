"""Logging of a node process: one line per event on stderr, with time, level and node id."""

from __future__ import annotations

import logging
import sys

__all__ = ["LEVELS", "LOG_FORMAT", "parse_level", "setup_logging"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
LEVELS = tuple(_LEVELS)
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s node=%(node_id)s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class _NodeIdFilter(logging.Filter):
    """Stamps every record with the node id, so library loggers need not know it."""

    def __init__(self, node_id: int | str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        return True


def parse_level(name: str) -> int:
    """``"info"`` (any case) -> ``logging.INFO``; ValueError naming the choices otherwise."""
    level = _LEVELS.get(name.strip().lower())
    if level is None:
        raise ValueError(f"unknown log level {name!r}; choose one of {', '.join(LEVELS)}")
    return level


def setup_logging(level: int, node_id: int | str) -> None:
    """Route every logger (ours, Hypercorn's, Quart's) to one stderr handler at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, _DATE_FORMAT))
    handler.addFilter(_NodeIdFilter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level > logging.DEBUG:
        # Hypercorn announces each listener at INFO; the node logs its own, clearer line.
        logging.getLogger("hypercorn.error").setLevel(max(level, logging.WARNING))
