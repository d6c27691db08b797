"""JetStreamStore against a real nats-server with JetStream: the Store contract, and what a
stream adds (its epoch, duplicates across the window, NATS outages, the tail)."""

from __future__ import annotations

import itertools
import json
import logging
from contextlib import aclosing
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from _nats_server import running_nats_server

from trio_realtime import DuplicateEventId, Event, StoreError, TooLarge, open_bus
from trio_realtime._nats import NatsConnection, open_nats
from trio_realtime.store import JetStreamStore, MemoryStore, approximate_size
from trio_realtime.store._codec import Row, encode_events
from trio_realtime.store._jetstream import _Job
from trio_realtime.store._jetstream_tail import stream_sequences
from trio_realtime.store._jetstream_wire import decode_message, encode_message, msg_id
from trio_realtime.testing._check_store import check_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from _nats_server import NatsServer

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")

TIMEOUT = 20


def _fast(nats: str | NatsConnection, stream: str) -> JetStreamStore:
    """A store whose tail notices an outage in 0.3 s."""
    return JetStreamStore(nats, stream, heartbeat=0.1, timeout=5.0)


async def _streams(server: NatsServer) -> list[str]:
    async with open_nats(server.url, wait=True) as nc:
        reply = await nc.request("$JS.API.STREAM.NAMES", b"", timeout=5)
    return sorted(json.loads(reply.data)["streams"] or [])


async def _delete_stream(url: str, name: str) -> None:
    async with open_nats(url, wait=True) as nc:
        await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)


async def _next(tail: AsyncIterator[list[tuple[Event, str | None]]], n: int) -> list[Event]:
    """The next *n* events of *tail* (in the batches it yields)."""
    got: list[Event] = []
    while len(got) < n:
        got += [event for event, _ in await anext(tail)]
    assert len(got) == n, got
    return got


async def test_jetstream_store_keeps_the_contract(tmp_path: Path) -> None:
    """JetStreamStore passes check_store: each store on a stream of its own, all on one
    connection given to them."""
    with trio.fail_after(TIMEOUT * 3):
        async with running_nats_server(tmp_path) as server, open_nats(server.url, wait=True) as nc:
            names = (f"CHECK{i}" for i in itertools.count())

            def make() -> JetStreamStore:
                name = next(names)
                return JetStreamStore(nc, name, subject_prefix=name.lower(), timeout=5)

            await check_store(make)


async def test_jetstream_store_with_its_own_connection_and_limits_keeps_the_contract(
    tmp_path: Path,
) -> None:
    """A store given a URL opens (and closes) a connection of its own, from any task; with
    generous retention limits it passes check_store too."""
    with trio.fail_after(TIMEOUT * 3):
        async with running_nats_server(tmp_path) as server:
            names = (f"OWN{i}" for i in itertools.count())

            def make() -> JetStreamStore:
                name = next(names)
                return JetStreamStore(
                    server.url,
                    name,
                    subject_prefix=name.lower(),
                    max_events=10_000,
                    max_age=86400,
                    max_bytes=2**30,
                    storage="memory",
                    name="check",
                )

            await check_store(make)


async def test_epoch_is_the_stream_and_survives_a_restart(tmp_path: Path) -> None:
    """Reopening a stream, even after the server restarted, keeps its epoch and seqs; a
    stream deleted and created again is a new epoch; one deleted under an open store makes
    it fail with StoreError, not mix seqs of two streams."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server:
            async with JetStreamStore(server.url, "E") as store:
                epoch = store.epoch
                assert epoch.startswith("E@")
                await store.append([Event(topic="a", data=1)])
            await server.stop()
            await server.start()
            async with JetStreamStore(server.url, "E") as store:
                assert store.epoch == epoch
                [event] = await store.append([Event(topic="a", data=2)])
                assert event.seq == 2
                await _delete_stream(server.url, "E")
                with pytest.raises(StoreError, match="deleted"):
                    await store.last_seq()
                with pytest.raises(StoreError, match="deleted"):
                    await store.append([Event(topic="a")])
            async with JetStreamStore(server.url, "E") as store:
                assert store.epoch != epoch
                assert await store.last_seq() == 0
                await store.append([Event(topic="a", data="seen")])
                new_epoch = store.epoch
                await _delete_stream(server.url, "E")
                async with JetStreamStore(server.url, "E") as other:
                    assert other.epoch not in (epoch, new_epoch)
                    await other.append([Event(topic="a")])
                # (noticed when the store next reads the stream's info, as here, or its tail
                # starts again, or a seq goes back)
                with pytest.raises(StoreError, match="created again"):
                    await store.last_seq()
                with pytest.raises(StoreError, match="created again"):
                    await store.append([Event(topic="a")])
                with pytest.raises(StoreError, match="created again"):
                    await store.read(">")


async def test_options_make_and_update_the_stream(tmp_path: Path) -> None:
    """The retention limits become the stream's; reopening with others updates it; a stream
    of other subjects is refused; JetStream retention moves first_seq."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server:
            async with JetStreamStore(server.url, "R", max_events=5, duplicate_window=1) as store:
                for i in range(8):
                    await store.append([Event(topic="r", data=i)])
                assert await store.first_seq() == 4
                assert [e.data for e in await store.read(">")] == [3, 4, 5, 6, 7]
                stats = store.statistics()
                assert (stats.events_stored, stats.first_seq, stats.last_seq) == (5, 4, 8)
                assert stats.events_removed == 3
                assert await store.apply_retention() == 0
            async with JetStreamStore(server.url, "R", max_events=100) as store:
                for i in range(8):
                    await store.append([Event(topic="r", data=i)])
                assert store.statistics().events_stored == 13
            with pytest.raises(StoreError, match="subjects"):
                async with JetStreamStore(server.url, "R", subject_prefix="other"):
                    pass  # pragma: no cover
            with pytest.raises(StoreError, match="overlap"):
                async with JetStreamStore(server.url, "R2"):  # (trs.> is R's)
                    pass  # pragma: no cover
            assert await _streams(server) == ["R"]


async def test_bad_options_and_unreachable_nats(tmp_path: Path) -> None:
    """Options are checked when the store is made; NATS that does not answer, or has no
    JetStream, fails open() with StoreError and leaves the store openable."""
    for bad in (
        {"stream": "a.b"},
        {"stream": ""},
        {"replicas": 7},
        {"storage": "disk"},
        {"timeout": 0},
        {"duplicate_window": -1},
        {"subject_prefix": "a.*"},
        {"max_events": 0},
    ):
        with pytest.raises(ValueError):
            JetStreamStore("nats://127.0.0.1:1", **bad)
    with pytest.raises(ValueError, match="nats"):
        JetStreamStore([])
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path, jetstream=False) as server:
            store = JetStreamStore(server.url, timeout=2)
            with pytest.raises(StoreError, match="JetStream"):
                await store.open()
            await server.stop()
            with pytest.raises(StoreError, match="connect"):
                await store.open()  # (still openable after a failed open)
            await store.aclose()


async def test_duplicate_ids_are_refused_within_the_window(tmp_path: Path) -> None:
    """An id already stored is refused (DuplicateEventId, a ValueError) and so is a batch
    holding one, storing nothing; ids a header cannot carry as they are are digested, and
    never collide."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server, JetStreamStore(server.url) as store:
            odd_ids = ["a\nb", "ab", " ab", "é", "x" * 500, "sha256:x", "a b"]
            stored = await store.append([Event(topic="d", id=i) for i in odd_ids])
            assert [e.seq for e in stored] == list(range(1, 8))
            for event_id in odd_ids:
                with pytest.raises(DuplicateEventId, match="already stored"):
                    await store.append([Event(topic="d", id=event_id)])
                with pytest.raises(DuplicateEventId):
                    await store.append([Event(topic="d"), Event(topic="d", id=event_id)])
            assert await store.last_seq() == 7
            [after] = await store.append([Event(topic="d")])
            assert after.seq == 8
    assert len({msg_id(i) for i in odd_ids}) == len(odd_ids)
    assert msg_id("plain-id_1") == "plain-id_1"


async def test_too_large_and_too_many(tmp_path: Path) -> None:
    """An event over the server's max_payload is refused with TooLarge, an append of more
    than MAX_APPEND events with ValueError; nothing is stored."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server, JetStreamStore(server.url) as store:
            big = Event(topic="big", data="x" * (1024 * 1024))
            with pytest.raises(TooLarge, match="max_payload"):
                await store.append([Event(topic="ok"), big])
            with pytest.raises(ValueError, match="1000"):
                await store.append([Event(topic="many") for _ in range(1001)])
            stored = await store.append([Event(topic="many") for _ in range(1000)])
            assert [e.seq for e in stored] == list(range(1, 1001))
            assert len(await store.read("many", limit=2000)) == 1000


async def test_appends_wait_for_nats_and_fail_after_the_timeout(tmp_path: Path) -> None:
    """NATS away: an append waits (counted as pending) and is stored once NATS is back; with
    NATS away longer than the timeout it fails with StoreError, and nothing was stored.
    Reads wait and fail alike."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server:
            async with JetStreamStore(server.url, timeout=5) as store:
                await store.append([Event(topic="o", data=0)])
                await server.stop()
                result: list[Event] = []
                async with trio.open_nursery() as nursery:

                    async def append(store: JetStreamStore) -> None:
                        result.extend(await store.append([Event(topic="o", data=1)]))

                    nursery.start_soon(append, store)
                    await trio.sleep(0.5)  # (real time: the server is away that long)
                    assert store.statistics().pending_appends == 1
                    assert not result
                    await server.start()
                assert [e.seq for e in result] == [2]
                assert [e.data for e in await store.read("o")] == [0, 1]
            async with JetStreamStore(server.url, timeout=0.5) as store:
                await server.stop()
                connection = store._link.connection
                while connection.connected:  # (else it is sent, and may be stored: see below)
                    await connection.wait_changed()
                with pytest.raises(StoreError, match="nothing was stored"):
                    await store.append([Event(topic="o", data=2)])
                with pytest.raises(StoreError, match="read"):
                    await store.read("o")
                await server.start()
                await connection.wait_connected()  # (reconnecting is not the read's to wait for)
                assert [e.data for e in await store.read("o")] == [0, 1]
            async with JetStreamStore(server.url, timeout=5) as store:
                # Appended as NATS goes (the connection may not know yet: then it is sent,
                # unanswered, and sent again once NATS is back): stored once.
                del result[:]
                async with trio.open_nursery() as nursery:
                    await server.stop()
                    nursery.start_soon(append, store)
                    await trio.sleep(0.5)  # (real time: the server is away that long)
                    await server.start()
                assert [e.seq for e in result] == [3]
                assert [e.data for e in await store.read("o")] == [0, 1, 1]


async def test_an_append_without_acknowledgement_is_found_stored(tmp_path: Path) -> None:
    """An append published once without an acknowledgement, and refused as a duplicate when
    published again, was stored: its seqs are found (by its payloads), for one event and
    for an atomic batch; ids stored by another append are refused still."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server, JetStreamStore(server.url) as store:
            await store.append([Event(topic="u", data="before")])
            for size in (1, 3):
                events = [Event(topic="u", data=i) for i in range(size)]
                stored = await store.append(events)
                job = _Job(
                    [
                        (f"trs.{e.topic}", encode_message(_row(e), None), msg_id(e.id))
                        for e in events
                    ]
                )
                job.uncertain = True
                await store._publish_group([job])
                assert job.result is not None
                assert job.result.unwrap() == range(stored[0].seq or 0, (stored[-1].seq or 0) + 1)
            impostor = Event(topic="u", id=stored[0].id, data="other")
            job = _Job([("trs.u", encode_message(_row(impostor), None), msg_id(impostor.id))])
            job.uncertain = True
            await store._publish_group([job])
            assert job.result is not None
            with pytest.raises(DuplicateEventId):
                job.result.unwrap()


def _row(event: Event) -> Row:
    [row] = encode_events([event])
    return row


async def test_the_tail_follows_every_store_in_order(tmp_path: Path) -> None:
    """Two stores on one stream: a tail from 0 gets both's events in seq order, with their
    origins; a tail from seq n starts after it; a message that is not an event (published
    by someone else) is skipped and logged; closing the store ends the tail."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_nats(server.url, wait=True) as nc,
            _fast(nc, "T") as one,
            _fast(server.url, "T") as two,
        ):
            assert one.shared
            assert two.shared
            assert one.epoch == two.epoch
            async with aclosing(one.tail(0)) as tail:
                for i in range(5):
                    await one.append_from([Event(topic="t.one", data=i)], ["from one"])
                    await two.append_from([Event(topic="t.two", data=i)], [None])
                nc.publish_nowait("trs.t.x", b"not an event")
                await nc.flush()
                await two.append([Event(topic="t.two", data="last")])
                got: list[tuple[Event, str | None]] = []
                while len(got) < 11:
                    got += await anext(tail)
                assert [e.seq for e, _ in got] == [*range(1, 11), 12]
                assert [o for _, o in got][:2] == ["from one", None]
                assert got[-1][0].data == "last"
                assert await one.read(">") == [e for e, _ in got]
            async with aclosing(two.tail(9)) as tail:
                assert [e.seq for e in await _next(tail, 2)] == [10, 12]
                await one.aclose()
                await one.aclose()
                await two.aclose()
                with pytest.raises(trio.ClosedResourceError):
                    await anext(tail)
        with pytest.raises(ValueError, match="origins"):
            await MemoryStore().append_from([Event(topic="a")], [])
        with pytest.raises(NotImplementedError):
            MemoryStore().tail(0)
    assert stream_sequences("$JS.ACK.T.c.1.8.2.17.0") == (8, 2)
    assert stream_sequences("$JS.ACK.dom.hash.T.c.1.8.2.17.0.tok") == (8, 2)
    assert stream_sequences("_INBOX.x") is None


async def test_the_tail_survives_a_restart_of_nats(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NATS restarted (its consumers lost) while a tail waits: the tail starts a new
    consumer after the last seq it gave, and goes on with no gap and no repeat."""
    caplog.set_level(logging.ERROR, "trio_realtime")
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            _fast(server.url, "T") as store,
            aclosing(store.tail(0)) as tail,
        ):
            await store.append([Event(topic="s", data=i) for i in range(3)])
            assert [e.data for e in await _next(tail, 3)] == [0, 1, 2]
            await server.stop()
            await trio.sleep(0.5)  # (real time: NATS is away that long)
            await server.start()
            await store.append([Event(topic="s", data=i) for i in range(3, 6)])
            assert [e.seq for e in await _next(tail, 3)] == [4, 5, 6]
            await store.append([Event(topic="s", data=6)])
            assert [e.seq for e in await _next(tail, 1)] == [7]


def test_payloads_decode_what_was_encoded_and_refuse_the_rest() -> None:
    """A payload gives back the event, its origin and size; anything else is a ValueError."""
    event = Event(topic="p.q", data={"k": [1, "é"]}, headers={"h": "v"}, reply_to="_inbox.a")
    payload = encode_message(_row(event), "r+me")
    back, origin, size = decode_message("p.q", 7, payload)
    assert back == attrs.evolve(event, seq=7)
    assert origin == "r+me"
    assert size == approximate_size(event)
    for bad, topic in (
        (b"no newline", "p"),
        (b"[1,2]\n1", "p"),
        (b'[2,"i","t","s",0,null,null,null]\nnull', "p"),
        (b'[1,"i","t","s","0",null,null,null]\nnull', "p"),
        (b'[1,"i","t","s",0,null,null,null]\n{bad', "p"),
        (b'[1,"i","t","s",0,"[]",null,null]\nnull', "p"),
        (b"\xff\n", "p"),
        (payload, "a..b"),
    ):
        with pytest.raises(ValueError):
            decode_message(topic, 1, bad)


async def test_a_bus_with_an_unshared_store_routes_what_it_appends(tmp_path: Path) -> None:
    """With shared=False (one broker on the stream), the bus routes the events it stored
    from its appends, no more than max_append (1,000) per append."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_nats_server(tmp_path) as server,
            open_bus(store=JetStreamStore(server.url, shared=False)) as bus,
            bus.subscribe("u.>", max_buffer_size=2000) as sub,
        ):
            assert bus.store is not None
            assert not bus.store.shared
            pending = [await bus.publish_pipelined(Event(topic="u.x", data=i)) for i in range(1500)]
            stored = [p if isinstance(p, Event) else await p.wait() for p in pending]
            assert [e.seq for e in stored] == list(range(1, 1501))
            assert [(await sub.receive()).data for _ in range(1500)] == list(range(1500))
            assert bus.store.statistics().largest_transaction <= 1000
