"""Issue 7: the limits of one connection, driven by an independent client.

Each test speaks the protocol by hand with the `websockets` library (the harness of
``test_interop``) against an in-process broker, checks the documented answer, and checks that
another connection is still served afterwards. ``test_hardening`` drives the same attacks
against a ``trio-realtime serve`` process.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio
import trio.testing
from conftest import running_broker
from test_interop import TEST_TIMEOUT, Frame, Peer, in_thread, open_peer
from test_listener import frame, upgraded

from trio_realtime.broker._session import Session
from trio_realtime.store import MemoryStore


def neighbour_served(url: str) -> None:
    """Another connection subscribes, publishes and receives its own event (in a thread)."""
    with open_peer(url) as peer:
        peer.send({"type": "subscribe", "id": 1, "pattern": "neighbour.check"})
        peer.expect("subscribed")
        peer.send({"type": "publish", "ref": 1, "event": {"topic": "neighbour.check", "data": 1}})
        frames = peer.until(lambda f: f["type"] == "event")
        assert frames[-1]["event"]["data"] == 1


def raw_messages(peer: Peer, until: Any) -> list[str]:
    """Raw messages received until one holds a frame for which *until* is true."""
    messages: list[str] = []
    while True:
        message = peer.ws.recv(timeout=5)
        assert isinstance(message, str)
        messages.append(message)
        parsed = json.loads(message)
        if any(until(f) for f in (parsed if isinstance(parsed, list) else [parsed])):
            return messages


def frames_of(messages: list[str]) -> list[Frame]:
    frames: list[Frame] = []
    for message in messages:
        parsed = json.loads(message)
        frames.extend(parsed if isinstance(parsed, list) else [parsed])
    return frames


async def test_max_subscriptions_refuses_with_limit() -> None:
    """Finding 6: one subscription over max_subscriptions gets `error` code `limit`; the
    connection stays usable, and an unsubscribe makes room again."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(max_subscriptions=3) as served:

            def run() -> Frame:
                with open_peer(served.url) as peer:
                    for i in range(1, 4):
                        peer.subscribe(i, f"s.{i}")
                    peer.send({"type": "subscribe", "id": 4, "pattern": "s.4"})
                    refused = peer.expect("error")
                    peer.send({"type": "unsubscribe", "id": 1})
                    peer.expect("unsubscribed")
                    peer.subscribe(4, "s.4")
                    neighbour_served(served.url)
                    return refused

            refused = await in_thread(run)
    assert refused["code"] == "limit"
    assert refused["ref"] == 4
    assert "max_subscriptions" in refused["message"]
    assert served.broker.statistics().limits == {"max_subscriptions": 1}


async def test_an_event_that_cannot_fit_in_a_frame_is_refused_as_too_large() -> None:
    """Finding 3: an event whose encoding exceeds max_event_size is refused to its publisher
    (`too_large`, with the ref; not fatal); one just under it is delivered."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(max_message_size=8192) as served:
            limit = served.broker.max_event_size

            def run() -> tuple[Frame, Frame, list[str]]:
                with open_peer(served.url) as sub, open_peer(served.url) as pub:
                    sub.subscribe(1, "big")
                    pub.send(
                        {"type": "publish", "ref": 1, "event": {"topic": "big", "data": "x" * 7900}}
                    )
                    refused = pub.expect("error")
                    # Close to the limit (the broker adds an id, a time and the rest).
                    data = "y" * (limit - 400)
                    ack = pub.publish(2, topic="big", data=data)
                    messages = raw_messages(sub, lambda f: f.get("event", {}).get("data") == data)
                    neighbour_served(served.url)
                    return refused, ack, messages

            refused, ack, messages = await in_thread(run)
    assert refused["code"] == "too_large"
    assert refused["ref"] == 1
    assert "max_event_size" in refused["message"]
    assert ack["ref"] == 2
    assert all(len(m.encode()) <= 8192 for m in messages)
    assert served.broker.statistics().limits == {"max_event_size": 1}


async def test_an_event_matching_many_subscriptions_is_split_across_frames() -> None:
    """Finding 3: an event matched by more subscriptions than one frame can list goes in
    several frames, each message within max_message_size, every subscription named once."""
    size = 4096
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(max_message_size=size) as served:
            data = "z" * (served.broker.max_event_size - 300)

            def run() -> list[str]:
                with open_peer(served.url) as sub, open_peer(served.url) as pub:
                    for first in range(1, 201, 40):
                        sub.send(
                            [
                                {"type": "subscribe", "id": i, "pattern": "many"}
                                for i in range(first, first + 40)
                            ]
                        )
                    sub.until(lambda f: f["type"] == "subscribed" and f["id"] == 200)
                    pub.publish(1, topic="many", data=data)
                    pub.publish(2, topic="many", data="after")
                    return raw_messages(sub, lambda f: f.get("event", {}).get("data") == "after")

            messages = await in_thread(run)
    assert all(len(m.encode()) <= size for m in messages)
    frames = frames_of(messages)
    big = [f for f in frames if f["event"]["data"] == data]
    assert len(big) > 1
    subs = [s for f in big for s in f["subs"]]
    assert sorted(subs) == list(range(1, 201))


async def test_history_results_are_split_to_fit_in_a_message() -> None:
    """Finding 3: a history result that would not fit in one message stops short with
    `more: true`; asking again from the last seq gets the rest."""
    size = 8192
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(max_message_size=size, store=MemoryStore()) as served:
            for i in range(30):
                await served.broker.bus.publish("h.x", {"i": i, "pad": "p" * 1000})

            def run() -> list[str]:
                messages: list[str] = []
                with open_peer(served.url) as peer:
                    since = 0
                    for ref in range(1, 100):
                        peer.send(
                            {
                                "type": "history",
                                "ref": ref,
                                "pattern": "h.>",
                                "since": since,
                                "limit": 100,
                            }
                        )
                        message = peer.ws.recv(timeout=5)
                        assert isinstance(message, str)
                        messages.append(message)
                        result = json.loads(message)
                        if not result.get("more"):
                            return messages
                        since = result["events"][-1]["seq"]
                raise AssertionError("history never ended")

            messages = await in_thread(run)
    assert len(messages) > 2
    assert all(len(m.encode()) <= size for m in messages)
    results = [json.loads(m) for m in messages]
    assert all(r["type"] == "history_result" for r in results)
    assert [e["data"]["i"] for r in results for e in r["events"]] == list(range(30))


async def test_reply_to_a_dollar_topic_is_forbidden() -> None:
    """Finding 13: `reply_to` naming a `$` topic is refused (`forbidden`, with the ref)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> Frame:
                with open_peer(served.url) as peer:
                    peer.subscribe(1, "svc")
                    peer.send(
                        {
                            "type": "publish",
                            "ref": 9,
                            "event": {"topic": "svc", "reply_to": "$sys.stats"},
                        }
                    )
                    refused = peer.expect("error")
                    neighbour_served(served.url)
                    return refused

            refused = await in_thread(run)
    assert (refused["code"], refused["ref"]) == ("forbidden", 9)
    assert "reply_to" in refused["message"]


async def test_duplicate_ids_are_scoped_to_their_publisher() -> None:
    """Finding 8: a stored id re-sent by its publisher (same connection, or a new one with the
    same `hello.instance`) is acked `duplicate: true` with the original seq; the same id from
    another publisher is refused, not acknowledged as success."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(store=MemoryStore()) as served:

            def hello(peer: Peer, instance: str) -> None:
                peer.send({"type": "hello", "protocol": 1, "instance": instance})
                peer.expect("welcome")

            def run() -> tuple[Frame, Frame, Frame, Frame, list[Frame]]:
                event = {"topic": "d.x", "id": "chosen-id", "data": 1}
                with open_peer(served.url, hello=False) as a:
                    hello(a, "instance-a")
                    a.send({"type": "publish", "ref": 1, "event": event})
                    first = a.expect("ack")
                    a.send({"type": "publish", "ref": 2, "event": event})
                    again = a.expect("ack")
                with open_peer(served.url, hello=False) as b:
                    hello(b, "instance-b")
                    b.send({"type": "publish", "ref": 3, "event": {**event, "data": "forged"}})
                    forged = b.expect("error")
                with open_peer(served.url, hello=False) as a2:
                    hello(a2, "instance-a")
                    a2.send({"type": "publish", "ref": 4, "event": event})
                    resent = a2.expect("ack")
                with open_peer(served.url) as reader:
                    reader.send({"type": "history", "ref": 1, "pattern": "d.>", "since": 0})
                    stored = reader.expect("history_result")["events"]
                return first, again, forged, resent, stored

            first, again, forged, resent, stored = await in_thread(run)
    assert first["seq"] == 1
    assert not first.get("duplicate", False)
    assert (again["seq"], again["duplicate"]) == (1, True)
    assert (resent["seq"], resent["duplicate"]) == (1, True)
    assert forged["code"] == "duplicate_id"
    assert forged["ref"] == 3
    assert "chosen-id" in forged["message"]
    assert [e["data"] for e in stored] == [1]


async def test_integers_outside_64_bits_are_refused_not_changed() -> None:
    """Finding 9: an integer outside 64 bits in `data` is a `bad_frame` naming the field."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> list[Frame]:
                with open_peer(served.url) as sub, open_peer(served.url) as pub:
                    sub.subscribe(1, "n")
                    refused = []
                    for ref, number in ((1, 2**64 + 1), (2, -(2**63) - 1)):
                        pub.send_text(
                            f'{{"type":"publish","ref":{ref},"event":{{"topic":"n","data":{{"v":[{number}]}}}}}}'
                        )
                        refused.append(pub.expect("error"))
                    ack = pub.publish(3, topic="n", data=2**64 - 1)
                    assert ack["ref"] == 3
                    got = sub.expect("event")
                    assert got["event"]["data"] == 2**64 - 1  # exact, first delivered
                    return refused

            refused = await in_thread(run)
    for error, ref in zip(refused, (1, 2), strict=True):
        assert (error["code"], error["ref"]) == ("bad_frame", ref)
        assert "data.v[0]" in error["message"]


async def test_since_outside_the_store_range_is_a_bad_frame() -> None:
    """Finding 10: `since` below 0 or beyond 64 bits is `bad_frame`, never `internal`."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(store=MemoryStore()) as served:

            def run() -> list[Frame]:
                with open_peer(served.url) as peer:
                    answers = []
                    for frame in (
                        {"type": "subscribe", "id": 1, "pattern": "a", "since": 2**63},
                        {"type": "subscribe", "id": 2, "pattern": "a", "since": -1},
                        {"type": "history", "ref": 3, "pattern": "a", "since": 2**63},
                        {"type": "history", "ref": 4, "pattern": "a", "since": -5},
                    ):
                        peer.send(frame)
                        answers.append(peer.expect("error"))
                    neighbour_served(served.url)
                    return answers

            answers = await in_thread(run)
    assert [(a["code"], a["ref"]) for a in answers] == [
        ("bad_frame", 1),
        ("bad_frame", 2),
        ("bad_frame", 3),
        ("bad_frame", 4),
    ]
    assert "internal" not in served.broker.statistics().errors


async def test_a_broker_bug_is_logged_with_its_traceback_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 10: a failure a client can trigger again and again logs its traceback once,
    then one line each time (no log flooding); each client gets 1011, the broker serves on."""

    async def broken(self: Session, frame: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Session, "_handle", broken)
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> list[int]:
                codes = []
                for _ in range(3):
                    with open_peer(served.url) as peer:
                        peer.send({"type": "ping"})
                        codes.append(peer.close_code())
                with open_peer(served.url) as peer:
                    peer.send({"type": "publish", "ref": 1, "event": {"topic": "ok"}})
                    peer.expect("ack")
                return codes

            assert await in_thread(run) == [1011, 1011, 1011]
            assert served.broker.statistics().errors == {"internal": 3}
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelname for r in failures] == ["ERROR", "WARNING", "WARNING"]
    assert failures[0].exc_info is not None
    assert all(r.exc_info is None for r in failures[1:])


async def test_a_client_that_reads_no_answers_is_closed_by_the_heartbeat(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Finding 4: a client that asks for more than max_pending_bytes of answers and reads
    none is not read any further, holds no more than that, and is closed once it leaves a
    ping unanswered for a heartbeat interval; a neighbour is served meanwhile.

    The broker's clock stands still while the neighbour works in its thread, and jumps one
    heartbeat at a time once everything has settled.
    """
    heartbeat = 1.0
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(
            store=MemoryStore(), heartbeat=heartbeat, max_pending_bytes=2**20
        ) as served:
            for i in range(40):
                await served.broker.bus.publish("h.x", {"i": i, "pad": "p" * 100_000})
            stream = await upgraded(served.port)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            requests = [{"type": "history", "ref": i, "pattern": "h.>"} for i in range(40)]
            await stream.send_all(frame(1, json.dumps(requests).encode()))
            await in_thread(lambda: neighbour_served(served.url))
            intervals = 0
            while "heartbeat_timeout" not in served.broker.statistics().errors:
                assert intervals < 3, "not closed within three heartbeat intervals"
                await trio.testing.wait_all_tasks_blocked()
                mock_clock.jump(heartbeat)
                await trio.testing.wait_all_tasks_blocked()
                intervals += 1
            assert intervals >= 2  # a ping after one interval, the close after another
            await stream.aclose()
            await in_thread(lambda: neighbour_served(served.url))


async def test_max_replays_bounds_the_replays_of_one_connection() -> None:
    """Finding 4: a connection has at most max_replays `since` replays under way; the next
    `subscribe` with `since` waits for one to finish (and so does the rest of its frames)."""

    class PausingStore(MemoryStore):
        paused = trio.Event()
        resume = trio.Event()

        async def read(self, *args: Any, **kwargs: Any) -> list[Any]:
            self.paused.set()
            await self.resume.wait()
            return await super().read(*args, **kwargs)

    store = PausingStore()
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(store=store, max_replays=1) as served:

            def run() -> list[Frame]:
                with open_peer(served.url) as peer:
                    peer.send(
                        [
                            {"type": "subscribe", "id": 1, "pattern": "r.a", "since": 0},
                            {"type": "subscribe", "id": 2, "pattern": "r.b", "since": 0},
                            {"type": "ping"},
                        ]
                    )
                    return peer.until(lambda f: f["type"] == "pong")

            async with trio.open_nursery() as nursery:
                frames: list[Frame] = []

                async def client() -> None:
                    frames.extend(await in_thread(run))

                nursery.start_soon(client)
                await store.paused.wait()  # the first replay reads the store, and waits
                await trio.testing.wait_all_tasks_blocked()
                # The second subscribe waits for the first replay: it is not on the bus yet.
                assert served.broker.statistics().subscriptions == 1
                store.resume.set()
            assert [(f["type"], f.get("id")) for f in frames] == [
                ("subscribed", 1),
                ("subscribed", 2),
                ("pong", None),
            ]
