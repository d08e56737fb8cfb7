"""``--log-format json``: every record is one line that parses as JSON and carries time (ISO
8601, UTC), level, node, logger, event and message, whatever the message and its arguments
hold; the text format keeps its shape."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio import log as node_log

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    """A buffer for :func:`setup`'s handler; the root logger restored after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("hypercorn.error").level)
    try:
        yield io.StringIO()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.getLogger("hypercorn.error").setLevel(saved[2])
        logging.captureWarnings(False)


def setup(buffer: io.StringIO, node_id: int, log_format: str = "text") -> None:
    """``setup_logging``, its stderr handler then pointed at ``buffer`` (pytest swaps
    ``sys.stderr`` between a fixture's setup and the test)."""
    node_log.setup_logging(logging.INFO, node_id, log_format)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)


def records(buffer: io.StringIO) -> list[dict[str, object]]:
    lines = buffer.getvalue().splitlines()
    docs = [json.loads(line) for line in lines]
    for doc in docs:
        assert {"time", "level", "node", "logger", "event", "message"} <= doc.keys(), doc
        assert TIME.fullmatch(str(doc["time"])), doc
    return docs


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """Local time 9 hours off UTC, so that local time written as UTC would show."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_each_record_is_one_json_line_with_the_fields(stderr: io.StringIO) -> None:
    setup(stderr, 3, "json")
    log = logging.getLogger("dengine_trio.node")
    before = datetime.now(timezone.utc)
    log.info("cluster ready: node %d leads in term %d", 1, 7)
    log.warning("peer %s unreachable", 2, extra={"peer": 2, "raw": b"\xff\x00"})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("unhandled error in %s", "kv")
    log.debug("not shown at INFO")
    logging.getLogger("hypercorn.error").info("hidden: Hypercorn's listener lines below WARNING")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library warning", UserWarning, stacklevel=1)

    ready, peer, error, warned = records(stderr)
    assert ready["level"] == "info"
    assert ready["node"] == 3
    assert ready["logger"] == "dengine_trio.node"
    assert ready["event"] == "cluster ready: node %d leads in term %d"
    assert ready["message"] == "cluster ready: node 1 leads in term 7"
    assert ready["args"] == [1, 7]
    at = datetime.strptime(str(ready["time"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    # UTC, not local time: within a second of the clock read just before.
    assert before - timedelta(seconds=1) <= at <= datetime.now(timezone.utc)
    assert peer["level"] == "warning"
    assert peer["fields"] == {"peer": 2, "raw": str(b"\xff\x00")}
    assert error["level"] == "error"
    assert "RuntimeError: boom\nsecond line" in str(error["exception"])
    assert warned["logger"] == "py.warnings"
    assert "a library warning" in str(warned["message"])


@settings(max_examples=60, deadline=None)
@given(
    message=st.text(),
    args=st.lists(st.one_of(st.text(), st.integers(), st.binary(), st.none()), max_size=3),
)
def test_any_message_and_arguments_make_one_parsable_line(message: str, args: list[object]) -> None:
    formatter = node_log.JsonFormatter()
    template = message.replace("%", "%%") + " %s" * len(args)
    record = logging.LogRecord("dengine_trio.x", logging.WARNING, __file__, 1, template,
                               tuple(args), None)  # fmt: skip
    record.node_id = 1
    line = formatter.format(record)
    assert "\n" not in line and "\r" not in line
    doc = json.loads(line)
    assert doc["message"] == record.getMessage()
    assert doc["event"] == template
    assert doc["node"] == 1
    assert TIME.fullmatch(doc["time"])


def test_text_format_keeps_its_shape(stderr: io.StringIO) -> None:
    setup(stderr, 2)
    logging.getLogger("dengine_trio.node").info("stopped")
    line = stderr.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} INFO    node=2 dengine_trio\.node: stopped\n", line
    ), line


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        node_log.setup_logging(logging.INFO, 1, "xml")
