"""Profile one embedded phase of ``make bench`` in node 1's process (pyinstrument).

The same cluster as ``bench.embedded_side`` (node 1 here and leading, nodes 2 and 3 as
processes), a warm-up, then one phase under pyinstrument's wall-clock sampler; the profile is
printed as text (``--out`` also writes pyinstrument's HTML). pyinstrument is not a dependency:
``.venv/bin/pip install pyinstrument`` first. For the HTTP path, profile a node process
instead: ``py-spy record --format raw -p PID`` while ``wrk`` runs.

    .venv/bin/python -m bench.profile_phase writers [--strategy MemFirst] [--count 20000]
    .venv/bin/python -m bench.profile_phase single --count 2000
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import trio

from bench.write import (
    STRATEGIES,
    concurrent_writers,
    follower_processes,
    single_client,
    wait_until_leader,
    write_configs,
)
from dengine_trio import EmbeddedEngine, load_config


async def profile(args: argparse.Namespace) -> str:
    from pyinstrument import Profiler

    root = Path(tempfile.mkdtemp(prefix="dengine-profile-"))
    try:
        configs = write_configs(root, args.strategy)
        async with EmbeddedEngine.start(load_config(configs[0])) as engine:
            async with follower_processes(root, configs[1:]):
                await wait_until_leader(engine, [root / "n2.log", root / "n3.log"])
                client = engine.client()
                with trio.fail_after(args.timeout):
                    await single_client(client, "warmup", 500, report=False)
                    profiler = Profiler(interval=0.0005, async_mode="disabled")
                    profiler.start()
                    if args.phase == "single":
                        phase = await single_client(client, "s", args.count, report=False)
                    else:
                        phase = await concurrent_writers(client, "c", args.count, args.writers)
                    profiler.stop()
                print(phase.summary(), file=sys.stderr)
                if args.out:
                    Path(args.out).write_text(profiler.output_html())
                text: str = profiler.output_text(unicode=True, show_all=False)
                return text
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_phase")
    parser.add_argument("phase", choices=("single", "writers"))
    parser.add_argument("--strategy", choices=STRATEGIES, default="MemFirst")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", help="also write pyinstrument's HTML report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(trio.run(profile, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
