"""A one-node DiskFirst cluster in its own process, for the crash-durability test.

    crash_writer.py CONFIG     start the engine from CONFIG, then put ``key(i) -> value(i)``
                               for i = 0, 1, ... and print ``acked <i>`` after each put
                               returns, until killed (or MAX_KEYS)

Run as a script, not collected by pytest. The test SIGKILLs it mid-loop.
"""

from __future__ import annotations

import sys

import trio

from dengine_trio import EmbeddedEngine, load_config

MAX_KEYS = 100_000  # bounds the disk a forgotten writer can fill
READY_TIMEOUT_S = 30


def key(i: int) -> bytes:
    return b"key-%06d" % i


def value(i: int) -> bytes:
    """256 bytes that say which key they belong to, so a mix-up cannot pass the check."""
    return (b"value-%06d;" % i * 24)[:256]


async def write_until_killed(config_path: str) -> None:
    async with EmbeddedEngine.start(load_config(config_path)) as engine:
        await engine.wait_ready(READY_TIMEOUT_S)
        client = engine.client()
        for i in range(MAX_KEYS):
            await client.put(key(i), value(i))
            # Printed only once put has returned: every line is an acknowledged write.
            print(f"acked {i}", flush=True)


if __name__ == "__main__":
    trio.run(write_until_killed, sys.argv[1])
