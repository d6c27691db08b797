"""The remote client publishing and subscribing, through a real broker or a scripted one."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing
from _scripted_server import Peer, scripted_server
from conftest import TIMEOUT, RunningBroker, running_broker

from trio_realtime import (
    Event,
    InvalidTopic,
    NoResponders,
    PermissionDenied,
    StoreUnavailable,
    event_type,
    open_bus,
)
from trio_realtime.client._client import ClientState, open_client
from trio_realtime.protocol import (
    EventFrame,
    Gap,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from trio_realtime.store import MemoryStore

# ---------------------------------------------------------------------------------------------
# Publishing


@event_type("test.client.point")
@attrs.frozen
class Point:
    """A typed payload for these tests."""

    x: int
    y: int


async def test_publish_reaches_a_subscriber_on_another_client(live_broker: RunningBroker) -> None:
    """An event published by one client arrives intact at another's subscription."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_client(live_broker.url, name="pub") as a,
            open_client(live_broker.url) as b,
            b.subscribe("orders.>") as sub,
        ):
            sent = await a.publish("orders.created", {"id": 1, "s": "é"}, headers={"k": "v"})
            assert sent.source == "pub"
            assert sent.seq is None
            assert await sub.receive() == sent
            typed = await a.publish("orders.paid", [1], type="custom", source="svc")
            got = await sub.receive()
            assert (
                (got.type, got.source, got.data)
                == ("custom", "svc", [1])
                == (
                    typed.type,
                    typed.source,
                    typed.data,
                )
            )


async def test_typed_subscription_over_the_broker(live_broker: RunningBroker) -> None:
    """subscribe(cls) delivers typed payloads; a payload that does not fit is counted."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_client(live_broker.url) as a,
            open_client(live_broker.url) as b,
            b.subscribe(Point) as sub,
        ):
            await a.publish(Point(1, 2))
            await a.publish("test.client.point", {"no": "fit"})
            await a.publish("test.client.point", {"x": 3, "y": 4})
            assert [(await sub.receive()).data for _ in range(2)] == [Point(1, 2), Point(3, 4)]
            assert sub.statistics().rejected == 1


async def test_ack_returns_the_brokers_seq(live_broker: RunningBroker) -> None:
    """publish(ack=True) returns seq None for an unstored topic, the store's seq otherwise."""
    with trio.fail_after(TIMEOUT):
        async with open_client(live_broker.url) as client:
            event = await client.publish("plain.x", 1, ack=True)
            assert event.seq is None
            assert event.data == 1
        async with (
            open_bus(store=MemoryStore()) as bus,
            running_broker(bus=bus) as stored,
            open_client(stored.url) as client,
        ):
            first = await client.publish("kept.x", 1, ack=True)
            second = await client.publish("kept.x", 2, ack=True)
            assert first.seq is not None
            assert second.seq == first.seq + 1
            assert client.statistics().in_flight == 0


async def test_bad_input_is_rejected_locally(live_broker: RunningBroker) -> None:
    """Bad topics, patterns, data and arguments raise before anything is sent."""
    with trio.fail_after(TIMEOUT):
        async with open_client(live_broker.url) as client:
            with pytest.raises(InvalidTopic, match=r"'a\.\*'"):
                await client.publish("a.*", 1)
            with pytest.raises(InvalidTopic):
                await client.publish("a.*", 1, ack=True)
            with pytest.raises(TypeError, match="data"):
                await client.publish("a.b", {1, 2})
            with pytest.raises(InvalidTopic):
                async with client.subscribe("a..b"):
                    pytest.fail("must not subscribe")
            with pytest.raises(TypeError, match="since"):
                async with client.subscribe("a.b", since=True):
                    pytest.fail("must not subscribe")
            with pytest.raises(ValueError, match="overflow"):
                async with client.subscribe("a.b", overflow="sometimes"):
                    pytest.fail("must not subscribe")
            with pytest.raises(InvalidTopic):
                await client.history("a..b")
            with pytest.raises(ValueError, match="limit"):
                await client.history("a.b", limit=-1)
            with pytest.raises(InvalidTopic):
                await client.request("a.>", 1)
            assert client.statistics().outbox == 0
            assert live_broker.broker.statistics().errors == {}


async def test_broker_refusals_map_to_exceptions(live_broker: RunningBroker) -> None:
    """The broker's error codes become PermissionDenied and StoreUnavailable (as on a bus)."""
    with trio.fail_after(TIMEOUT):
        async with open_client(live_broker.url) as client:
            with pytest.raises(PermissionDenied, match="reserved"):
                await client.publish("$sys.fake", 1, ack=True)
            with pytest.raises(StoreUnavailable, match="no store"):
                async with client.subscribe("a.b", since=0):
                    pytest.fail("a broker without a store cannot replay")
            with pytest.raises(StoreUnavailable, match="no store"):
                await client.history("a.>")
            # A refused fire-and-forget publish is counted; the connection goes on.
            await client.publish("$sys.fake", 1)
            await client.publish("a.b", 1, ack=True)  # answered after the error
            assert client.statistics().errors == 1
            assert client.state is ClientState.CONNECTED


# ---------------------------------------------------------------------------------------------
# Subscriptions


async def test_leaving_subscribe_unsubscribes_on_the_broker(live_broker: RunningBroker) -> None:
    """Once a subscription's block exits, normally or cancelled, the broker no longer routes."""
    with trio.fail_after(TIMEOUT):
        async with open_client(live_broker.url) as a, open_client(live_broker.url) as b:
            async with b.subscribe("leave.x") as sub:
                await a.publish("leave.x", 1)
                await sub.receive()
            with pytest.raises(trio.ClosedResourceError):
                sub.receive_nowait()
            with pytest.raises(NoResponders):
                await a.request("leave.x")
            with trio.CancelScope() as scope:
                async with b.subscribe("leave.x"):
                    scope.cancel()
                    await trio.sleep_forever()
            with pytest.raises(NoResponders):
                await a.request("leave.x")
            assert b.statistics().subscriptions == 0


async def test_subscribe_cancelled_before_the_answer_is_withdrawn() -> None:
    """A subscribe cancelled while waiting for ``subscribed`` is unsubscribed on the broker."""
    asked = trio.Event()
    withdrawn = trio.Event()

    async def script(peer: Peer) -> None:
        await peer.welcome()
        subscribe = await peer.expect(Subscribe)
        asked.set()  # and never answered
        unsubscribe = await peer.expect(Unsubscribe)
        assert unsubscribe.id == subscribe.id
        await peer.send(Unsubscribed(id=unsubscribe.id))
        withdrawn.set()
        await peer.idle()

    async def cancel_once_asked(scope: trio.CancelScope) -> None:
        await asked.wait()
        scope.cancel()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url) as client,
            trio.open_nursery() as nursery,
        ):
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_once_asked, scope)
                async with client.subscribe("w.x"):
                    pytest.fail("the broker never confirmed it")
            assert scope.cancelled_caught
            await withdrawn.wait()
            assert client.statistics().subscriptions == 0


async def test_full_block_subscription_pushes_back_and_counts_what_the_broker_dropped() -> None:
    """A full ``block`` subscription does not stall the connection: without a store, the
    client keeps twice its buffer and counts the rest as missed, so received + missed is what
    was published."""
    n = 300
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(session_buffer=8) as served,
            open_client(served.url) as a,
            open_client(served.url) as b,
            b.subscribe("bp.x", max_buffer_size=1) as sub,
            b.subscribe("bp.fence") as fence,
        ):
            for i in range(n):
                await a.publish("bp.x", [i, "x" * 65536])
            await a.publish("bp.fence", None, ack=True)
            await fence.receive()  # b's reader took every bp.x event before it
            received = []
            while True:
                try:
                    received.append(sub.receive_nowait().data[0])
                except trio.WouldBlock:
                    break
            assert sub.missed > 0
            assert len(received) + sub.missed == n
            assert received == sorted(received)
            assert len(received) <= 2
            assert b.statistics().reconnects == 0


async def test_event_frames_fan_out_and_gaps_count_as_missed() -> None:
    """An event frame reaches every listed subscription; a gap adds to ``missed``."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        one = await peer.expect(Subscribe)
        await peer.send(Subscribed(id=one.id))
        two = await peer.expect(Subscribe)
        event = Event(topic="g.x", data=1, seq=5)
        await peer.send(
            Subscribed(id=two.id),
            Gap(sub=one.id, missed=3),
            EventFrame(subs=(one.id, two.id), event=event),
        )
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url) as client,
            client.subscribe("g.>") as one,
            client.subscribe("g.x") as two,
        ):
            assert (await one.receive()).data == (await two.receive()).data == 1
            assert (one.missed, two.missed) == (3, 0)
            assert client.statistics().received == 1


async def test_a_gap_of_stored_events_is_caught_up_from_the_store() -> None:
    """A gap's stored events are re-read (resubscribe after the resume point); the rest count."""
    caught_up: list[Subscribe] = []

    async def script(peer: Peer) -> None:
        await peer.welcome(epoch="e")
        first = await peer.expect(Subscribe)
        await peer.send(Subscribed(id=first.id, seq=10), Gap(sub=first.id, missed=3, stored=2))
        unsubscribe = await peer.expect(Unsubscribe)
        assert unsubscribe.id == first.id
        again = await peer.expect(Subscribe)
        caught_up.append(again)
        await peer.send(
            Unsubscribed(id=first.id),
            Subscribed(id=again.id),
            EventFrame(subs=(again.id,), event=Event(topic="g.x", data="from the store", seq=11)),
        )
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url) as client,
            client.subscribe("g.>") as sub,
        ):
            assert (await sub.receive()).data == "from the store"
            assert sub.missed == 1  # the one dropped event that was not stored
            assert client.statistics().catch_ups == 1
    assert [(s.pattern, s.since) for s in caught_up] == [("g.>", 10)]


async def test_a_cancelled_client_leaves_at_once(
    live_broker: RunningBroker, loopback_clock: trio.testing.MockClock
) -> None:
    """Cancelling a scope around a client and its subscription ends both promptly: the block
    does not wait for an unsubscribe or a drain that its own cancelled tasks cannot send."""
    start = trio.current_time()
    with trio.move_on_after(0.5):
        async with (
            open_client(live_broker.url) as client,
            client.subscribe("cancelled.>"),
        ):
            await client.publish("cancelled.x", 1)
            await trio.sleep_forever()
    assert trio.current_time() - start < 1
