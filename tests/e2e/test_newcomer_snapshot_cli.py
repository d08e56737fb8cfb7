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

import os
import threading
from pathlib import Path

import pytest

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
