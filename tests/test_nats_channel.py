"""The NATS EventChannel (trio_realtime.natschannel) against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from _nats_server import running_nats_server
from conftest import TIMEOUT

from trio_realtime import ConnectionClosed, Event, EventChannel, StoreUnavailable, Subscription
from trio_realtime._nats import open_nats
from trio_realtime.cluster import ClusterOptions
from trio_realtime.natschannel import NatsChannel, open_nats_channel
from trio_realtime.natschannel._retained import retained_stream_name
from trio_realtime.testing import check_channel

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")


async def test_the_nats_channel_passes_check_channel(tmp_path: Path) -> None:
    """Channels over one nats-server meet the EventChannel contract."""
    with trio.fail_after(120):
        async with running_nats_server(tmp_path) as server:

            @asynccontextmanager
            async def connect() -> AsyncIterator[EventChannel]:
                async with open_nats_channel(server.url) as channel:
                    yield channel

            await check_channel(connect)


async def test_the_nats_channel_passes_check_channel_with_a_stream(tmp_path: Path) -> None:
    """With a JetStream stream every channel shares, history, since and acks with seqs work."""
    with trio.fail_after(120):
        async with running_nats_server(tmp_path) as server:

            @asynccontextmanager
            async def connect() -> AsyncIterator[EventChannel]:
                async with open_nats_channel(server.url, stream="CHECK") as channel:
                    yield channel

            await check_channel(connect, stored=True)


# ---------------------------------------------------------------------------------------------
# Over NATS: what the contract does not say


async def test_without_jetstream_there_are_no_retained_values(tmp_path: Path) -> None:
    """Without JetStream, retaining raises StoreUnavailable; the rest works."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path, jetstream=False) as server,
            open_nats_channel(server.url) as channel,
        ):
            assert not channel.statistics().retained
            with pytest.raises(StoreUnavailable, match="JetStream"):
                await channel.publish("a.b", 1, retain=True)
            async with channel.subscribe("a.b") as sub:
                await channel.publish("a.b", 2)
                assert (await sub.receive()).data == 2


async def test_channels_share_nats_subscriptions(tmp_path: Path) -> None:
    """Subscriptions to one pattern (and group) share one NATS subscription, gone with the
    last of them."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url) as channel,
        ):
            async with (
                channel.subscribe("a.*") as one,
                channel.subscribe("a.*") as two,
                channel.subscribe("a.*", group="g") as three,
            ):
                stats = channel.statistics()
                assert (stats.subscriptions, stats.nats_subscriptions) == (3, 2)
                await channel.publish("a.x", "both")
                assert [(await s.receive()).data for s in (one, two, three)] == ["both"] * 3
                assert channel.statistics().received == 2  # one message per NATS one
            stats = channel.statistics()
            assert (stats.subscriptions, stats.nats_subscriptions) == (0, 0)


async def test_a_queue_group_is_shared_with_plain_nats_members(tmp_path: Path) -> None:
    """A queue group is a NATS queue group: a plain NATS member takes its share."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url) as channel,
            open_nats(server.url, wait=True) as plain,
        ):
            theirs = await plain.subscribe("tr.jobs.>", queue="workers")
            await plain.flush()
            async with channel.subscribe("jobs.>", group="workers") as ours:
                n = 200
                for i in range(n):
                    await channel.publish("jobs.run", i)
                await channel.publish("jobs.end", "marker", ack=True)
                got: list[Any] = []
                done = trio.Event()

                async def take_ours() -> None:
                    async for event in ours:
                        got.append(event.data)
                        if len(got) >= n + 1:
                            done.set()

                async def take_theirs() -> None:
                    while True:
                        for message in await theirs.receive_batch():
                            got.append(orjson.loads(message.data))
                            if len(got) >= n + 1:
                                done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(take_ours)
                    nursery.start_soon(take_theirs)
                    await done.wait()
                    nursery.cancel_scope.cancel()
            assert sorted(got, key=str) == sorted([*range(n), "marker"], key=str)


async def test_a_message_that_is_no_event_is_counted_and_skipped(tmp_path: Path) -> None:
    """A message that claims to be a CloudEvent but is not a valid one is dropped, counted."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url) as channel,
            open_nats(server.url, wait=True) as plain,
            channel.subscribe("a.>") as sub,
        ):
            plain.publish_nowait("tr.a.b", b"{}", headers={"ce-specversion": "0.3"})
            plain.publish_nowait("tr.a.é", b"1")  # (not a topic)
            plain.publish_nowait("tr.a.c", b"2")
            await plain.flush()
            event = await sub.receive()
            assert (event.topic, event.data) == ("a.c", 2)
            assert channel.statistics().bad_messages == 2


async def test_opening_without_nats_fails(tmp_path: Path) -> None:
    """No NATS server within connect_timeout: ConnectionClosed."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server:
            url = server.url
        with pytest.raises(ConnectionClosed, match="not reachable"):
            async with open_nats_channel(url, connect_timeout=0.5):
                pass  # pragma: no cover


async def test_closing_fails_a_waiting_request(tmp_path: Path) -> None:
    """aclose() while a request waits for its reply: the request raises ClosedResourceError."""

    async def stall(event: Event) -> None:
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url) as channel,
            channel.serve("slow.rpc", stall),
        ):
            failures: list[BaseException] = []

            async def ask() -> None:
                try:
                    await channel.request("slow.rpc", None)
                except trio.ClosedResourceError as exc:
                    failures.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()
                await channel.aclose()
            assert len(failures) == 1


async def until_connected(channel: NatsChannel, up: bool) -> None:
    """Wait until *channel* is connected to NATS (*up*) or not."""
    while channel.connected != up:
        await channel.wait_changed()


async def test_a_subscription_lives_through_an_outage(tmp_path: Path) -> None:
    """NATS goes and comes back: nats-py subscribes again, events flow again."""
    with trio.fail_after(TIMEOUT * 2):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url, reconnect_wait=0.05) as channel,
            channel.subscribe("a.b") as sub,
        ):
            await server.stop()
            await until_connected(channel, False)
            await server.start()
            await until_connected(channel, True)
            await channel.publish("a.b", "after", ack=True)
            assert (await sub.receive()).data == "after"
            stats = channel.statistics()
            assert (stats.disconnects, stats.reconnects) == (1, 1)


# ---------------------------------------------------------------------------------------------
# Slow subscribers and outages: what is counted, and what comes back from the store


async def drain(sub: Subscription, n: int) -> list[Any]:
    """The data of what *sub* receives until it received or missed *n* events in all."""
    got: list[Any] = []
    while len(got) + sub.missed < n:
        got.append((await sub.receive()).data)
    return got


async def test_a_slow_subscriber_counts_what_nats_dropped(tmp_path: Path) -> None:
    """A full block subscription makes its route wait; NATS messages beyond max_pending are
    dropped and counted in missed (and the channel's dropped); the rest arrive in order."""
    n = 2000
    with trio.fail_after(TIMEOUT * 2):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url) as publisher,
            open_nats_channel(server.url, max_pending=16) as subscriber,
            subscriber.subscribe("flow", max_buffer_size=1) as sub,
        ):
            for i in range(n):
                await publisher.publish("flow", i)
            await publisher.publish("flow", n, ack=True)
            got = await drain(sub, n + 1)
            assert sub.missed > 0
            assert got == sorted(got)
            assert subscriber.statistics().dropped == sub.missed
            assert sub.statistics().missed == sub.missed


async def test_a_slow_subscriber_with_a_store_loses_nothing(tmp_path: Path) -> None:
    """With a store, what NATS dropped is read back from it: every event, once, in order."""
    n = 1000
    with trio.fail_after(TIMEOUT * 3):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url, stream="FLOW") as publisher,
            open_nats_channel(server.url, stream="FLOW", max_pending=16) as subscriber,
            subscriber.subscribe("flow", max_buffer_size=1) as sub,
        ):
            for i in range(n):
                await publisher.publish("flow", i)
            await publisher.publish("flow", n, ack=True)
            got = [(await sub.receive()).data for _ in range(n + 1)]
            assert got == list(range(n + 1))
            assert sub.missed == 0
            stats = subscriber.statistics()
            assert stats.dropped > 0
            assert stats.recovered > 0


class Proxy:
    """A TCP proxy on 127.0.0.1 to a server, whose connections can be cut: an outage for the
    clients behind it only."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._up = True
        self._scope = trio.CancelScope()
        self.url = ""

    async def serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"nats://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        if not self._up:
            await client.aclose()
            return
        async with client, await trio.open_tcp_stream("127.0.0.1", self._port) as server:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, server)
                    nursery.start_soon(self._pipe, server, client)

    @staticmethod
    async def _pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        async for chunk in source:
            await sink.send_all(chunk)

    def cut(self) -> None:
        """Close the connections through it and refuse new ones."""
        self._up = False
        self._scope.cancel()
        self._scope = trio.CancelScope()

    def restore(self) -> None:
        """Take connections again."""
        self._up = True


async def test_a_subscription_with_a_store_resumes_without_loss(tmp_path: Path) -> None:
    """The subscriber loses NATS while events are published: once it is back, it reads the
    stored ones it missed back from the store: every one, once, in order."""
    with trio.fail_after(TIMEOUT * 3):
        async with running_nats_server(tmp_path) as server, trio.open_nursery() as nursery:
            proxy = Proxy(server.port)
            await nursery.start(proxy.serve)
            async with (
                open_nats_channel(server.url, stream="ORDERS") as publisher,
                open_nats_channel(proxy.url, stream="ORDERS", reconnect_wait=0.05) as subscriber,
                subscriber.subscribe("orders.>") as sub,
            ):
                await publisher.publish("orders.a", 0, ack=True)
                assert (await sub.receive()).data == 0
                proxy.cut()
                await until_connected(subscriber, False)
                for i in range(1, 50):
                    await publisher.publish("orders.a" if i % 2 else "orders.b", i)
                await publisher.publish("orders.a", 50, ack=True)
                proxy.restore()
                got = [(await sub.receive()).data for _ in range(50)]
                assert got == list(range(1, 51))
                await publisher.publish("orders.a", 51, ack=True)
                assert (await sub.receive()).data == 51
                assert subscriber.statistics().recovered == 50
            nursery.cancel_scope.cancel()


async def test_a_cancelled_request_cancels_its_handler(tmp_path: Path) -> None:
    """A request cancelled by its requester (long before its deadline) cancels the handler
    working on it, on the other channel, through NATS."""
    started = trio.Event()
    stopped = trio.Event()

    async def slow(event: Event) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats_channel(server.url) as requester,
            open_nats_channel(server.url) as responder,
            responder.serve("slow.rpc", slow),
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(requester.request, "slow.rpc", None, timeout=3600))
                await started.wait()
                nursery.cancel_scope.cancel()
            await stopped.wait()
            await trio.testing.wait_all_tasks_blocked()
            stats = responder.statistics()
            assert (stats.requests_cancelled, stats.requests_expired) == (1, 0)


def test_the_stream_of_retained_values_is_a_clusters() -> None:
    """Channels keep retained values in the stream a cluster's brokers share theirs in."""
    for prefix in ("tr", "app.one"):
        options = ClusterOptions(servers="nats://127.0.0.1:4222", prefix=prefix)
        assert retained_stream_name(prefix) == options.retained_stream
