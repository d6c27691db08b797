"""The NATS connection (trio_realtime._nats) against a real nats-server."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _nats_server import running_nats_server
from conftest import TIMEOUT

from trio_realtime._errors import ConnectionClosed, NoResponders
from trio_realtime._nats import open_nats

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")


async def test_publish_and_receive_in_batches(tmp_path: Path) -> None:
    """Messages queued from Trio arrive in order, in few crossings each way."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats(server.url, wait=True) as pub,
            open_nats(server.url, wait=True) as sub_conn,
        ):
            sub = await sub_conn.subscribe("a.>")
            await sub_conn.flush()
            n = 5_000
            for i in range(n):
                pub.publish_nowait(f"a.{i % 3}", str(i).encode(), headers={"k": str(i)})
            await pub.flush()
            got: list[int] = []
            batches = 0
            while len(got) < n:
                batch = await sub.receive_batch()
                batches += 1
                got.extend(int(m.data) for m in batch)
                assert all(m.headers["k"] == m.data.decode() for m in batch)
            assert got == list(range(n))
            assert batches < n / 10
            stats = pub.statistics()
            assert stats.published == n
            assert stats.publish_batches < n / 10
            assert stats.connected
            assert stats.server == server.url
            assert sub_conn.statistics().received == n
            await sub.unsubscribe()
            await sub.unsubscribe()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await sub.receive_batch()


async def test_no_echo_and_queue_groups(tmp_path: Path) -> None:
    """no_echo keeps a connection's own messages from it; a queue group shares them out."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats(server.url, wait=True, no_echo=True) as a,
            open_nats(server.url, wait=True) as b,
        ):
            own = await a.subscribe("q")
            members = [await b.subscribe("q", queue="workers") for _ in range(2)]
            await a.flush()
            await b.flush()
            for i in range(100):
                a.publish_nowait("q", str(i).encode())
            a.publish_nowait("end", b"")
            await a.flush()
            got: list[int] = []
            while len(got) < 100:
                for member in members:
                    with trio.move_on_after(0.05):
                        got.extend(int(m.data) for m in await member.receive_batch())
            assert sorted(got) == list(range(100))
            b.publish_nowait("q", b"from b")
            await b.flush()
            [msg] = await own.receive_batch()  # only b's message: a's own never came back
            assert msg.data == b"from b"


async def test_request_and_no_responders(tmp_path: Path) -> None:
    """A request is answered across connections; one to nobody fails at once."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats(server.url, wait=True) as requester,
            open_nats(server.url, wait=True) as responder,
            trio.open_nursery() as nursery,
        ):
            service = await responder.subscribe("svc.echo")
            await responder.flush()

            async def serve() -> None:
                while True:
                    for msg in await service.receive_batch():
                        responder.publish_nowait(msg.reply, msg.data.upper())

            nursery.start_soon(serve)
            reply = await requester.request("svc.echo", b"hi", timeout=5)
            assert reply.data == b"HI"
            with pytest.raises(NoResponders):
                await requester.request("svc.none", b"hi", timeout=5)
            nursery.cancel_scope.cancel()


async def test_outage_queues_and_recovers(tmp_path: Path) -> None:
    """While the server is down publishes wait; after it returns they go out, in order.

    The connection receives its own messages (no no_echo): nats-py subscribes again on
    reconnecting before anything queued goes out, so none can pass unseen.
    """
    with trio.fail_after(TIMEOUT * 2):
        async with (
            running_nats_server(tmp_path, jetstream=False) as server,
            open_nats(server.url, reconnect_wait=0.05) as conn,
        ):
            await conn.wait_connected()
            sub = await conn.subscribe("o")
            await server.stop()
            while conn.connected:
                await conn.wait_changed()
            for i in range(10):
                conn.publish_nowait("o", str(i).encode())
            assert conn.statistics().pending == 10
            await server.start()
            await conn.wait_connected()
            await conn.flush()
            got: list[bytes] = []
            while len(got) < 10:
                got.extend(m.data for m in await sub.receive_batch())
            assert got == [str(i).encode() for i in range(10)]
            stats = conn.statistics()
            assert stats.disconnects >= 1
            assert stats.reconnects >= 1


async def test_bounded_queue_refuses(tmp_path: Path) -> None:
    """With NATS away, the publish queue fills to its bound and then refuses (counted)."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path, jetstream=False) as server:
            await server.stop()
            async with open_nats(server.url, max_pending=3) as conn:
                for _ in range(3):
                    conn.publish_nowait("x", b"")
                with pytest.raises(trio.WouldBlock):
                    conn.publish_nowait("x", b"")
                assert conn.statistics().refused == 1
                assert not conn.connected


async def test_wait_gives_up(tmp_path: Path) -> None:
    """wait=True raises ConnectionClosed when no server answers in time."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path, jetstream=False) as server:
            url = server.url
        with pytest.raises(ConnectionClosed, match="not reachable"):
            async with open_nats(url, wait=True, connect_timeout=0.3):
                pass  # pragma: no cover
    with pytest.raises(ValueError, match="max_pending"):
        async with open_nats(url, max_pending=0):
            pass  # pragma: no cover
