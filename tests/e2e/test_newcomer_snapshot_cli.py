"""A newcomer's attacks on ``dengine-trio snapshot save`` (issue 13), as real processes.

``save`` downloads to a temporary file beside FILE and renames it over FILE. That is right
for a regular file (a failed download leaves the previous backup), but FILE may be something
else an operator names on a command line: a FIFO read by a compressor, ``/dev/stdout`` (a
symbolic link) in a pipeline. Renaming over those replaces the FIFO, the device or the link
with a regular file (run as root, ``snapshot save /dev/stdout`` or ``/dev/full`` replaced the
system's device entry on the machine this was found on) and prints "saved". Either write
through to such a FILE or refuse it with one line; never replace it.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.cluster import node_env, wait_until
from tests.e2e.test_snapshot_files import (
    CLUSTER,
    make_snapshot,
    save,
    serving,
    snapshot_headers,
)


def _drain(fifo: Path, into: list[bytes]) -> None:
    with open(fifo, "rb") as reader:  # blocks until a writer opens it
        into.append(reader.read())


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_save_never_replaces_a_file_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    body = make_snapshot(tmp_path / "backup").read_bytes()
    target = tmp_path / "elsewhere.snap"
    file = tmp_path / "out"
    drained: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(file, drained), daemon=True)
    if kind == "fifo":
        os.mkfifo(file)
        reader.start()  # a compressor reading the FIFO
    else:
        file.symlink_to(target)
    try:
        with serving(body, snapshot_headers(body, CLUSTER)) as url:
            code, out, err = save([url], file, tmp_path)
    finally:
        if kind == "fifo" and file.is_fifo():
            # Release the reader if save never opened the FIFO (O_NONBLOCK: a reader waits).
            os.close(os.open(file, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(timeout=10)
    if kind == "fifo":
        # Through the FIFO to its reader, or a one-line refusal naming it.
        assert file.is_fifo(), (code, out, err)
        assert (code == 0 and drained == [body]) or (
            code == 2 and err.count("\n") == 1 and str(file) in err
        ), (code, out, err)
    else:
        # Through the link (as ``cp`` and shell redirection do), or a one-line refusal.
        assert file.is_symlink(), (code, out, err)
        assert (code == 0 and target.read_bytes() == body) or code == 2, (code, out, err)


@contextmanager
def stalling(body: bytes, headers: dict[str, str], sent: int) -> Iterator[str]:
    """GET /snapshot answered with ``headers`` and the first ``sent`` bytes of ``body``, then
    nothing until the test ends (a node that stopped sending). Yields its URL."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body[:sent])
            self.wfile.flush()
            release.wait(60)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_save_stopped_by_sigterm_mid_download_leaves_no_temporary_file(tmp_path: Path) -> None:
    body = make_snapshot(tmp_path / "backup").read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    file = out_dir / "dengine-1.snap"
    with stalling(body, snapshot_headers(body, CLUSTER), len(body) // 2) as url:
        save = subprocess.Popen(
            [sys.executable, "-m", "dengine_trio", "snapshot", "save", "--endpoint", url,
             str(file)],
            cwd=tmp_path, env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_until(lambda: any(out_dir.iterdir()), 30, "the download to begin")
            save.send_signal(signal.SIGTERM)
            save.wait(timeout=30)
        finally:
            if save.poll() is None:
                save.kill()
                save.wait()
    assert save.returncode != 0
    assert list(out_dir.iterdir()) == [], sorted(p.name for p in out_dir.iterdir())
