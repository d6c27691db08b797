"""Persisted events across nodes: buses and brokers sharing one JetStream stream
(JetStreamStore), against a real nats-server.

Every node routes every persisted event, its own and the others', from the stream's tail in
seq order; a publisher's acknowledgement means stored; resuming by seq works on any node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
from _nats_server import running_nats_server
from conftest import running_broker

from trio_realtime import DuplicateEventId, EpochChanged, Event, open_bus, open_client
from trio_realtime._nats import NatsConnection, open_nats
from trio_realtime.bus._shared import decode_origin, encode_origin
from trio_realtime.store import JetStreamStore

if TYPE_CHECKING:
    from pathlib import Path

    from trio_realtime import Subscription

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")

TIMEOUT = 20


def _fast(nats: str | NatsConnection, stream: str) -> JetStreamStore:
    """A store whose tail notices an outage in 0.3 s."""
    return JetStreamStore(nats, stream, heartbeat=0.1, timeout=5.0)


async def _receive(sub: Subscription, n: int) -> list[Event]:
    return [await sub.receive() for _ in range(n)]


async def test_two_buses_route_every_stored_event_in_seq_order(tmp_path: Path) -> None:
    """Two buses on one stream, publishing in turn and at once: each subscriber, on either
    bus, gets every persisted event once, in seq order; the publisher's event carries the
    seq the stream gave it."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_bus(store=_fast(server.url, "C")) as one,
            open_bus(store=_fast(server.url, "C")) as two,
            one.subscribe("c.>") as sub_one,
            two.subscribe("c.>") as sub_two,
            two.subscribe("c.two") as only_two,
        ):
            published: list[Event] = []
            for i in range(5):
                published.append(await one.publish("c.one", i))
                published.append(await two.publish("c.two", i))

            async def burst(bus_name: str) -> None:
                bus = one if bus_name == "one" else two
                for i in range(50):
                    event = await bus.publish(f"c.{bus_name}", i)
                    published.append(event)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(burst, "one")
                nursery.start_soon(burst, "two")
            seqs = sorted(e.seq or 0 for e in published)
            assert seqs == list(range(1, 111))
            assert [e.seq for e in await _receive(sub_one, 110)] == seqs
            got = await _receive(sub_two, 110)
            assert [e.seq for e in got] == seqs
            assert [(e.topic, e.data, e.id) for e in got] == [
                (e.topic, e.data, e.id) for e in sorted(published, key=lambda e: e.seq or 0)
            ]
            assert [e.topic for e in await _receive(only_two, 55)] == ["c.two"] * 55
            assert one.last_seq == two.last_seq == 110
            assert one.statistics().published == 55
            assert one.statistics().stored == 55


async def test_a_replay_on_one_bus_hands_over_while_the_other_publishes(tmp_path: Path) -> None:
    """A subscription with since= on one bus, made while the other keeps publishing, gets
    each event after since once, in seq order: no gap at the switch to live events."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_bus(store=_fast(server.url, "H")) as one,
            open_bus(store=_fast(server.url, "H")) as two,
        ):
            for i in range(300):
                await one.publish("h.x", i)
            done = trio.Event()

            async def keep_publishing() -> None:
                for i in range(300, 600):
                    await one.publish("h.x", i)
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_publishing)
                async with two.subscribe("h.>", since=100) as sub:
                    got = await _receive(sub, 500)
            assert done.is_set()
            assert [e.seq for e in got] == list(range(101, 601))
            assert [e.data for e in got] == list(range(100, 600))


async def test_deduplication_per_publisher_holds_across_buses(tmp_path: Path) -> None:
    """An event stored through one bus and sent again through the other: by the same
    publisher it is a duplicate (the original's seq, stored once); by another it is refused
    (DuplicateEventId). A retained persisted event is retained on every bus."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_bus(store=_fast(server.url, "D")) as one,
            open_bus(store=_fast(server.url, "D")) as two,
        ):
            event = Event(topic="d.x", data=1)
            first = await (await one.publish_pipelined(event, publisher="me")).wait()  # type: ignore[union-attr]
            assert first.seq == 1
            # Not yet seen by two's tail, or seen: a duplicate either way.
            pending = await two.publish_pipelined(event, publisher="me")
            assert not isinstance(pending, Event)
            again = await pending.wait()
            assert pending.duplicate
            assert again.seq == 1
            pending = await two.publish_pipelined(event, publisher="someone else")
            assert not isinstance(pending, Event)
            with pytest.raises(DuplicateEventId):
                await pending.wait()
            async with two.subscribe("d.r") as routed:
                retained = await one.publish("d.r", "value", retain=True)
                assert (await routed.receive()).seq == retained.seq
            assert [e.data for e in two.retained("d.>")] == ["value"]
            assert [e.data for e in one.retained("d.>")] == ["value"]
            assert [e.seq for e in await two.history("d.>")] == [1, retained.seq]
    assert decode_origin(encode_origin("p", True)) == ("p", True, True)
    assert decode_origin(encode_origin(None, False)) == (None, False, True)
    assert decode_origin("+x") == (None, False, False)
    assert decode_origin(None) == (None, False, False)


async def test_brokers_share_the_stream_and_a_client_resumes_on_another(tmp_path: Path) -> None:
    """Two brokers in this process, each with its JetStreamStore on one stream: a client
    publishing persisted events on one and a subscriber with since= on the other get every
    event once, in seq order, with the same epoch; after the subscriber's broker stops, a
    client on the other resumes from its last seq with no loss and no duplicate."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            running_broker(store=_fast(server.url, "B")) as one,
            running_broker(store=_fast(server.url, "B")) as two,
            open_client(one.url) as publisher,
        ):
            received: list[Event] = []
            async with open_client(two.url, reconnect=False) as reader:
                async with reader.subscribe("b.>", since=0) as sub:
                    for i in range(20):
                        event = await publisher.publish("b.x", i, ack=True)
                        assert event.seq == i + 1
                    async for event in sub:
                        received.append(event)
                        if len(received) == 10:
                            break
                epoch = reader.epoch
            await two.stop()
            for i in range(20, 30):
                await publisher.publish("b.x", i, ack=True)
            async with open_client(one.url) as resumed:
                assert resumed.epoch == epoch == publisher.epoch
                async with resumed.subscribe("b.>", since=received[-1].seq) as sub:
                    async for event in sub:
                        received.append(event)
                        if len(received) == 30:
                            break
            assert [e.seq for e in received] == list(range(1, 31))
            assert [e.data for e in received] == list(range(30))


async def test_publishes_wait_through_a_nats_outage(tmp_path: Path) -> None:
    """NATS stopped for two seconds under a publishing client: every persisted publish
    acknowledged is stored (none is acknowledged without), those that waited are stored
    once NATS is back, in the publisher's order, and the subscriber on the other broker
    gets them all, once."""
    with trio.fail_after(TIMEOUT * 2):
        async with (
            running_nats_server(tmp_path) as server,
            running_broker(store=_fast(server.url, "O")) as one,
            running_broker(store=_fast(server.url, "O")) as two,
            open_client(one.url) as publisher,
            open_client(two.url) as reader,
            reader.subscribe("o.>", since=0) as sub,
        ):
            acked: list[Event] = []
            some_acked = trio.Event()
            stopped = trio.Event()

            async def publish_on() -> None:
                for i in range(40):
                    acked.append(await publisher.publish("o.x", i, ack=True))
                    if i == 10:
                        some_acked.set()
                        await stopped.wait()  # (the next ones wait for NATS)

            async def outage() -> None:
                await some_acked.wait()
                await server.stop()
                stopped.set()
                await trio.sleep(2)  # (real time: NATS is away two seconds)
                await server.start()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(outage)
                nursery.start_soon(publish_on)
            assert [e.data for e in acked] == list(range(40))
            assert [e.seq for e in acked] == list(range(1, 41))
            got = await _receive(sub, 40)
            assert [e.seq for e in got] == list(range(1, 41))
            bus = one.broker.bus
            assert bus is not None
            assert [e.data for e in await bus.history("o.>", limit=100)] == list(range(40))


async def test_a_recreated_stream_is_a_new_epoch_for_clients(tmp_path: Path) -> None:
    """A broker restarted on a stream that was deleted and created again has a new epoch:
    a client resuming there is told (EpochChanged), and replays the new stream from its
    start."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            running_broker(store=_fast(server.url, "N")) as first,
        ):
            port = first.port
            async with (
                open_client(first.url, backoff_initial=0.01, backoff_max=0.05) as client,
                client.subscribe("n.>", since=0) as sub,
            ):
                await client.publish("n.x", "old", ack=True)
                assert (await sub.receive()).data == "old"
                old_epoch = client.epoch
                await first.stop()
                async with open_nats(server.url, wait=True) as nc:
                    await nc.request("$JS.API.STREAM.DELETE.N", b"", timeout=5)
                async with running_broker(store=_fast(server.url, "N"), port=port) as second:
                    async with open_client(second.url) as other:
                        await other.publish("n.x", "new", ack=True)
                    with pytest.raises(EpochChanged) as changed:
                        await sub.receive()
                    assert changed.value.old_epoch == old_epoch
                    assert changed.value.new_epoch == client.epoch != old_epoch
                    assert (await sub.receive()).data == "new"


async def test_a_retained_persisted_value_reaches_a_node_that_starts_later(
    tmp_path: Path,
) -> None:
    """A retained publish on a persisted topic is routed on every node from the stream; a
    node that starts afterwards (its tail begins at the stream's end) gets the value from
    the backplane's retained values, with the publishing node's id for it."""
    from trio_realtime.cluster import ClusterOptions, open_backplane

    def options(node: str) -> ClusterOptions:
        return ClusterOptions(servers=server.url, node=node, reconnect_wait=0.05)

    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_bus(store=_fast(server.url, "R")) as one,
            open_backplane(one, options("one")) as link_one,
        ):
            while not link_one.statistics().retained_loaded:
                await link_one.wait_changed()
            published = await one.publish("r.config", {"v": 1}, retain=True)
            assert published.seq == 1
            while link_one.statistics().retained_pending or link_one.statistics().pending:
                await link_one.wait_changed()  # (JetStream acknowledged the value)
            async with (
                open_bus(store=_fast(server.url, "R")) as late,
                open_backplane(late, options("late")) as link_late,
            ):
                while not link_late.statistics().retained_loaded:
                    await link_late.wait_changed()
                [value] = late.retained("r.config")
                assert (value.id, value.data) == (published.id, {"v": 1})
                assert late.last_seq == 1  # (found stored when it opened: not routed again)
