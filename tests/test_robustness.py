"""Regressions: stalls, leaks and crashes found by review of the broker, bus and client."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing
import trio_websocket
from conftest import RunningBroker, running_broker

from trio_realtime import Event, open_bus, open_client
from trio_realtime.store import MemoryStore

TIMEOUT = 20


async def test_leaving_a_full_block_subscription_does_not_stall_the_client(
    live_broker: RunningBroker, loopback_clock: trio.testing.MockClock
) -> None:
    """Leaving a `block` subscription that stalled the reader is immediate (no timeout runs
    out meanwhile); others go on."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_client(live_broker.url) as client,
            client.subscribe("other") as other,
        ):
            async with client.subscribe("full.>", max_buffer_size=1) as full:
                for i in range(5):
                    await client.publish("full.x", i)
                await trio.testing.wait_all_tasks_blocked()
                assert full.statistics().buffered == 2  # twice the buffer; the rest missed
                start = trio.current_time()
            # the unsubscribe confirmation is read at once: no virtual time passed
            assert trio.current_time() == start
            await client.publish("other", "after")
            assert (await other.receive()).data == "after"


async def test_a_stored_event_id_published_again_gets_an_error_frame() -> None:
    """An event id the store already has is refused to its publisher, not fatal to the session."""
    with trio.fail_after(TIMEOUT):
        async with running_broker(store=MemoryStore()) as server:
            broker = server.broker
            event = await broker.bus.publish_event(Event(topic="a.x", data=1))
            broker.bus._recent_ids.clear()  # as if it had left the window of recent ids
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await ws.send_message('{"type": "hello"}')
                await ws.get_message()
                wire = {**event.to_dict(), "seq": None}
                publish = {"type": "publish", "event": wire, "ref": 7}
                await ws.send_message(orjson.dumps(publish).decode())
                error = orjson.loads(await ws.get_message())
                assert (error["type"], error["ref"], error["code"]) == ("error", 7, "duplicate_id")
                assert "already stored" in error["message"]
                await ws.send_message('{"type": "ping"}')
                assert orjson.loads(await ws.get_message()) == {"type": "pong"}
            assert "internal" not in broker.statistics().errors


async def test_a_resent_event_still_being_stored_is_stored_once() -> None:
    """The same event id published twice before the first is stored is stored (and routed) once."""

    class SlowStore(MemoryStore):
        gate = trio.Event()

        async def append(self, events: list[Event]) -> list[Event]:  # type: ignore[override]
            await self.gate.wait()
            return await super().append(events)

    store = SlowStore()
    async with open_bus(store=store) as bus, bus.subscribe("d") as sub:
        event = Event(topic="d", data=1)
        results: list[Event] = []
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(lambda: _collect(bus.publish_event(event), results))
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
        assert [e.seq for e in results] == [1, 1]
        assert (await sub.receive()).id == event.id
        with pytest.raises(trio.WouldBlock):
            sub.receive_nowait()


async def _collect(publishing: object, into: list[Event]) -> None:
    into.append(await publishing)  # type: ignore[misc]


async def test_subscribe_since_cancelled_while_starting_leaves_nothing_behind() -> None:
    """A since-subscription cancelled at any point of its start is removed from the bus."""
    async with open_bus(store=MemoryStore()) as bus:
        await bus.publish("a.x", 1)
        for steps in range(6):
            async with trio.open_nursery() as nursery:

                async def subscriber() -> None:
                    async with bus.subscribe("a.>", since=0):
                        await trio.sleep_forever()

                async def canceller(steps: int = steps) -> None:
                    for _ in range(steps):
                        await trio.lowlevel.checkpoint()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(subscriber)
                nursery.start_soon(canceller)
            assert bus.statistics().subscriptions == 0


async def test_serving_on_a_taken_port_raises_oserror() -> None:
    """Broker.serve raises the OSError itself (not wrapped in groups) when it cannot listen."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as server:
            with pytest.raises(OSError, match="in use"):
                async with running_broker(port=server.port):
                    pytest.fail("served on a taken port")


async def test_a_client_that_does_not_read_answers_is_not_read_either() -> None:
    """Answers queued for a client are bounded: the broker stops reading it until it reads."""
    from trio_realtime.broker._limits import MAX_ANSWER_BACKLOG

    # 100,000 answers: enough to fill the loopback socket's buffers, so that the broker has
    # to stop reading. That takes seconds under coverage on a busy machine: a wider guard.
    per_message, messages = 5000, 20
    pings = orjson.dumps([{"type": "ping"}] * per_message).decode()
    with trio.fail_after(3 * TIMEOUT):
        async with running_broker() as server:
            broker = server.broker
            async with (
                trio_websocket.open_websocket_url(server.url, message_queue_size=0) as ws,
                trio.open_nursery() as sending,
            ):
                await ws.send_message('{"type": "hello"}')
                await ws.get_message()

                async def flood() -> None:
                    for _ in range(messages):
                        await ws.send_message(pings)

                sending.start_soon(flood)
                while True:  # until the broker has stopped reading this client
                    await trio.testing.wait_all_tasks_blocked()
                    (session,) = broker._sessions.values()
                    if session._room_lot.statistics().tasks_waiting:
                        break
                assert MAX_ANSWER_BACKLOG < session._queued_control <= MAX_ANSWER_BACKLOG + 5000
                # Now read: the broker reads again, and every ping is answered.
                pongs = 0
                while pongs < per_message * messages:
                    frames = orjson.loads(await ws.get_message())
                    pongs += len(frames) if isinstance(frames, list) else 1
