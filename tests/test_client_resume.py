"""Resume without loss: a persisted subscription catches up after a gap, and across restarts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio
import trio_websocket

from trio_realtime import Broker, EpochChanged, Event, open_client
from trio_realtime.store import MemoryStore, SQLiteStore

TIMEOUT = 30
PAYLOAD = "x" * 64 * 1024


async def test_gap_on_a_persisted_subscription_is_caught_up_from_the_store() -> None:
    """A client too slow for the broker loses nothing on a persisted topic: it re-reads."""
    broker = Broker(store=MemoryStore(), session_buffer=5, stats_interval=None)
    total = 120
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(broker.serve, "127.0.0.1", 0)
            async with (
                open_client(server.url, name="slow") as client,
                client.subscribe("feed.>", since=0, max_buffer_size=1) as sub,
            ):
                # The client does not read: its one-event buffer fills, its reader stalls, TCP
                # fills, and the broker drops the oldest queued events for it (a gap).
                for i in range(total):
                    await broker.bus.publish("feed.x", {"i": i, "pad": PAYLOAD})
                assert broker.statistics().dropped > 0
                seqs = [(await sub.receive()).seq for _ in range(total)]
                assert seqs == list(range(1, total + 1))
                assert sub.missed == 0
                assert client.statistics().catch_ups >= 1
                await broker.bus.publish("feed.x", {"i": total})
                assert (await sub.receive()).seq == total + 1
            nursery.cancel_scope.cancel()


async def test_restart_with_a_new_store_is_reported_once() -> None:
    """A broker that comes back with another store makes the subscription raise EpochChanged."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            first = Broker(store=MemoryStore(), stats_interval=None)
            scope = trio.CancelScope()
            stopped = trio.Event()

            async def run(broker: Broker, port: int, *, task_status: trio.TaskStatus[int]) -> None:
                try:
                    with scope:
                        async with trio.open_nursery() as inner:
                            server = await inner.start(broker.serve, "127.0.0.1", port)
                            task_status.started(server.port)
                finally:
                    stopped.set()

            port = await nursery.start(run, first, 0)
            async with (
                open_client(f"ws://127.0.0.1:{port}", backoff_max=0.1) as client,
                client.subscribe("feed.>", since=0) as sub,
            ):
                await first.bus.publish("feed.x", "old store")
                assert (await sub.receive()).seq == 1
                old_epoch = client.epoch
                scope.cancel()
                await stopped.wait()

                second = Broker(store=MemoryStore(), stats_interval=None)
                scope = trio.CancelScope()
                await nursery.start(run, second, port)
                await second.bus.publish("feed.x", "stored before the client is back")
                await client.wait_connected()
                with pytest.raises(EpochChanged) as info:
                    await sub.receive()
                assert info.value.old_epoch == old_epoch
                assert info.value.new_epoch == client.epoch != old_epoch
                # then the subscription goes on, replaying the new store from its start
                got = await sub.receive()
                assert (got.seq, got.data) == (1, "stored before the client is back")
            nursery.cancel_scope.cancel()


async def test_a_subscription_that_got_nothing_yet_resumes_from_when_it_subscribed(
    tmp_path: Path,
) -> None:
    """Events stored while the broker was away reach a subscriber that had received nothing."""
    db = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()
            stopped = trio.Event()

            async def run(port: int, *, task_status: trio.TaskStatus[int]) -> None:
                try:
                    with scope:
                        async with trio.open_nursery() as inner:
                            broker = Broker(store=SQLiteStore(db), stats_interval=None)
                            brokers.append(broker)
                            server = await inner.start(broker.serve, "127.0.0.1", port)
                            task_status.started(server.port)
                finally:
                    stopped.set()

            brokers: list[Broker] = []
            port = await nursery.start(run, 0)
            await brokers[0].bus.publish("orders.old", "before the subscription")
            async with (
                open_client(f"ws://127.0.0.1:{port}", backoff_max=0.1) as client,
                client.subscribe("orders.>") as sub,
            ):
                scope.cancel()
                await stopped.wait()
                # stored while no broker runs: the client cannot be connected yet
                async with SQLiteStore(db) as store:
                    await store.append(
                        [Event(topic="orders.new", data="while the client was away")]
                    )
                scope, stopped = trio.CancelScope(), trio.Event()
                await nursery.start(run, port)
                got = await sub.receive()
                assert (got.topic, got.data) == ("orders.new", "while the client was away")
                assert sub.missed == 0
            nursery.cancel_scope.cancel()


async def test_only_subscriptions_outside_queue_groups_get_a_resume_point() -> None:
    """subscribed carries the store's last seq, but not for a queue group member."""
    broker = Broker(store=MemoryStore(), stats_interval=None)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(broker.serve, "127.0.0.1", 0)
            for i in range(3):
                await broker.bus.publish("jobs.x", i)
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await ws.send_message('{"type": "hello"}')
                await ws.get_message()
                await ws.send_message(
                    '[{"type": "subscribe", "id": 1, "pattern": "jobs.>"},'
                    ' {"type": "subscribe", "id": 2, "pattern": "jobs.>", "group": "w"}]'
                )
                # one message or two: the broker may batch the answers, or not
                frames: list[object] = []
                while len(frames) < 2:
                    message = orjson.loads(await ws.get_message())
                    frames += message if isinstance(message, list) else [message]
                assert frames == [
                    {"type": "subscribed", "id": 1, "seq": 3},
                    {"type": "subscribed", "id": 2, "seq": None},
                ]
            nursery.cancel_scope.cancel()


def test_resume_point_is_the_later_one_and_none_in_a_group() -> None:
    """A subscription resumes after the later of its last seq and its subscribe-time seq."""
    from trio_realtime._client_state import RemoteSub

    sub = RemoteSub("orders.>")
    assert sub.resume_point() is None
    sub.resume_seq = 51
    sub.last_seq = 1  # an old retained event arrived first
    assert sub.resume_point() == 51
    sub.last_seq = 60
    assert sub.resume_point() == 60
    member = RemoteSub("jobs.>", group="w")
    member.last_seq = member.resume_seq = 5
    assert member.resume_point() is None
