"""``/replica?max_lag=N`` (issue 17) on engines in one trio program: a follower learns the
leader's commit index from its messages (``NodeRuntime.leader_commit_heard``), its lag is that
less its applied index, and the probe answers 503 ``lagging`` while the lag exceeds N."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from dengine_trio.api.health import create_health_app
from dengine_trio.engine import EmbeddedEngine
from tests.integration.cluster import write_configs
from tests.support.cluster import wait_until_async as wait_until


async def test_replica_max_lag_follows_the_followers_lag(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    async with AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(EmbeddedEngine.start(c)) for c in configs]

        def single_leader() -> EmbeddedEngine | None:
            leaders = [e for e in engines if e.is_leader()]
            return leaders[0] if len(leaders) == 1 else None

        leader = await wait_until(single_leader, 20)
        await leader.wait_ready(10)
        follower = next(e for e in engines if e is not leader)
        index = 0
        for n in range(5):
            index = await leader.client().put(b"k", str(n).encode())
        runtime = follower._runtime
        # The follower heard the commit of the last write from the leader's next message.
        await wait_until(lambda: runtime.leader_commit_heard >= index, 10)
        await follower.wait_applied(index, 10)
        await wait_until(lambda: follower.applied_lag() == 0, 10)

        client = create_health_app(follower).test_client()
        await wait_until(lambda: follower.leader_contact_recent(), 10)
        assert (await client.get("/replica?max_lag=0")).status_code == 200
        # As if the leader had committed 50 entries this follower has not applied yet.
        runtime.leader_commit_heard = runtime.applied_index + 50
        assert follower.applied_lag() == 50
        response = await client.get("/replica?max_lag=49")
        assert response.status_code == 503
        assert (await response.get_json())["error"] == "lagging"
        assert (await client.get("/replica?max_lag=50")).status_code == 200
        # Without max_lag the probe is what it was.
        assert (await client.get("/replica")).status_code == 200
        response = await create_health_app(leader).test_client().get("/replica?max_lag=1000")
        assert response.status_code == 503
        assert (await response.get_json())["error"] == "not_replica"
