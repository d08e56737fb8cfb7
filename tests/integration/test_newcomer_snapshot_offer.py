"""A newcomer's attack on the snapshot connection of the Raft port (issue 13): real transports.

A follower answers any ``SnapshotOffer`` from a peer with ``SnapshotResume`` and then writes
whatever chunks arrive into ``<snapshots_dir>/incoming/``, up to the offered size, however
large: an offer of 2**62 bytes is taken, and the partial file is kept after the connection
ends (for a resume). By hand: 100 MB of zeros streamed under such an offer stayed on the
follower's disk until its next offer or restart. A confused or hostile peer (peer TLS is off
by default) can so fill the disk the node's log is on. What would hold: an offer larger than
the file system could take (``statvfs``), or than a snapshot can be, is refused at once
(``SnapshotReceived(ok=False)``, or the connection closed), before any byte is written.
"""

from __future__ import annotations

from pathlib import Path

import trio

from dengine_trio.wire import FrameReader, Hello, encode, encode_frame
from dengine_trio.wire.messages import PROTOCOL_VERSION, Channel, SnapshotOffer, SnapshotResume

from .test_snapshot_transfer import CLUSTER, WAIT_S, read_frame, start_pair
from .wire_helpers import raw_handshake


async def test_an_offer_larger_than_the_disk_is_refused_before_any_byte(tmp_path: Path) -> None:
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            _, b = await start_pair(nursery, tmp_path)
            async with await trio.open_tcp_stream("127.0.0.1", b.transport.listen[1]) as stream:
                reader = FrameReader()
                hello = Hello(CLUSTER, 1, 2, PROTOCOL_VERSION, 0, Channel.SNAPSHOT)
                assert (await raw_handshake(stream, hello, reader)).ok
                offer = SnapshotOffer(5, 1, 2, 90, 3, 2**62, 0)
                await stream.send_all(encode_frame(encode(offer)))
                try:
                    answer: object = await read_frame(stream, reader)
                except AssertionError:  # closed before answering: refused too
                    answer = None
            nursery.cancel_scope.cancel()
    assert not isinstance(answer, SnapshotResume), answer
