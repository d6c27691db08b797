"""The broker: serving, in-process and remote sharing one bus, actors, limits and shutdown.

Remote peers here are raw WebSocket clients speaking PROTOCOL.md in JSON, so these tests check
the wire behaviour itself rather than what ``open_client`` makes of it.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from conftest import TIMEOUT, RunningBroker, running_broker, start_broker

from trio_realtime import Event, InvalidTopic, open_bus
from trio_realtime._util import open_service_nursery
from trio_realtime.broker._broker import Broker, BrokerServer, BrokerStatistics, serve_broker
from trio_realtime.protocol import CLOSE_GOING_AWAY, CLOSE_HEARTBEAT, CLOSE_SLOW_CONSUMER
from trio_realtime.store import MemoryStore

Frame = dict[str, Any]

#: Messages a raw client accepts, in bytes: large enough for any batch these tests provoke.
CLIENT_MAX_MESSAGE: Final = 64 * 1024 * 1024
#: A payload large enough that a few queued events fill the socket buffers between peers.
BIG: Final = "x" * (64 * 1024)
#: Seconds a raw client waits for the broker to answer its closing handshake.
CLIENT_CLOSE_TIMEOUT: Final = 1.0
#: Receive buffer of a client meant to stall the broker's writer.
SMALL_RECEIVE_BUFFER: Final = 64 * 1024


class RawClient:
    """A bare WebSocket peer that speaks the wire protocol as JSON text."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, stream: trio.SocketStream) -> None:
        self.ws = ws
        self.stream = stream
        self._pending: deque[Frame] = deque()

    async def hello(self, client: str | None = "raw") -> Frame:
        """Send ``hello`` and return the ``welcome``."""
        await self.send({"type": "hello", "protocol": 1, "client": client})
        return await self.expect("welcome")

    async def send(self, frames: Frame | list[Frame]) -> None:
        """Send one frame, or a list of frames as one batch message."""
        await self.ws.send_message(json.dumps(frames))

    async def receive(self) -> list[Frame]:
        """The frames of the next message (batches flattened), or those left over."""
        if self._pending:
            frames = list(self._pending)
            self._pending.clear()
            return frames
        message = await self.ws.get_message()
        decoded = json.loads(message)
        return decoded if isinstance(decoded, list) else [decoded]

    async def expect(self, type_: str) -> Frame:
        """The next frame, which must be of type *type_*."""
        if not self._pending:
            self._pending.extend(await self.receive())
        frame = self._pending.popleft()
        assert frame["type"] == type_, f"expected a {type_!r} frame, got {frame!r}"
        return frame

    async def subscribe(self, sub_id: int, pattern: str, **fields: Any) -> None:
        """Subscribe and wait for ``subscribed``."""
        await self.send({"type": "subscribe", "id": sub_id, "pattern": pattern, **fields})
        assert (await self.expect("subscribed"))["id"] == sub_id

    async def until_closed(self) -> tuple[list[Frame], int | None]:
        """Read until the broker closes the connection: the frames, and the close code."""
        frames: list[Frame] = []
        try:
            while True:
                frames.extend(await self.receive())
        except trio_websocket.ConnectionClosed as exc:
            return frames, exc.reason.code if exc.reason is not None else None


@asynccontextmanager
async def connect(
    target: RunningBroker | BrokerServer, *, receive_buffer: int | None = None
) -> AsyncIterator[RawClient]:
    """A raw client connected to the *target* broker for the block.

    The client owns its TCP stream and closes it on the way out: ``open_websocket_url`` (as
    of trio-websocket 0.12) leaks the client's socket when the server starts the closing
    handshake, which ``filterwarnings = error`` turns into a ResourceWarning failure.
    *receive_buffer* pins the socket's receive buffer (no autotuning up to tens of MiB), so
    that a client that stops reading stalls the broker's writer after a few MiB.
    """
    async with open_service_nursery() as nursery:
        server = target.server if isinstance(target, RunningBroker) else target
        stream = await trio.open_tcp_stream(server.host, server.port)
        if receive_buffer is not None:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, server.host, "/", max_message_size=CLIENT_MAX_MESSAGE
            )
            try:
                yield RawClient(ws, stream)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLIENT_CLOSE_TIMEOUT):
                    await ws.aclose()
        finally:
            await trio.aclose_forcefully(stream)


async def publish(client: RawClient, topic: str, data: Any, ref: int, **fields: Any) -> Frame:
    """Publish from *client* with a ``ref`` and return the ``ack``."""
    await client.send(
        {"type": "publish", "event": {"topic": topic, "data": data, **fields}, "ref": ref}
    )
    ack = await client.expect("ack")
    assert ack["ref"] == ref
    return ack


def quiet(**options: Any) -> Broker:
    """A broker that publishes no ``$sys.stats`` unless asked to."""
    options.setdefault("stats_interval", None)
    return Broker(**options)


async def flood_until_stalled(broker: Broker, topic: str, per_round: int) -> int:
    """Publish big events on *topic* until the writer to a non-reading client is stuck.

    Returns how many were published. Stuck means: every task is blocked and no socket has
    anything to read (loopback delivers a segment within the send), and the broker has still
    not finished writing what was published.
    """
    published = 0
    for _ in range(200):
        for _ in range(per_round):
            await broker.bus.publish(topic, {"n": published, "pad": BIG})
            published += 1
        await trio.testing.wait_all_tasks_blocked()
        if broker.statistics().events_out < published:
            return published
    raise AssertionError("the client's socket never filled up")


class PingAnswerer:
    """Answers each ``ping`` with a ``pong`` after a simulated network delay.

    Runs against a :class:`trio.testing.MockClock`: the delay is a clock jump, so the test
    decides to the millisecond how late the answer is, whatever the machine's load.
    """

    def __init__(self, client: RawClient, clock: trio.testing.MockClock, delay: float) -> None:
        self.client = client
        self.clock = clock
        self.delay = delay
        self.pings = 0
        self.pong = trio.Event()
        self.close_code: int | None = None

    async def run(self) -> None:
        """Answer pings until the connection closes (then record its close code)."""
        try:
            while True:
                for frame in await self.client.receive():
                    if frame["type"] == "ping":
                        self.pings += 1
                        self.clock.jump(self.delay)
                        await self.client.send({"type": "pong"})
                    else:
                        assert frame["type"] == "pong", frame
                        self.pong.set()
        except trio_websocket.ConnectionClosed as exc:
            self.close_code = exc.reason.code if exc.reason is not None else -1


# -- serving ---------------------------------------------------------------------------------


async def test_serve_is_startable_and_reports_where_it_listens() -> None:
    """`nursery.start(broker.serve, host, 0)` returns a BrokerServer with the real port and url."""
    broker = quiet(name="unit")
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as running:
            server = running.server
            assert isinstance(server, BrokerServer)
            assert server.host == "127.0.0.1"
            assert server.port > 0
            assert server.url == f"ws://127.0.0.1:{server.port}"
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await ws.send_message(json.dumps({"type": "hello", "protocol": 1}))
                welcome = json.loads(await ws.get_message())
            assert welcome["type"] == "welcome"
            assert welcome["broker"] == "unit"
            assert welcome["protocol"] == 1


async def test_serve_broker_takes_broker_options() -> None:
    """`serve_broker(host, port, **options)` serves a Broker built with those options."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server: BrokerServer = await nursery.start(
                partial(serve_broker, name="shortcut", heartbeat=12.5, stats_interval=None),
                "127.0.0.1",
                0,
            )
            assert server.url == f"ws://127.0.0.1:{server.port}"
            async with connect(server) as client:
                welcome = await client.hello()
            assert welcome["broker"] == "shortcut"
            assert welcome["heartbeat"] == 12.5
            nursery.cancel_scope.cancel()


async def test_second_concurrent_serve_raises() -> None:
    """A broker that is serving refuses to serve a second time at once."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker):
            with pytest.raises(RuntimeError, match="already serving"):
                await broker.serve("127.0.0.1", 0)
            # The failed attempt did not disturb the running one.
            await broker.bus.publish("still.up", 1)


async def test_own_bus_exists_only_while_serving() -> None:
    """`broker.bus` raises RuntimeError before and after serving when the broker opens its bus."""
    broker = quiet()
    with pytest.raises(RuntimeError):
        _ = broker.bus
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker):
            assert broker.bus.statistics().subscriptions == 0
    with pytest.raises(RuntimeError):
        _ = broker.bus


async def test_broker_shares_an_existing_bus() -> None:
    """`Broker(bus=bus)` exposes that bus: local subscribers see remote publishes and back."""
    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus:
            broker = quiet(bus=bus)
            assert broker.bus is bus
            async with (
                running_broker(broker) as server,
                connect(server) as client,
                bus.subscribe("up.>") as local,
            ):
                await client.hello()
                await client.subscribe(1, "down.>")
                await publish(client, "up.x", {"n": 1}, ref=1)
                event = await local.receive()
                assert (event.topic, event.data) == ("up.x", {"n": 1})
                await bus.publish("down.y", "hi")
                frame = await client.expect("event")
                assert frame["subs"] == [1]
                assert (frame["event"]["topic"], frame["event"]["data"]) == ("down.y", "hi")
            # The bus outlives the broker that exposed it.
            assert broker.bus is bus
            await bus.publish("after.serve", 1)


async def test_bus_and_store_together_raise() -> None:
    """`Broker(bus=…, store=…)` is refused: the store belongs to `open_bus()` then."""
    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus:
            with pytest.raises(ValueError, match="store"):
                Broker(bus=bus, store=MemoryStore())
            with pytest.raises(ValueError, match="persist"):
                Broker(bus=bus, persist=["a.>"])


@pytest.mark.parametrize(
    "options",
    [
        {"slow_consumer": "block"},
        {"slow_consumer": "drop_newest"},
        {"heartbeat": 0},
        {"heartbeat": -1.0},
        {"handshake_timeout": 0},
        {"session_buffer": 0},
        {"session_buffer": -5},
    ],
)
def test_bad_options_raise(options: dict[str, Any]) -> None:
    """Options out of range raise ValueError at construction."""
    with pytest.raises(ValueError, match=next(iter(options))):
        Broker(**options)


# -- in process and remote share the broker --------------------------------------------------


async def test_remote_subscriber_receives_in_process_publish() -> None:
    """A remote subscription receives what `broker.bus.publish` sends, with its sub ids."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await client.subscribe(7, "orders.*")
            await client.subscribe(8, "orders.>")
            await broker.bus.publish("orders.created", {"id": 1}, headers={"k": "v"})
            frame = await client.expect("event")
            assert sorted(frame["subs"]) == [7, 8]
            event = frame["event"]
            assert event["topic"] == "orders.created"
            assert event["type"] == "orders.created"
            assert event["data"] == {"id": 1}
            assert event["headers"] == {"k": "v"}
            assert event["seq"] is None


async def test_in_process_subscriber_receives_remote_publish() -> None:
    """`broker.bus.subscribe` receives what a remote client publishes."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as server,
            connect(server) as client,
            broker.bus.subscribe("orders.>") as sub,
        ):
            await client.hello()
            ack = await publish(client, "orders.paid", [1, 2], ref=5, source="svc-a")
            event = await sub.receive()
            assert event.id == ack["id"]
            assert (event.topic, event.data, event.source) == ("orders.paid", [1, 2], "svc-a")


async def test_retained_in_process_value_reaches_new_remote_subscriber_first() -> None:
    """A value retained in process is the first event a later remote subscriber gets."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await broker.bus.publish("config.mode", "dark", retain=True)
            await client.hello()
            await client.subscribe(1, "config.>")
            await broker.bus.publish("config.lang", "fr")
            first = await client.expect("event")
            second = await client.expect("event")
            assert (first["event"]["topic"], first["event"]["data"]) == ("config.mode", "dark")
            assert (second["event"]["topic"], second["event"]["data"]) == ("config.lang", "fr")


# -- actors ----------------------------------------------------------------------------------


async def test_actors_run_for_each_matching_event() -> None:
    """Sync and async actors each see every matching event, in order, and nothing else."""
    broker = quiet()
    sync_seen: list[str] = []
    async_seen: list[str] = []
    done = trio.Event()

    @broker.on("orders.>")
    def record(event: Event) -> None:
        sync_seen.append(event.topic)

    @broker.on("orders.>")
    async def record_async(event: Event) -> None:
        await trio.lowlevel.checkpoint()
        async_seen.append(event.topic)
        if len(async_seen) == 3:
            done.set()

    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await publish(client, "orders.created", 1, ref=1)
            await publish(client, "billing.paid", 2, ref=2)
            await publish(client, "orders.a.b", 3, ref=3)
            await broker.bus.publish("orders.local", 4)
            await done.wait()
            await trio.testing.wait_all_tasks_blocked()
    expected = ["orders.created", "orders.a.b", "orders.local"]
    assert sync_seen == expected
    assert async_seen == expected


async def test_failing_actor_is_logged_counted_and_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An actor that raises is logged and counted, goes on with later events, spares others."""
    broker = quiet()
    fragile_seen: list[object] = []
    sturdy_seen: list[object] = []
    sturdy_done = trio.Event()

    @broker.on("jobs.>")
    def fragile(event: Event) -> None:
        if event.data == "boom":
            raise RuntimeError("kaboom")
        fragile_seen.append(event.data)

    @broker.on("jobs.>")
    async def sturdy(event: Event) -> None:
        sturdy_seen.append(event.data)
        if len(sturdy_seen) == 3:
            sturdy_done.set()

    caplog.set_level(logging.ERROR, logger="trio_realtime.broker")
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await publish(client, "jobs.a", "before", ref=1)
            await publish(client, "jobs.a", "boom", ref=2)
            await publish(client, "jobs.a", "after", ref=3)
            await sturdy_done.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert broker.statistics().actor_errors == 1
            # The broker still serves its clients.
            await client.send({"type": "ping"})
            await client.expect("pong")
    assert fragile_seen == ["before", "after"]
    assert sturdy_seen == ["before", "boom", "after"]
    failures = [r for r in caplog.records if "fragile" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)


async def test_actor_publishes_through_the_bus_to_remote_clients() -> None:
    """What an actor publishes on `broker.bus` reaches a remote subscriber."""
    broker = quiet()

    @broker.on("orders.created")
    async def confirm(event: Event) -> None:
        await broker.bus.publish("orders.confirmed", {"order": event.data})

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as server,
            connect(server) as watcher,
            connect(server) as shop,
        ):
            await watcher.hello()
            await watcher.subscribe(1, "orders.confirmed")
            await shop.hello()
            await publish(shop, "orders.created", 17, ref=1)
            frame = await watcher.expect("event")
            assert frame["event"]["topic"] == "orders.confirmed"
            assert frame["event"]["data"] == {"order": 17}


async def test_grouped_actors_share_events() -> None:
    """Actors in one group each handle a share: every event exactly once overall."""
    broker = quiet()
    handled: dict[str, list[int]] = {"a": [], "b": []}
    total = 20
    all_done = trio.Event()

    def record(name: str, event: Event) -> None:
        handled[name].append(event.data)
        if sum(map(len, handled.values())) == total:
            all_done.set()

    broker.on("work.>", group="g")(partial(record, "a"))
    broker.on("work.>", group="g")(partial(record, "b"))

    with trio.fail_after(TIMEOUT):
        async with running_broker(broker):
            for n in range(total):
                await broker.bus.publish("work.item", n)
            await all_done.wait()
            await trio.testing.wait_all_tasks_blocked()
    assert sorted(handled["a"] + handled["b"]) == list(range(total))
    assert handled["a"]
    assert handled["b"]


@pytest.mark.parametrize("pattern", ["", "orders..x", "orders.>.x", "orders.a*", "a b"])
def test_on_rejects_invalid_patterns(pattern: str) -> None:
    """`broker.on()` with an invalid pattern raises InvalidTopic at once."""
    broker = quiet()
    with pytest.raises(InvalidTopic):
        broker.on(pattern)


# -- $sys events and statistics --------------------------------------------------------------


async def test_sys_connect_and_disconnect_events() -> None:
    """`$sys.connect` / `$sys.disconnect` name the client, its session and its address."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, broker.bus.subscribe("$sys.>") as sys_events:
            async with connect(server) as client:
                welcome = await client.hello("alice")
                local = client.ws.local
                assert isinstance(local, trio_websocket.Endpoint)
                address = f"{local.address}:{local.port}"
                connected = await sys_events.receive()
                assert connected.topic == "$sys.connect"
                assert connected.data == {
                    "client": "alice",
                    "session": welcome["session"],
                    "address": address,
                }
            disconnected = await sys_events.receive()
            assert disconnected.topic == "$sys.disconnect"
            assert disconnected.data == connected.data


async def test_sys_stats_are_published_periodically(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """With `stats_interval`, `$sys.stats` events carry the `statistics()` figures, once
    per interval."""
    interval = 5.0
    broker = Broker(stats_interval=interval)
    times: list[float] = []
    with trio.fail_after(TIMEOUT * interval):
        async with (
            running_broker(broker) as server,
            broker.bus.subscribe("$sys.stats") as stats,
            connect(server) as client,
        ):
            await client.hello()
            # Skip figures taken before the client connected.
            while True:
                event = await stats.receive()
                times.append(trio.current_time())
                if event.data["connections"] == 1:
                    break
            await stats.receive()
            times.append(trio.current_time())
    assert set(event.data) == set(attrs.fields_dict(BrokerStatistics))
    assert event.data["connections_total"] == 1
    assert event.data["subscriptions"] == 1  # the stats subscription itself
    assert event.data["errors"] == {}
    assert [b - a for a, b in itertools.pairwise(times)] == [pytest.approx(interval)] * (
        len(times) - 1
    )


async def test_statistics_count_what_the_broker_sees() -> None:
    """`broker.statistics()` counts connections, subscriptions, events in and out, errors."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as reader:
            assert broker.statistics().connections == 0
            await reader.hello()
            await reader.subscribe(1, "s.>")
            await reader.subscribe(2, "s.x")
            async with connect(server) as writer:
                await writer.hello()
                stats = broker.statistics()
                assert (stats.connections, stats.connections_total) == (2, 2)
                assert stats.subscriptions == 2
                for ref in range(3):
                    await publish(writer, "s.x", ref, ref=ref)
                for _ in range(3):
                    await reader.expect("event")  # one frame for both matching subs
                await writer.send({"type": "subscribe", "id": 9, "pattern": "bad..pattern"})
                error = await writer.expect("error")
                assert (error["ref"], error["code"]) == (9, "invalid_topic")
                await writer.send({"type": "no_such_frame"})
                assert (await writer.expect("error"))["code"] == "unknown_type"
            await trio.testing.wait_all_tasks_blocked()
            stats = broker.statistics()
            assert (stats.connections, stats.connections_total) == (1, 2)
            assert stats.subscriptions == 2
            assert stats.events_in == 3
            assert stats.events_out == 3
            assert stats.published == 3 + 3  # and $sys.connect twice, $sys.disconnect once
            assert stats.dropped == 0
            assert stats.stored == 0
            assert stats.errors == {"invalid_topic": 1, "unknown_type": 1}


# -- slow consumers --------------------------------------------------------------------------


async def test_slow_consumer_drops_oldest_without_blocking_publisher() -> None:
    """A client that does not read loses its oldest events (reported by `gap`), never stalls."""
    broker = quiet(session_buffer=5)
    published = 200
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await client.subscribe(3, "feed.>")
            # The client reads nothing while this runs: the publisher must never wait for it.
            for n in range(published):
                await broker.bus.publish("feed.tick", {"n": n, "pad": BIG})
            assert broker.statistics().dropped > 0

            received: list[int] = []
            missed = 0
            while len(received) + missed < published:
                for frame in await client.receive():
                    if frame["type"] == "gap":
                        assert frame["sub"] == 3
                        missed += frame["missed"]
                    else:
                        assert frame["type"] == "event", frame
                        assert frame["subs"] == [3]
                        received.append(frame["event"]["data"]["n"])
            assert len(received) + missed == published
            assert missed > 0
            assert received == sorted(set(received))  # in order, no duplicates
            # The newest events (the last session_buffer published) always get through.
            assert received[-5:] == list(range(published - 5, published))
            assert broker.statistics().dropped == missed
            # Still connected and usable.
            await client.send({"type": "ping"})
            await client.expect("pong")


async def test_slow_consumer_disconnect_policy() -> None:
    """With `slow_consumer="disconnect"` a slow client gets `slow_consumer` and close 4001."""
    broker = quiet(slow_consumer="disconnect", session_buffer=5)
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as server,
            connect(server) as slow,
            connect(server) as other,
        ):
            await slow.hello()
            await slow.subscribe(1, "burst.>")
            await other.hello()
            await other.subscribe(1, "feed.>")
            for n in range(200):
                await broker.bus.publish("burst.x", {"n": n, "pad": BIG})

            frames, code = await slow.until_closed()
            errors = [f for f in frames if f["type"] == "error"]
            assert [e["code"] for e in errors] == ["slow_consumer"]
            assert code == CLOSE_SLOW_CONSUMER
            assert all(f["type"] in ("event", "error") for f in frames)

            # The other client is unaffected.
            await broker.bus.publish("feed.x", "still here")
            frame = await other.expect("event")
            assert frame["event"]["data"] == "still here"
            await other.send({"type": "ping"})
            await other.expect("pong")
            await trio.testing.wait_all_tasks_blocked()
            stats = broker.statistics()
            assert stats.connections == 1
            assert stats.errors == {"slow_consumer": 1}


async def test_slow_consumer_that_leaves_first_is_not_an_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow client (disconnect policy) that closes before being told is no broker failure."""
    broker = quiet(slow_consumer="disconnect", session_buffer=5)
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server:
            async with connect(server, receive_buffer=SMALL_RECEIVE_BUFFER) as client:
                await client.hello()
                await client.subscribe(1, "feed.>")
                await flood_until_stalled(broker, "feed.x", per_round=4)  # within the buffer
                for n in range(6):  # the sixth queued event overflows: disconnect it
                    await broker.bus.publish("feed.x", {"n": -n, "pad": BIG})
                assert broker.statistics().errors == {"slow_consumer": 1}
                # ...but the client closes before the broker gets to say so.
            await trio.testing.wait_all_tasks_blocked()
            assert broker.statistics().connections == 0
            assert broker.statistics().errors == {"slow_consumer": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- heartbeat -------------------------------------------------------------------------------


async def test_silent_client_is_pinged_then_closed(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A client that sends nothing gets a `ping` after an interval and is closed (4002)
    after two."""
    interval = 5.0
    broker = quiet(heartbeat=interval)
    with trio.fail_after(TIMEOUT * interval):
        async with running_broker(broker) as server, connect(server) as client:
            start = trio.current_time()
            welcome = await client.hello()
            assert welcome["heartbeat"] == interval
            frames, code = await client.until_closed()
            elapsed = trio.current_time() - start
            assert code == CLOSE_HEARTBEAT
            assert frames == [{"type": "ping"}]
            assert elapsed == pytest.approx(2 * interval)
            await trio.testing.wait_all_tasks_blocked()
            assert broker.statistics().connections == 0


async def test_client_answering_pings_stays_connected(mock_clock: trio.testing.MockClock) -> None:
    """A client that answers each `ping` (within a second) stays connected for many intervals."""
    mock_clock.rate = 1.0  # real time flows too, so the hang guard works
    interval = 100.0
    broker = quiet(heartbeat=interval)
    ticks = 6
    with trio.fail_after(TIMEOUT + (ticks + 1) * (interval + 1)):
        async with (
            running_broker(broker) as server,
            connect(server) as client,
            trio.open_nursery() as nursery,
        ):
            await client.hello()
            await trio.testing.wait_all_tasks_blocked()  # the heartbeat is armed
            answerer = PingAnswerer(client, mock_clock, delay=1.0)
            nursery.start_soon(answerer.run)
            for _ in range(ticks):
                mock_clock.jump(interval)
                await trio.testing.wait_all_tasks_blocked()
            assert answerer.close_code is None
            assert answerer.pings >= ticks // 2
            await client.send({"type": "ping"})
            await answerer.pong.wait()
            assert broker.statistics().connections == 1
            assert broker.statistics().errors == {}
            nursery.cancel_scope.cancel()


async def test_heartbeat_tolerates_late_timer_ticks(mock_clock: trio.testing.MockClock) -> None:
    """A client that answered its ping is pinged again, not closed, when timer ticks run late."""
    mock_clock.rate = 1.0
    interval = 100.0
    broker = quiet(heartbeat=interval)
    with trio.fail_after(TIMEOUT + 4 * (interval + 1)):
        async with (
            running_broker(broker) as server,
            connect(server) as client,
            trio.open_nursery() as nursery,
        ):
            await client.hello()
            await trio.testing.wait_all_tasks_blocked()
            answerer = PingAnswerer(client, mock_clock, delay=1.0)
            nursery.start_soon(answerer.run)
            mock_clock.jump(interval)  # tick 1: idle for an interval: ping; pong 1 s later
            await trio.testing.wait_all_tasks_blocked()
            assert answerer.pings == 1
            mock_clock.jump(interval - 0.5)  # tick 2 fires 0.5 s late: idle 99.5 s, no ping
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(interval + 0.6)  # tick 3 fires 0.6 s late
            await trio.testing.wait_all_tasks_blocked()
            assert answerer.close_code is None, "closed although it answered every ping"
            await client.send({"type": "ping"})
            await answerer.pong.wait()
            nursery.cancel_scope.cancel()


# -- graceful shutdown -----------------------------------------------------------------------


async def test_shutdown_closes_clients_with_going_away(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """Cancelling serve closes clients with 1001; one that never answers is cut off after
    shutdown_timeout."""
    shutdown_timeout = 5.0
    broker = quiet(shutdown_timeout=shutdown_timeout)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_broker(nursery, broker)
            async with connect(server) as polite, connect(server) as stuck:
                await polite.hello("polite")
                await stuck.hello("stuck")
                await stuck.subscribe(1, "feed.>")
                # The stuck client stops reading: its WebSocket queues one message, then its
                # reader stops reading the socket, so it never sees (or answers) the close.
                for n in range(3):
                    await broker.bus.publish("feed.x", n)
                    await trio.testing.wait_all_tasks_blocked()

                start = server.stop_nowait()
                frames, code = await polite.until_closed()
                assert frames == []
                assert code == CLOSE_GOING_AWAY
                await server.stopped.wait()
                elapsed = trio.current_time() - start
                # The broker waited for the stuck client, but no longer than it allows.
                assert elapsed == pytest.approx(shutdown_timeout)
                # The stuck client was cut off: reading now drains and ends.
                frames, _ = await stuck.until_closed()
                assert [f["event"]["data"] for f in frames] == [0, 1, 2]


async def test_shutdown_while_writing_a_backlog_ends_cleanly(
    caplog: pytest.LogCaptureFixture, loopback_clock: trio.testing.MockClock
) -> None:
    """Stopping while a backlog is being written to a client ends serve cleanly, with 1001,
    before shutdown_timeout."""
    shutdown_timeout = 5.0
    broker = quiet(shutdown_timeout=shutdown_timeout)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_broker(nursery, broker)
            async with connect(server, receive_buffer=SMALL_RECEIVE_BUFFER) as client:
                await client.hello()
                await client.subscribe(1, "feed.>")
                await flood_until_stalled(broker, "feed.x", per_round=16)
                start = server.stop_nowait()
                frames, code = await client.until_closed()
                assert code == CLOSE_GOING_AWAY
                assert all(f["type"] == "event" for f in frames)
                await server.stopped.wait()
                assert trio.current_time() - start < shutdown_timeout
    assert "internal" not in broker.statistics().errors
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_shutdown_not_held_up_by_a_slow_sys_subscriber(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A full in-process `$sys.>` subscription cannot keep serve from stopping in time."""
    shutdown_timeout = 5.0
    broker = quiet(shutdown_timeout=shutdown_timeout)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await start_broker(nursery, broker)
            async with broker.bus.subscribe("$sys.>", max_buffer_size=1) as sys_events:
                async with connect(server) as client:
                    await client.hello()  # $sys.connect fills the subscription's buffer
                await trio.testing.wait_all_tasks_blocked()
                server.stop_nowait()
                with trio.move_on_after(2 * shutdown_timeout):
                    await server.stopped.wait()
                stopped_in_time = server.stopped.is_set()
                if not stopped_in_time:
                    await sys_events.receive()  # make room: let the broker finish stopping
                    await server.stopped.wait()
    assert stopped_in_time, "serve did not stop within shutdown_timeout"


# -- request/reply ---------------------------------------------------------------------------


async def test_remote_request_to_in_process_responder() -> None:
    """A raw requester gets the reply of a `broker.bus.serve` responder on its inbox."""
    broker = quiet()

    async def double(event: Event) -> int:
        assert isinstance(event.data, int)
        return event.data * 2

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as server,
            connect(server) as client,
            broker.bus.serve("math.double", double),
        ):
            await client.hello()
            await client.subscribe(1, "_inbox.req-1")
            await client.send(
                {
                    "type": "publish",
                    "event": {"topic": "math.double", "data": 21, "reply_to": "_inbox.req-1"},
                    "ref": 2,
                }
            )
            frames: dict[str, Frame] = {}
            while len(frames) < 2:
                for frame in await client.receive():
                    assert frame["type"] not in frames, frame
                    frames[frame["type"]] = frame
            assert frames["ack"]["ref"] == 2
            reply = frames["event"]
            assert reply["subs"] == [1]
            assert reply["event"]["topic"] == "_inbox.req-1"
            assert reply["event"]["data"] == 42


async def test_request_without_responders_is_refused() -> None:
    """A publish with `reply_to` that nothing subscribes to gets `no_responders` with its ref."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await client.subscribe(1, "_inbox.req-2")
            published = broker.statistics().published
            await client.send(
                {
                    "type": "publish",
                    "event": {"topic": "nobody.home", "data": 1, "reply_to": "_inbox.req-2"},
                    "ref": 3,
                }
            )
            error = await client.expect("error")
            assert (error["ref"], error["code"]) == (3, "no_responders")
            assert broker.statistics().published == published  # not routed
            await client.send({"type": "ping"})
            await client.expect("pong")
            assert broker.statistics().errors == {"no_responders": 1}


# -- leaving ---------------------------------------------------------------------------------


async def test_abrupt_disconnect_removes_subscriptions() -> None:
    """A client that drops its TCP connection loses its bus subscriptions."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(broker) as server,
            broker.bus.subscribe("$sys.disconnect") as departures,
            connect(server) as client,
        ):
            before = broker.bus.statistics().subscriptions
            await client.hello()
            await client.subscribe(1, "a.>")
            await client.subscribe(2, "b.*")
            await client.subscribe(3, "c")
            assert broker.bus.statistics().subscriptions == before + 3
            await client.stream.aclose()  # no closing handshake
            await departures.receive()  # published once the session has tidied up
            assert broker.bus.statistics().subscriptions == before
            assert broker.statistics().connections == 0
            # Publishing to the patterns it had is fine and reaches nobody.
            await broker.bus.publish("a.x", 1)
            assert broker.statistics().events_out == 0


async def test_client_closing_during_a_backlog_leaves_broker_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber that closes while a backlog is being written to it ends just its session."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server:
            async with connect(server, receive_buffer=SMALL_RECEIVE_BUFFER) as client:
                await client.hello()
                await client.subscribe(1, "feed.>")
                published = await flood_until_stalled(broker, "feed.x", per_round=16)
                # More to write once the stuck write completes: that write meets a closed socket.
                await broker.bus.publish("feed.x", {"n": published, "pad": BIG})
            async with connect(server) as other:
                await other.hello()
                await other.send({"type": "ping"})
                await other.expect("pong")
                await trio.testing.wait_all_tasks_blocked()
                stats = broker.statistics()
                assert (stats.connections, stats.connections_total) == (1, 2)
                assert stats.subscriptions == 0
                assert stats.errors == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- history without a store -----------------------------------------------------------------


async def test_history_without_store_is_an_error() -> None:
    """`history` on a broker without a store gets an `error` with the request's ref."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await client.send({"type": "history", "ref": 11, "pattern": "a.>"})
            error = await client.expect("error")
            assert error["ref"] == 11
            assert error["message"]
            await client.send({"type": "ping"})
            await client.expect("pong")


async def test_subscribe_since_without_store_is_an_error() -> None:
    """`subscribe` with `since` on a broker without a store gets an `error` with its id."""
    broker = quiet()
    with trio.fail_after(TIMEOUT):
        async with running_broker(broker) as server, connect(server) as client:
            await client.hello()
            await client.send({"type": "subscribe", "id": 4, "pattern": "a.>", "since": 0})
            error = await client.expect("error")
            assert error["ref"] == 4
            assert error["message"]
            assert broker.bus.statistics().subscriptions == 0
            # Nothing was subscribed: events on the pattern do not arrive.
            await broker.bus.publish("a.x", 1)
            await client.send({"type": "ping"})
            await client.expect("pong")


async def test_a_port_in_use_fails_before_the_store_is_opened(tmp_path: Path) -> None:
    """serve() binds its port before it opens its store: a port in use raises OSError and an
    SQLite store leaves no file behind; the broker may then serve elsewhere."""
    from trio_realtime.store import SQLiteStore

    path = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        async with running_broker() as taken:
            broker = Broker(store=SQLiteStore(path), stats_interval=None)
            async with trio.open_nursery() as nursery:
                with pytest.raises(OSError):
                    await nursery.start(broker.serve, "127.0.0.1", taken.port)
                assert not path.exists()
                server = await nursery.start(broker.serve, "127.0.0.1", 0)
                assert path.exists()
                assert server.port != taken.port
                nursery.cancel_scope.cancel()
