"""Issue 10 (target 7): what an idle connection costs the broker.

The heartbeats of all sessions run in one task (``HeartbeatTimers``), and a session makes its
acker at its first persisted publish: an idle session runs its reader and its writer only.
``benchmarks/bench_idle.py`` measures the memory.
"""

from __future__ import annotations

import trio
import trio.testing
from conftest import TIMEOUT, running_broker
from test_broker import connect, publish, quiet

from trio_realtime.broker._limits import HeartbeatTimers
from trio_realtime.store import MemoryStore


class Owner:
    """A heartbeat that records when it was polled and asks again every *interval*."""

    def __init__(self, interval: float, polls: int | None = None) -> None:
        self.interval = interval
        self.polls: list[float] = []
        self.limit = polls

    def heartbeat_due(self, now: float) -> float | None:
        self.polls.append(now)
        if self.limit is not None and len(self.polls) >= self.limit:
            return None
        return now + self.interval


async def test_timers_poll_each_owner_at_its_deadlines(autojump_clock: trio.abc.Clock) -> None:
    """Each owner is polled when added, then at each deadline it returned, until it says
    None."""
    timers = HeartbeatTimers()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.serve)
        start = trio.current_time()
        fast, slow, done = Owner(1.0), Owner(2.5), Owner(1.0, polls=3)
        for owner in (fast, slow, done):
            timers.add(owner, start)
        await trio.sleep(5.2)
        assert [t - start for t in fast.polls] == [0, 1, 2, 3, 4, 5]
        assert [t - start for t in slow.polls] == [0, 2.5, 5.0]
        assert [t - start for t in done.polls] == [0, 1, 2]
        assert len(timers) == 2
        nursery.cancel_scope.cancel()


async def test_timers_wake_for_an_earlier_deadline_and_forget_removed(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An owner added with a deadline before the one waited for is polled on time; a
    removed one is not polled again (removing twice is harmless)."""
    timers = HeartbeatTimers()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.serve)
        start = trio.current_time()
        late = Owner(100.0)
        timers.add(late, start)
        await trio.sleep(1.0)
        early = Owner(1.0)
        entry = timers.add(early, trio.current_time())
        await trio.sleep(2.5)
        assert [t - start for t in early.polls] == [1, 2, 3]
        timers.remove(entry)
        timers.remove(entry)
        await trio.sleep(10.0)
        assert len(early.polls) == 3
        assert len(timers) == 1
        nursery.cancel_scope.cancel()


async def test_timers_drop_many_removed_entries() -> None:
    """Entries removed long before their deadline do not pile up in the heap."""
    timers = HeartbeatTimers()
    now = trio.current_time()
    entries = [timers.add(Owner(1000.0), now) for _ in range(1000)]
    for entry in entries[:-1]:
        timers.remove(entry)
    assert len(timers) == 1
    assert len(timers._heap) < 200


async def test_an_idle_session_runs_its_writer_only_until_a_persisted_publish() -> None:
    """An idle session's nursery holds the writer alone (no heartbeat, no acker task); the
    acker starts at the first persisted publish, and acks it."""
    broker = quiet(store=MemoryStore())
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await trio.testing.wait_all_tasks_blocked()
            (session,) = broker._sessions.values()
            assert session._nursery is not None
            names = [task.name for task in session._nursery.child_tasks]
            assert [name.rsplit(".", 1)[-1] for name in names] == ["_writer"]
            ack = await publish(client, "orders.new", {"n": 1}, ref=1)
            assert ack["seq"] == 1
            names = [task.name.rsplit(".", 1)[-1] for task in session._nursery.child_tasks]
            assert sorted(names) == ["_acker", "_writer"]
