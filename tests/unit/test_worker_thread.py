"""The long-lived worker thread that runs a node's fsyncs."""

from __future__ import annotations

import threading

import pytest
import trio

from dengine_trio.runtime.worker import WorkerThread


async def test_calls_run_in_one_other_thread_in_order_and_return_their_results() -> None:
    seen: list[tuple[int, str]] = []

    def call(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * n

    async with WorkerThread("fsync-test") as worker:
        results = [await worker.run(lambda n=n: call(n)) for n in range(5)]
    assert results == [0, 1, 4, 9, 16]
    assert seen == [(n, "fsync-test") for n in range(5)]
    assert not any(t.name == "fsync-test" for t in threading.enumerate())  # joined on exit


async def test_an_exception_in_the_thread_is_raised_to_the_caller() -> None:
    async with WorkerThread("fsync-test") as worker:
        with pytest.raises(OSError, match="disk gone"):
            await worker.run(lambda: (_ for _ in ()).throw(OSError(5, "disk gone")))
        assert await worker.run(lambda: "still serving") == "still serving"


async def test_a_cancelled_caller_waits_for_the_call_then_sees_the_cancellation() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        finished.append(True)
        return "done"

    async with WorkerThread("fsync-test") as worker:
        result: list[str] = []
        scope = trio.CancelScope()

        async def caller() -> None:
            with scope:
                result.append(await worker.run(slow))
                await trio.lowlevel.checkpoint()  # where the cancellation arrives
                result.append("not reached")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.to_thread.run_sync(started.wait, 10)
            scope.cancel()
            await trio.sleep(0.05)
            assert not finished  # the cancellation did not cut the call short
            release.set()
        assert scope.cancelled_caught
        assert finished == [True] and result == ["done"]


async def test_run_outside_the_block_is_refused() -> None:
    worker = WorkerThread("fsync-test")
    with pytest.raises(RuntimeError, match="not running"):
        await worker.run(lambda: None)
