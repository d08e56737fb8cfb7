"""Logging of a node process: one line per event on stderr, with time, level and node id.

Two formats. ``text`` (the default) is for people::

    2026-11-29T13:45:20.123 INFO    node=1 dengine_trio.node: cluster ready: node 1 leads ...

``json`` is for log pipelines: one JSON object per line, e.g.::

    {"time": "2026-11-29T13:45:20.123Z", "level": "info", "node": 1,
     "logger": "dengine_trio.node", "event": "cluster ready: node %d leads in term %d",
     "message": "cluster ready: node 1 leads in term 2", "args": [1, 2]}

``time`` is ISO 8601 in UTC with milliseconds; ``level`` is lower case; ``event`` is the
message before its arguments are filled in, the same for every occurrence of one kind of
event (group and count on it); ``args`` those arguments (present when there are any);
``fields`` anything a call passed with ``extra={...}``; ``exception`` the traceback of a
``log.exception``. Values that are not JSON (bytes, enums) are written as their ``str()``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = [
    "LEVELS",
    "LOG_FORMAT",
    "LOG_FORMATS",
    "JsonFormatter",
    "parse_level",
    "setup_logging",
]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
LEVELS = tuple(_LEVELS)
LOG_FORMATS = ("text", "json")
"""The values of ``--log-format``."""
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s node=%(node_id)s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

# Every attribute logging itself puts on a record: the rest came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "node_id",
    "taskName",
}


class _NodeIdFilter(logging.Filter):
    """Stamps every record with the node id, so library loggers need not know it."""

    def __init__(self, node_id: int | str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.node_id = self.node_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (the members are in the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """``record`` as one line of JSON (no line break in it); never raises for a value
        that is not JSON (it is written as its ``str()``)."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "node": getattr(record, "node_id", None),
            "logger": record.name,
            "event": record.msg if isinstance(record.msg, str) else str(record.msg),
            "message": record.getMessage(),
        }
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            doc["args"] = list(args)
        fields = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        if fields:
            doc["fields"] = fields
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a line is plain ASCII whatever a key or peer sent; json escapes line
        # breaks inside strings, so one record is always one line.
        return json.dumps(doc, default=str, ensure_ascii=True)


def parse_level(name: str) -> int:
    """``"info"`` (any case) -> ``logging.INFO``; ValueError naming the choices otherwise."""
    level = _LEVELS.get(name.strip().lower())
    if level is None:
        raise ValueError(f"unknown log level {name!r}; choose one of {', '.join(LEVELS)}")
    return level


def setup_logging(level: int, node_id: int | str, log_format: str = "text") -> None:
    """Route every logger (ours, Hypercorn's, Quart's) to one stderr handler at ``level``.

    ``log_format`` is ``"text"`` or ``"json"`` (see the module docstring); ValueError
    otherwise. In ``json`` Python's warnings go through logging too, so that every line on
    stderr is JSON.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; choose one of text, json")
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
        logging.captureWarnings(True)
    else:
        formatter = logging.Formatter(LOG_FORMAT, _DATE_FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(_NodeIdFilter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level > logging.DEBUG:
        # Hypercorn announces each listener at INFO; the node logs its own, clearer line.
        logging.getLogger("hypercorn.error").setLevel(max(level, logging.WARNING))
