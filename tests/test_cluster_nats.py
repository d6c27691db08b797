"""What the backplane added to the NATS connection (trio_realtime._nats): subscribing and
unsubscribing in order with the publishes, the age of the publish queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from _nats_server import running_nats_server
from conftest import TIMEOUT

from trio_realtime._nats import CLOSE_TIMEOUT, open_nats

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")


async def test_subscribing_goes_in_order_with_publishing(tmp_path: Path) -> None:
    """A subscription made without waiting is at the server before anything published after
    it: the no-responders status of a request sent next, and its reply, reach it."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path, jetstream=False) as server,
            open_nats(server.url, wait=True, no_echo=True) as requester,
            open_nats(server.url, wait=True) as responder,
        ):
            inbox = requester.subscribe_nowait("in.a.>")
            requester.publish_nowait("nobody", b"?", reply="in.a.1")  # at once, no flush
            [status] = await inbox.receive_batch()
            assert (status.subject, status.headers["Status"]) == ("in.a.1", "503")
            service = await responder.subscribe("svc")
            await responder.flush()
            other = requester.subscribe_nowait("in.b.>")
            requester.publish_nowait("svc", b"ping", reply="in.b.1")
            [request] = await service.receive_batch()
            responder.publish_nowait(request.reply, b"pong")
            [reply] = await other.receive_batch()
            assert reply.data == b"pong"
            assert inbox.buffered == 0


async def test_unsubscribing_without_waiting(tmp_path: Path) -> None:
    """unsubscribe_nowait ends the subscription at once (idempotent), and NATS stops
    sending to it; one ended before its turn to subscribe never subscribes."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path, jetstream=False) as server,
            open_nats(server.url, wait=True) as conn,
        ):
            sub = conn.subscribe_nowait("u")
            keep = conn.subscribe_nowait("u")
            never = conn.subscribe_nowait("u")
            never.unsubscribe_nowait()
            conn.publish_nowait("u", b"1")
            await conn.flush()
            assert (await sub.receive_batch())[0].data == b"1"
            sub.unsubscribe_nowait()
            sub.unsubscribe_nowait()
            with pytest.raises(trio.ClosedResourceError):
                await sub.receive_batch()
            conn.publish_nowait("u", b"2")
            await conn.flush()
            kept: list[bytes] = []
            while len(kept) < 2:
                kept.extend(m.data for m in await keep.receive_batch())
            assert kept == [b"1", b"2"]
            assert conn.statistics().received == 3  # 1 twice, 2 once: none for the others
            with pytest.raises(trio.ClosedResourceError):
                await never.receive_batch()


async def test_a_subscription_nats_refuses_ends(tmp_path: Path) -> None:
    """A subject nats-py refuses ends the subscription made without waiting, with the
    reason; the connection goes on."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path, jetstream=False) as server,
            open_nats(server.url, wait=True) as conn,
        ):
            bad = conn.subscribe_nowait("")
            good = conn.subscribe_nowait("g")
            conn.publish_nowait("g", b"ok")
            await conn.flush()
            with pytest.raises(trio.ClosedResourceError):
                await bad.receive_batch()
            assert bad.error is not None
            assert conn.statistics().errors >= 1
            assert (await good.receive_batch())[0].data == b"ok"


async def test_the_publish_queue_says_how_old_it_is(tmp_path: Path) -> None:
    """While NATS is away, the statistics say how long the oldest queued message waited;
    nothing queued, zero."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path, jetstream=False) as server:
            await server.stop()
            async with open_nats(server.url) as conn:
                assert conn.statistics().pending_seconds == 0
                before = trio.current_time()
                conn.publish_nowait("x", b"")
                conn.publish_nowait("x", b"")
                await trio.testing.wait_all_tasks_blocked()
                age = conn.statistics().pending_seconds
                assert 0 <= age <= trio.current_time() - before
                assert conn.pending == 2
                await server.start()
                await conn.wait_connected()
                await conn.flush()
                assert conn.statistics().pending_seconds == 0


async def test_closing_when_cancelled_hands_over_what_is_queued(tmp_path: Path) -> None:
    """A connection whose block is cancelled hands over what it still had queued while it
    closes, at once (its pump is cancelled with the block: closing does not wait for it)."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path, jetstream=False) as server,
            open_nats(server.url, wait=True) as reader,
        ):
            sub = await reader.subscribe("c")
            await reader.flush()
            with trio.CancelScope() as scope:
                async with open_nats(server.url, wait=True) as writer:
                    for i in range(10):
                        writer.publish_nowait("c", b"%d" % i)
                    scope.cancel()
                    start = trio.current_time()
                    await trio.sleep_forever()
            assert trio.current_time() - start < CLOSE_TIMEOUT  # (not the flush's timeout)
            got: list[bytes] = []
            while len(got) < 10:
                got.extend(m.data for m in await sub.receive_batch())
            assert got == [b"%d" % i for i in range(10)]
