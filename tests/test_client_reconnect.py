"""The remote client losing its connection: reconnecting, resuming, and giving up."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from _scripted_server import Peer, scripted_server
from conftest import FAST, TIMEOUT, running_broker, start_broker

from trio_realtime import (
    ConnectionClosed,
    EpochChanged,
    Event,
    PermissionDenied,
    open_bus,
)
from trio_realtime.client._client import Client, ClientState, open_client
from trio_realtime.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_SLOW_CONSUMER,
    FORBIDDEN,
    Ack,
    Error,
    EventFrame,
    Hello,
    Ping,
    Pong,
    Publish,
    Subscribe,
    Subscribed,
)
from trio_realtime.store import MemoryStore


async def test_reconnect_resubscribes_resumes_and_flushes_the_outbox() -> None:
    """After a broker restart, subscriptions, serve and the inbox work again; stored events
    published meanwhile are replayed without duplicates; publishes made meanwhile are sent."""

    async def echo(event: Event) -> Any:
        return event.data

    with trio.fail_after(TIMEOUT):
        # The brokers serve in a nursery that encloses the client: they stop while it lives on.
        async with open_bus(store=MemoryStore()) as bus, trio.open_nursery() as nursery:
            first = await start_broker(nursery, bus=bus)
            async with (
                open_client(first.url, **FAST) as client,
                client.subscribe("r.>") as sub,
                client.serve("rpc.echo", echo),
            ):
                await client.publish("r.x", "before", ack=True)
                assert (await sub.receive()).data == "before"
                assert (await client.request("rpc.echo", 1)).data == 1
                epoch = client.epoch

                await first.stop()  # the broker shuts down: it closes the client with 1001
                await bus.publish("r.x", "stored while down")  # the client must catch up
                for i in range(700):  # more than one batch waits in the outbox
                    await client.publish("r.x", i)

                second = await start_broker(nursery, bus=bus, port=first.port)
                assert (await sub.receive()).data == "stored while down"
                assert [(await sub.receive()).data for _ in range(700)] == list(range(700))
                await client.publish("r.x", "after")
                assert (await sub.receive()).data == "after"
                assert (await client.request("rpc.echo", 2)).data == 2
                stats = client.statistics()
                assert stats.reconnects == 1
                assert stats.state is ClientState.CONNECTED
                assert client.epoch == epoch
            await second.stop()


async def test_reconnect_disabled_closes_the_client() -> None:
    """With reconnect=False a lost connection closes the client: everything raises."""
    called = trio.Event()
    outcome: list[BaseException] = []

    async def stall(event: Event) -> None:
        called.set()
        await trio.sleep_forever()

    async def ask(client: Client) -> None:
        try:
            await client.request("down.stall", timeout=TIMEOUT)
        except ConnectionClosed as exc:
            outcome.append(exc)

    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            running_broker(bus=bus) as served,
            trio.open_nursery() as nursery,
            bus.serve("down.stall", stall),
            open_client(served.url, reconnect=False) as client,
            client.subscribe("down.>") as sub,
            client.serve("down.rpc", stall),  # its handlers end quietly with the client
        ):
            nursery.start_soon(ask, client)
            await called.wait()
            await served.stop()
            with pytest.raises(ConnectionClosed) as info:
                await sub.receive()
            assert info.value.code == CLOSE_GOING_AWAY
            assert client.state is ClientState.CLOSED
            with pytest.raises(ConnectionClosed, match="lost the connection"):
                await client.publish("down.x", 1)
            with pytest.raises(ConnectionClosed):
                await client.history("down.>")
            with pytest.raises(ConnectionClosed):
                async with client.subscribe("down.y"):
                    pytest.fail("must not subscribe")
    assert len(outcome) == 1


@pytest.mark.parametrize(
    ("code", "reconnects"),
    [(CLOSE_GOING_AWAY, True), (CLOSE_SLOW_CONSUMER, True), (CLOSE_POLICY, False)],
)
async def test_close_code_decides_whether_to_reconnect(code: int, reconnects: bool) -> None:
    """1001 and 4001 make the client reconnect; 1008 closes it for good."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        if peer.index == 1:
            await peer.expect(Publish)
            await peer.close(code, "scripted close")
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            if reconnects:
                await client.publish("x.y", 1)
                await server.wait_connections(2)
                await client.wait_connected()
                assert client.statistics().reconnects == 1
            else:
                with pytest.raises(ConnectionClosed) as info:
                    await client.publish("x.y", 1, ack=True)
                assert info.value.code == CLOSE_POLICY
                assert "scripted close" in str(info.value)
                assert client.state is ClientState.CLOSED
                assert server.connections == 1


async def test_acked_publish_in_flight_is_resent_with_the_same_id() -> None:
    """An acked publish whose ack was lost with the connection is sent again, same id."""
    ids: list[str] = []

    async def script(peer: Peer) -> None:
        await peer.welcome()
        publish = await peer.expect(Publish)
        ids.append(publish.event.id)
        if peer.index == 1:
            await peer.close(CLOSE_GOING_AWAY, "restart")
            return
        assert publish.ref is not None
        await peer.send(Ack(ref=publish.ref, id=publish.event.id, seq=7))
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            event = await client.publish("a.b", 1, ack=True)
    assert event.seq == 7
    assert ids == [event.id, event.id]


async def test_a_request_sent_again_takes_the_new_inbox_and_a_new_id() -> None:
    """Each connection's welcome names its inbox; the client subscribes there for replies.
    A request whose answer was lost with the first connection is sent on the second as a new
    request: a reply_to in the new inbox and a new id (the first may have been stored)."""
    requests: list[Publish] = []

    async def script(peer: Peer) -> None:
        inbox = f"_inbox.conn{peer.index}"
        await peer.welcome(inbox=inbox)
        subscribe = await peer.expect(Subscribe)
        assert subscribe.pattern == f"{inbox}.>"
        await peer.send(Subscribed(id=subscribe.id))
        publish = await peer.expect(Publish)
        requests.append(publish)
        if peer.index == 1:
            await peer.close(CLOSE_GOING_AWAY, "restart")
            return
        assert publish.ref is not None
        reply_to = publish.event.reply_to
        assert reply_to is not None
        await peer.send(
            Ack(ref=publish.ref, id=publish.event.id),
            EventFrame(subs=(subscribe.id,), event=Event(topic=reply_to, data="answer")),
        )
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            reply = await client.request("svc.price", 1)
    assert reply.data == "answer"
    first, second = (request.event for request in requests)
    assert (first.reply_to, second.reply_to) == ("_inbox.conn1.1", "_inbox.conn2.1")
    assert first.id != second.id


async def test_instance_is_kept_across_reconnects_and_a_duplicate_ack_resolves() -> None:
    """hello.instance is one random id per client, sent again on every reconnect; a publish
    re-sent after its ack was lost is answered ``duplicate`` and returns the original seq."""
    hellos: list[Hello] = []

    async def script(peer: Peer) -> None:
        hellos.append(await peer.welcome())
        publish = await peer.expect(Publish)
        assert publish.ref is not None
        if peer.index == 1:  # stored as seq 7, but the ack is lost with the connection
            await peer.close(CLOSE_GOING_AWAY, "restart")
            return
        await peer.send(Ack(ref=publish.ref, id=publish.event.id, seq=7, duplicate=True))
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server:
            async with open_client(server.url, **FAST) as client:
                event = await client.publish("a.b", 1, ack=True)
                assert client.statistics().reconnects == 1
            async with open_client(server.url, **FAST) as other:
                pass
    assert (event.seq, event.data) == (7, 1)
    instances = [hello.instance for hello in hellos]
    assert instances[:2] == [client.instance, client.instance]
    assert instances[2] == other.instance != client.instance
    assert len(client.instance) == 32
    int(client.instance, 16)  # hex


async def test_resubscribe_resumes_after_the_last_seq_of_the_same_epoch() -> None:
    """A resubscribe resumes after the last seq seen; a new store is reported and replayed."""
    resubscribes: list[Subscribe] = []

    async def script(peer: Peer) -> None:
        await peer.welcome(epoch="one" if peer.index < 3 else "two")
        subscribe = await peer.expect(Subscribe)
        await peer.send(Subscribed(id=subscribe.id))
        if peer.index == 1:
            await peer.send(EventFrame(subs=(subscribe.id,), event=Event(topic="e.x", seq=41)))
            await peer.send(EventFrame(subs=(subscribe.id,), event=Event(topic="e.x", seq=42)))
        else:
            resubscribes.append(subscribe)
        if peer.index < 3:
            await peer.expect(Publish)
            await peer.close(CLOSE_GOING_AWAY)
        else:
            await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url, **FAST) as client,
            client.subscribe("e.>", since=40) as sub,
        ):
            assert [(await sub.receive()).seq for _ in range(2)] == [41, 42]
            await client.publish("e.go", 1)  # connection 1 closes on it
            await server.wait_connections(2)
            await client.wait_connected()
            await client.publish("e.go", 2)  # connection 2 closes on it
            await server.wait_connections(3)
            await client.wait_connected()
            assert client.epoch == "two"
            with pytest.raises(EpochChanged, match="'one' -> 'two'") as info:
                sub.receive_nowait()
            assert (info.value.old_epoch, info.value.new_epoch) == ("one", "two")
            with pytest.raises(trio.WouldBlock):
                sub.receive_nowait()  # reported once; the subscription goes on
    assert [(r.since, r.since_time) for r in resubscribes] == [(42, None), (0, None)]


async def test_refused_resubscribe_ends_the_subscription_with_the_error() -> None:
    """If the broker refuses to re-create a subscription after a reconnect, it ends."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        subscribe = await peer.expect(Subscribe)
        if peer.index == 1:
            await peer.send(Subscribed(id=subscribe.id))
            await peer.close(CLOSE_GOING_AWAY)
            return
        await peer.send(Error(ref=subscribe.id, code=FORBIDDEN, message="not any more"))
        await peer.idle()

    with trio.fail_after(TIMEOUT):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            async with client.subscribe("f.>") as sub:
                with pytest.raises(PermissionDenied, match="not any more"):
                    await sub.receive()
            assert client.statistics().subscriptions == 0


async def test_outbox_is_bounded_while_disconnected() -> None:
    """While disconnected, publishes wait in the outbox; when it is full, publish waits."""
    gate = trio.Event()
    received: list[object] = []
    all_in = trio.Event()

    async def script(peer: Peer) -> None:
        if peer.index == 1:
            await peer.welcome()
            await peer.close(CLOSE_GOING_AWAY)
            return
        await gate.wait()
        await peer.welcome()
        while True:
            frame = await peer.receive()
            if isinstance(frame, Publish):
                received.append(frame.event.data)
                if len(received) == 3:
                    all_in.set()

    with trio.fail_after(TIMEOUT):
        async with (
            scripted_server(script) as server,
            open_client(server.url, max_outbox=2, **FAST) as client,
        ):
            await server.wait_connections(2)  # the client is redialling; it waits at the gate
            assert client.state is ClientState.CONNECTING
            await client.publish("q.x", 1)
            await client.publish("q.x", 2)
            third_done = trio.Event()

            async def third() -> None:
                await client.publish("q.x", 3)
                third_done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(third)
                await trio.testing.wait_all_tasks_blocked()
                assert not third_done.is_set()
                assert client.statistics().outbox == 2
                gate.set()
            await all_in.wait()
    assert received == [1, 2, 3]


async def test_silent_broker_is_dropped_and_redialled(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """The client pings an idle broker after a heartbeat, drops one silent for two (closing
    with 1001), reconnects, and answers the broker's pings."""
    heartbeat = 5.0
    welcomed: list[float] = []
    pinged: list[float] = []
    ponged = trio.Event()

    async def script(peer: Peer) -> None:
        welcomed.append(trio.current_time())
        if peer.index == 1:
            await peer.welcome(heartbeat=heartbeat)
            while True:
                if isinstance(await peer.receive(), Ping):
                    pinged.append(trio.current_time())
        await peer.welcome()
        await peer.send(Ping())
        await peer.expect(Pong)
        ponged.set()
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT * heartbeat):
        async with scripted_server(script) as server, open_client(server.url, **FAST) as client:
            await server.wait_connections(2)
            await ponged.wait()
            assert server.close_codes == [CLOSE_GOING_AWAY]
            assert client.state is ClientState.CONNECTED
    first, second = welcomed
    assert [t - first for t in pinged] == [pytest.approx(heartbeat)]
    # dropped after two silent heartbeats; redialled after a backoff of at most 0.05 s
    assert 2 * heartbeat <= second - first <= 2 * heartbeat + FAST["backoff_max"]
