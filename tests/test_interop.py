"""Interoperability: a client written with the `websockets` library speaks PROTOCOL.md by hand.

Nothing of trio_realtime is used on the client side: each test drives one or more synchronous
``websockets.sync.client`` connections in a worker thread (``trio.to_thread.run_sync``), sends
JSON built by hand and asserts on the JSON that comes back, against a live :class:`Broker`
serving on 127.0.0.1. Every ``recv`` has a timeout and every test a ``trio.fail_after`` guard.

A client here always reads every answer it is owed before it closes: a client that closes
while the broker still has frames to send it hits a known broker bug (see
``test_client_closing_with_answers_pending_does_not_crash_the_broker``).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Any, Final, TypeVar

import pytest
import trio
import trio.testing
from conftest import running_broker
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

T = TypeVar("T")
Frame = dict[str, Any]

#: Seconds a client waits for one message before the test fails.
RECV_TIMEOUT: Final = 5.0
#: Seconds a whole test may take.
TEST_TIMEOUT: Final = 10.0
#: The broker's name in the handshake test (checked in ``welcome``).
BROKER_NAME: Final = "interop-broker"
#: The broker's heartbeat in the handshake test. (The default, 30 s, is long enough that no
#: heartbeat ping interferes with a test.)
HEARTBEAT: Final = 25.5


# ---------------------------------------------------------------------------------------------
# Harness


async def in_thread(fn: Callable[[], T]) -> T:
    """Run the blocking client code *fn* in a worker thread (abandoned if the test times out)."""
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


class Peer:
    """One `websockets` connection speaking the protocol by hand; batches are unpacked."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._frames: deque[Frame] = deque()

    def send(self, message: Frame | list[Any]) -> None:
        """Send one frame, or a list of frames as a batch."""
        self.ws.send(json.dumps(message))

    def send_text(self, text: str) -> None:
        """Send a raw text message."""
        self.ws.send(text)

    def receive(self) -> Frame:
        """The next frame from the broker (one of a batch, or a message of its own)."""
        if not self._frames:
            message = self.ws.recv(timeout=RECV_TIMEOUT)
            assert isinstance(message, str), f"the broker sent a binary message: {message!r}"
            parsed = json.loads(message)
            frames = parsed if isinstance(parsed, list) else [parsed]
            assert frames, "the broker sent an empty batch"
            for frame in frames:
                assert isinstance(frame, dict), f"the broker sent a non-object frame: {frame!r}"
                assert isinstance(frame.get("type"), str), f"frame without a type: {frame!r}"
            self._frames.extend(frames)
        return self._frames.popleft()

    def expect(self, frame_type: str) -> Frame:
        """The next frame, which must be of *frame_type*."""
        frame = self.receive()
        assert frame["type"] == frame_type, f"expected {frame_type!r}, got {frame!r}"
        return frame

    def until(self, done: Callable[[Frame], bool]) -> list[Frame]:
        """Frames up to and including the first one for which *done* is true."""
        frames = [self.receive()]
        while not done(frames[-1]):
            frames.append(self.receive())
        return frames

    def until_ack(self, ref: int) -> tuple[list[Frame], Frame]:
        """The frames received before the ``ack`` of *ref*, and that ack."""
        frames = self.until(lambda f: f["type"] == "ack" and f["ref"] == ref)
        return frames[:-1], frames[-1]

    def ping(self) -> list[Frame]:
        """Send ``ping``; the frames that arrived before its ``pong``."""
        self.send({"type": "ping"})
        return self.until(lambda f: f["type"] == "pong")[:-1]

    def publish(self, ref: int, **event: Any) -> Frame:
        """Publish *event* with *ref* and return its ``ack`` (no other frame may come first)."""
        self.send({"type": "publish", "ref": ref, "event": event})
        return self.expect("ack")

    def subscribe(self, sub_id: int, pattern: str) -> None:
        """Subscribe and wait for ``subscribed``."""
        self.send({"type": "subscribe", "id": sub_id, "pattern": pattern})
        assert self.expect("subscribed") == {"type": "subscribed", "id": sub_id, "seq": None}

    def close_code(self) -> int:
        """Read until the broker closes the connection; the close code it sent."""
        while True:
            try:
                frame = self.receive()
            except ConnectionClosed as exc:
                closed = exc
                break
            assert frame["type"] == "error", f"unexpected frame before the close: {frame!r}"
        assert closed.rcvd is not None, f"closed without a close frame: {closed!r}"
        return closed.rcvd.code


@contextmanager
def open_peer(url: str, *, hello: bool = True) -> Iterator[Peer]:
    """A connected `websockets` client; with *hello*, past the handshake."""
    with connect(
        url, open_timeout=RECV_TIMEOUT, close_timeout=RECV_TIMEOUT, ping_interval=None
    ) as ws:
        peer = Peer(ws)
        if hello:
            peer.send({"type": "hello", "protocol": 1, "token": None, "client": "interop"})
            peer.expect("welcome")
        yield peer


def parse_iso(text: object) -> datetime:
    """*text* as an ISO 8601 time that carries a UTC offset."""
    assert isinstance(text, str), text
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() is not None, f"time without an offset: {text!r}"
    return parsed


# ---------------------------------------------------------------------------------------------
# Handshake and the happy paths


async def test_handshake_hello_welcome() -> None:
    """`hello` is answered by `welcome` with protocol 1, a session, the broker's name, heartbeat."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(name=BROKER_NAME, heartbeat=HEARTBEAT) as served:

            def run() -> list[Frame]:
                with (
                    open_peer(served.url, hello=False) as a,
                    open_peer(served.url, hello=False) as b,
                ):
                    welcomes = []
                    for peer in (a, b):
                        peer.send({"type": "hello", "protocol": 1, "token": None, "client": "x"})
                        welcomes.append(peer.expect("welcome"))
                    assert a.ping() == []
                    return welcomes

            welcomes = await in_thread(run)
    for welcome in welcomes:
        assert welcome["protocol"] == 1
        assert isinstance(welcome["session"], str)
        assert welcome["session"]
        assert welcome["broker"] == BROKER_NAME
        assert isinstance(welcome["heartbeat"], float)
        assert welcome["heartbeat"] == HEARTBEAT
    assert welcomes[0]["session"] != welcomes[1]["session"]
    assert served.broker.statistics().errors == {}


async def test_hello_with_only_the_type() -> None:
    """`hello` without `protocol`, `token` or `client` takes their defaults."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> Frame:
                with open_peer(served.url, hello=False) as peer:
                    peer.send({"type": "hello"})
                    welcome = peer.expect("welcome")
                    assert peer.ping() == []
                    return welcome

            assert (await in_thread(run))["protocol"] == 1


async def test_subscribe_answers_subscribed() -> None:
    """`subscribe` is answered by `subscribed` with its id."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> Frame:
                with open_peer(served.url) as peer:
                    peer.send({"type": "subscribe", "id": 7, "pattern": "orders.>", "group": None})
                    return peer.expect("subscribed")

            assert await in_thread(run) == {"type": "subscribed", "id": 7, "seq": None}
            assert served.broker.statistics().errors == {}


async def test_publish_with_ref_is_acked() -> None:
    """`publish` with `ref` is answered by `ack` with the ref, the event id, and seq null."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, Frame]:
                with open_peer(served.url) as peer:
                    chosen = peer.publish(1, topic="orders.created", id="evt-1", data={"n": 1})
                    filled = peer.publish(2, topic="orders.created", data=None)
                    return chosen, filled

            chosen, filled = await in_thread(run)
    assert chosen == {"type": "ack", "ref": 1, "id": "evt-1", "seq": None}
    assert filled["ref"] == 2
    assert isinstance(filled["id"], str)
    assert filled["id"]
    assert filled["seq"] is None
    assert served.broker.statistics().events_in == 2


async def test_publish_without_ref_gets_no_answer() -> None:
    """A `publish` without `ref` is fire and forget: nothing comes back."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> list[Frame]:
                with open_peer(served.url) as peer:
                    peer.send({"type": "publish", "event": {"topic": "orders.created"}})
                    return peer.ping()

            assert await in_thread(run) == []
            assert served.broker.statistics().events_in == 1


async def test_event_reaches_wildcard_subscriber_once_with_every_matching_sub() -> None:
    """An event goes to another client in one frame whose `subs` lists all its matching ids."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, Frame, list[Frame]]:
                with open_peer(served.url) as publisher, open_peer(served.url) as subscriber:
                    subscriber.subscribe(1, "orders.>")
                    subscriber.subscribe(2, "orders.*")
                    subscriber.subscribe(3, "other.>")
                    subscriber.subscribe(4, "orders.created")
                    subscriber.subscribe(5, "*.created")
                    ack = publisher.publish(
                        10, topic="orders.created", data={"k": [1, "two", None]}, headers={"h": "v"}
                    )
                    event = subscriber.expect("event")
                    return ack, event, subscriber.ping()

            ack, frame, after = await in_thread(run)
    assert sorted(frame["subs"]) == [1, 2, 4, 5]
    event = frame["event"]
    assert event["id"] == ack["id"]
    assert event["topic"] == "orders.created"
    assert event["data"] == {"k": [1, "two", None]}
    assert event["headers"] == {"h": "v"}
    assert event["seq"] is None
    assert event["reply_to"] is None
    assert after == [], "the event came more than once"


async def test_batch_in_several_answers_out() -> None:
    """A JSON array of frames is processed in order and every frame gets its answer."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> list[Frame]:
                with open_peer(served.url) as peer:
                    peer.send(
                        [
                            {"type": "subscribe", "id": 1, "pattern": "batch.*"},
                            {"type": "publish", "ref": 2, "event": {"topic": "batch.one"}},
                            {"type": "unsubscribe", "id": 1},
                            {"type": "publish", "ref": 3, "event": {"topic": "batch.two"}},
                            {"type": "ping"},
                        ]
                    )
                    return peer.until(lambda f: f["type"] == "pong")

            frames = await in_thread(run)
    types = [f["type"] for f in frames]
    assert sorted(types[1:3]) == ["ack", "event"], types
    assert types[0] == "subscribed"
    assert types[3:] == ["unsubscribed", "ack", "pong"]
    event = next(f for f in frames if f["type"] == "event")
    assert event["subs"] == [1]
    assert event["event"]["topic"] == "batch.one"
    assert [f["ref"] for f in frames if f["type"] == "ack"] == [2, 3]


async def test_broker_fills_omitted_event_fields() -> None:
    """A publish may omit id, type, source and time: the broker fills them in."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, Frame]:
                with open_peer(served.url) as publisher, open_peer(served.url) as subscriber:
                    subscriber.subscribe(1, "fill.>")
                    ack = publisher.publish(1, topic="fill.me", data=[1, 2])
                    return ack, subscriber.expect("event")["event"]

            ack, event = await in_thread(run)
    assert event["id"] == ack["id"]
    assert isinstance(event["id"], str)
    assert event["id"]
    assert event["type"] == "fill.me"
    assert isinstance(event["source"], str)
    assert event["source"]
    parse_iso(event["time"])
    assert event["headers"] == {}
    assert event["data"] == [1, 2]


async def test_client_chosen_event_fields_are_kept() -> None:
    """id, type, source, time and headers chosen by the publisher reach the subscriber."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> Frame:
                with open_peer(served.url) as publisher, open_peer(served.url) as subscriber:
                    subscriber.subscribe(1, "kept.it")
                    publisher.publish(
                        1,
                        topic="kept.it",
                        id="evt-42",
                        type="com.example.kept",
                        source="svc-a",
                        time="2026-11-26T17:04:05.123456+02:00",
                        headers={"trace": "abc"},
                    )
                    event: Frame = subscriber.expect("event")["event"]
                    return event

            event = await in_thread(run)
    assert event["id"] == "evt-42"
    assert event["type"] == "com.example.kept"
    assert event["source"] == "svc-a"
    assert parse_iso(event["time"]) == datetime.fromisoformat("2026-11-26T15:04:05.123456+00:00")
    assert event["headers"] == {"trace": "abc"}


async def test_client_seq_is_ignored() -> None:
    """A `seq` chosen by the publisher is ignored: the ack and the event carry the broker's."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, Frame]:
                with open_peer(served.url) as publisher, open_peer(served.url) as subscriber:
                    subscriber.subscribe(1, "seq.test")
                    ack = publisher.publish(1, topic="seq.test", seq=42)
                    return ack, subscriber.expect("event")["event"]

            ack, event = await in_thread(run)
    assert ack["seq"] is None
    assert event["seq"] is None


async def test_request_reply_between_two_clients() -> None:
    """A requester's publish with `reply_to` reaches a responder, whose reply reaches the inbox."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, Frame]:
                with open_peer(served.url) as responder, open_peer(served.url) as requester:
                    responder.subscribe(1, "svc.echo")
                    requester.subscribe(1, "_inbox.x")
                    requester.publish(2, topic="svc.echo", data={"say": "hi"}, reply_to="_inbox.x")
                    request = responder.expect("event")
                    assert request["subs"] == [1]
                    reply_to = request["event"]["reply_to"]
                    responder.publish(
                        2, topic=reply_to, data={"echo": request["event"]["data"]["say"]}
                    )
                    return request["event"], requester.expect("event")

            request, reply = await in_thread(run)
    assert request["reply_to"] == "_inbox.x"
    assert request["data"] == {"say": "hi"}
    assert reply["subs"] == [1]
    assert reply["event"]["topic"] == "_inbox.x"
    assert reply["event"]["data"] == {"echo": "hi"}
    assert served.broker.statistics().errors == {}


async def test_request_without_responders_is_refused() -> None:
    """A publish with `reply_to` that matches no subscription gets `no_responders` with its ref."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, list[Frame]]:
                with open_peer(served.url) as requester:
                    requester.subscribe(1, "_inbox.y")
                    requester.send(
                        {
                            "type": "publish",
                            "ref": 5,
                            "event": {"topic": "svc.nobody", "reply_to": "_inbox.y"},
                        }
                    )
                    error = requester.expect("error")
                    # still usable
                    requester.publish(6, topic="svc.nobody")
                    return error, requester.ping()

            error, after = await in_thread(run)
            assert served.broker.statistics().errors == {"no_responders": 1}
    assert error["code"] == "no_responders"
    assert error["ref"] == 5
    assert isinstance(error["message"], str)
    assert after == []


async def test_unsubscribe_stops_events() -> None:
    """`unsubscribe` is answered by `unsubscribed`, and no event follows."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, Frame, list[Frame]]:
                with open_peer(served.url) as publisher, open_peer(served.url) as subscriber:
                    subscriber.subscribe(3, "unsub.>")
                    publisher.publish(1, topic="unsub.a")
                    first = subscriber.expect("event")
                    subscriber.send({"type": "unsubscribe", "id": 3})
                    unsubscribed = subscriber.expect("unsubscribed")
                    publisher.publish(2, topic="unsub.a")
                    return first, unsubscribed, subscriber.ping()

            first, unsubscribed, after = await in_thread(run)
    assert first["subs"] == [3]
    assert unsubscribed == {"type": "unsubscribed", "id": 3}
    assert after == []


async def test_ping_pong() -> None:
    """`ping` is answered by `pong`."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> Frame:
                with open_peer(served.url) as peer:
                    peer.send({"type": "ping"})
                    return peer.expect("pong")

            assert await in_thread(run) == {"type": "pong"}


# ---------------------------------------------------------------------------------------------
# Bad input that is not fatal

#: The frame sent after a bad one, to show the connection is still usable.
AFTER: Final = {"type": "publish", "ref": 1000, "event": {"topic": "after.error"}}

BAD_INPUT = [
    # (id, message text, error code, error ref)
    ("not-json", '{"type": "ping"', "bad_frame", None),
    ("not-json-garbage", "\u00e9t\u00e9 \U0001f600", "bad_frame", None),
    ("json-number", "42", "bad_frame", None),
    ("json-string", '"ping"', "bad_frame", None),
    ("json-null", "null", "bad_frame", None),
    ("batch-item-not-object", "[7]", "bad_frame", None),
    ("batch-item-array", '[["ping"]]', "bad_frame", None),
    ("missing-type", '{"id": 3, "pattern": "a"}', "bad_frame", 3),
    ("type-not-a-string", '{"type": 5, "ref": 4}', "bad_frame", 4),
    ("unknown-type", '{"type": "frobnicate", "ref": 5}', "unknown_type", 5),
    ("broker-only-type", '{"type": "ack", "ref": 6, "id": "x"}', "unknown_type", 6),
    ("subscribe-missing-pattern", '{"type": "subscribe", "id": 7}', "bad_frame", 7),
    ("subscribe-missing-id", '{"type": "subscribe", "pattern": "a"}', "bad_frame", None),
    (
        "subscribe-pattern-not-str",
        '{"type": "subscribe", "id": 8, "pattern": ["a"]}',
        "bad_frame",
        8,
    ),
    ("subscribe-id-not-int", '{"type": "subscribe", "id": "9", "pattern": "a"}', "bad_frame", None),
    ("subscribe-id-float", '{"type": "subscribe", "id": 9.5, "pattern": "a"}', "bad_frame", None),
    (
        "subscribe-since-not-int",
        '{"type": "subscribe", "id": 10, "pattern": "a", "since": "yesterday"}',
        "bad_frame",
        10,
    ),
    (
        "subscribe-group-not-str",
        '{"type": "subscribe", "id": 11, "pattern": "a", "group": 1}',
        "bad_frame",
        11,
    ),
    ("unsubscribe-missing-id", '{"type": "unsubscribe"}', "bad_frame", None),
    ("unsubscribe-id-not-int", '{"type": "unsubscribe", "id": true}', "bad_frame", None),
    ("publish-missing-event", '{"type": "publish", "ref": 12}', "bad_frame", 12),
    ("publish-event-not-object", '{"type": "publish", "ref": 13, "event": "a.b"}', "bad_frame", 13),
    (
        "publish-missing-topic",
        '{"type": "publish", "ref": 14, "event": {"data": 1}}',
        "bad_frame",
        14,
    ),
    (
        "publish-topic-not-str",
        '{"type": "publish", "ref": 15, "event": {"topic": 15}}',
        "bad_frame",
        15,
    ),
    (
        "publish-time-not-iso",
        '{"type": "publish", "ref": 16, "event": {"topic": "a", "time": "noon"}}',
        "bad_frame",
        16,
    ),
    (
        "publish-headers-not-strings",
        '{"type": "publish", "ref": 17, "event": {"topic": "a", "headers": {"k": 1}}}',
        "bad_frame",
        17,
    ),
    (
        "publish-seq-not-int",
        '{"type": "publish", "ref": 18, "event": {"topic": "a", "seq": "42"}}',
        "bad_frame",
        18,
    ),
    (
        "publish-retain-not-bool",
        '{"type": "publish", "ref": 19, "retain": "yes", "event": {"topic": "a"}}',
        "bad_frame",
        19,
    ),
    (
        "publish-ref-not-int",
        '{"type": "publish", "ref": "20", "event": {"topic": "a"}}',
        "bad_frame",
        None,
    ),
    (
        "publish-invalid-topic",
        '{"type": "publish", "ref": 21, "event": {"topic": "a..b"}}',
        "invalid_topic",
        21,
    ),
    (
        "publish-wildcard-topic",
        '{"type": "publish", "ref": 22, "event": {"topic": "orders.*"}}',
        "invalid_topic",
        22,
    ),
    (
        "publish-invalid-reply-to",
        '{"type": "publish", "ref": 23, "event": {"topic": "a", "reply_to": "_inbox.>"}}',
        "invalid_topic",
        23,
    ),
    (
        "subscribe-invalid-pattern",
        '{"type": "subscribe", "id": 24, "pattern": "orders.>.x"}',
        "invalid_topic",
        24,
    ),
    (
        "subscribe-empty-pattern",
        '{"type": "subscribe", "id": 25, "pattern": ""}',
        "invalid_topic",
        25,
    ),
    (
        "publish-reserved-topic",
        '{"type": "publish", "ref": 26, "event": {"topic": "$sys.stats"}}',
        "forbidden",
        26,
    ),
]


@pytest.mark.parametrize(
    ("text", "code", "ref"), [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT]
)
async def test_bad_input_gets_error_and_connection_stays_usable(
    text: str, code: str, ref: int | None
) -> None:
    """Each kind of bad input gets its `error` frame, is counted, and the connection goes on."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[list[Frame], Frame, list[Frame]]:
                with open_peer(served.url) as peer:
                    peer.send_text(text)
                    peer.send(AFTER)
                    before, ack = peer.until_ack(1000)
                    return before, ack, peer.ping()

            before, ack, after = await in_thread(run)
            assert served.broker.statistics().errors == {code: 1}
    assert len(before) == 1, before
    (error,) = before
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["ref"] == ref
    assert isinstance(error["message"], str)
    assert error["message"]
    assert ack["seq"] is None
    assert after == []


async def test_bad_frame_in_batch_spoils_only_itself() -> None:
    """In a batch, a bad frame gets its error in place; the good frames around it, their answers."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> list[Frame]:
                with open_peer(served.url) as peer:
                    peer.send(
                        [
                            {"type": "ping"},
                            "not a frame",
                            {"type": "publish", "ref": 1, "event": {"topic": "a.b"}},
                            {"type": "publish", "ref": 2, "event": {"topic": 2}},
                            {"type": "nope"},
                            {"type": "subscribe", "id": 3, "pattern": "a.>"},
                        ]
                    )
                    return peer.until(lambda f: f["type"] == "subscribed")

            frames = await in_thread(run)
            assert served.broker.statistics().errors == {"bad_frame": 2, "unknown_type": 1}
    assert [(f["type"], f.get("code"), f.get("ref")) for f in frames] == [
        ("pong", None, None),
        ("error", "bad_frame", None),
        ("ack", None, 1),
        ("error", "bad_frame", 2),
        ("error", "unknown_type", None),
        ("subscribed", None, None),
    ]


async def test_duplicate_subscription_id_is_refused_not_fatal() -> None:
    """A second `subscribe` with a live id gets `protocol` with its ref; the first one stays."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, list[Frame], list[Frame]]:
                with open_peer(served.url) as peer:
                    peer.subscribe(1, "dup.a")
                    peer.send({"type": "subscribe", "id": 1, "pattern": "dup.b"})
                    error = peer.expect("error")
                    peer.send({"type": "publish", "ref": 2, "event": {"topic": "dup.a"}})
                    on_a = peer.until(lambda f: f["type"] == "ack")
                    peer.send({"type": "publish", "ref": 3, "event": {"topic": "dup.b"}})
                    on_b = peer.until(lambda f: f["type"] == "ack")
                    return error, on_a, on_b

            error, on_a, on_b = await in_thread(run)
            assert served.broker.statistics().errors == {"protocol": 1}
    assert error["code"] == "protocol"
    assert error["ref"] == 1
    assert [f["type"] for f in on_a] == ["event", "ack"]
    assert on_a[0]["subs"] == [1]
    assert [f["type"] for f in on_b] == ["ack"]


async def test_garbage_from_one_client_does_not_disturb_another() -> None:
    """While one client floods the broker with garbage, another publishes and receives fine."""
    garbage = ["{", "[[1, 2]]", '{"type": 1}', '{"type": "publish", "event": {}}', "\x00" * 64]
    rounds = 50
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:
            flooding = threading.Event()
            done = threading.Event()
            sent = 0

            def flood() -> list[Frame]:
                nonlocal sent
                answers = []
                with open_peer(served.url) as peer:
                    while not done.is_set():
                        for text in garbage * 4:
                            peer.send_text(text)
                            sent += 1
                        flooding.set()
                        answers += peer.ping()
                return answers

            def behave() -> list[Frame]:
                assert flooding.wait(RECV_TIMEOUT)
                events = []
                try:
                    with open_peer(served.url) as publisher, open_peer(served.url) as subscriber:
                        subscriber.subscribe(1, "calm.>")
                        for i in range(rounds):
                            assert publisher.publish(i, topic="calm.x", data=i)["ref"] == i
                            events.append(subscriber.expect("event"))
                finally:
                    done.set()
                return events

            async with trio.open_nursery() as nursery:
                flood_result: list[list[Frame]] = []

                async def run_flood() -> None:
                    flood_result.append(await in_thread(flood))

                nursery.start_soon(run_flood)
                events = await in_thread(behave)
            assert served.broker.statistics().errors == {"bad_frame": sent}
    assert [e["event"]["data"] for e in events] == list(range(rounds))
    (answers,) = flood_result
    assert len(answers) == sent
    assert {(f["type"], f["code"]) for f in answers} == {("error", "bad_frame")}


# ---------------------------------------------------------------------------------------------
# Fatal errors and the end of a connection


async def test_first_frame_not_hello_is_fatal() -> None:
    """A first frame other than `hello` gets `error` code `protocol`, then close code 4000."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, int]:
                with open_peer(served.url, hello=False) as peer:
                    peer.send({"type": "ping"})
                    error = peer.expect("error")
                    return error, peer.close_code()

            error, code = await in_thread(run)
            assert served.broker.statistics().errors == {"protocol": 1}
    assert error["code"] == "protocol"
    assert code == 4000


async def test_first_frame_not_json_is_fatal() -> None:
    """A first message that is not JSON gets `error` code `protocol`, then close code 4000."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, int]:
                with open_peer(served.url, hello=False) as peer:
                    peer.send_text("hello?")
                    error = peer.expect("error")
                    return error, peer.close_code()

            error, code = await in_thread(run)
    assert error["code"] == "protocol"
    assert code == 4000


async def test_unsupported_protocol_version_is_refused() -> None:
    """`hello` with protocol 2 gets `error` code `unsupported_protocol`, then close (4000)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, int]:
                with open_peer(served.url, hello=False) as peer:
                    peer.send({"type": "hello", "protocol": 2})
                    error = peer.expect("error")
                    return error, peer.close_code()

            error, code = await in_thread(run)
            assert served.broker.statistics().errors == {"unsupported_protocol": 1}
            assert served.broker.statistics().connections_total == 0
    assert error["code"] == "unsupported_protocol"
    assert code == 4000


async def test_message_over_max_size_closes_1009() -> None:
    """A message larger than `max_message_size` closes the connection with code 1009."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker(max_message_size=4096) as served:
            async with served.broker.bus.subscribe("$sys.disconnect") as disconnects:

                def run() -> int:
                    with open_peer(served.url) as peer:
                        peer.publish(1, topic="small", data="x" * 900)
                        peer.send(
                            {"type": "publish", "event": {"topic": "big", "data": "x" * 5000}}
                        )
                        return peer.close_code()

                assert await in_thread(run) == 1009
                await disconnects.receive()
            assert served.broker.statistics().errors == {"too_large": 1}


async def test_no_hello_within_handshake_timeout_closes(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A client that sends nothing is closed once `handshake_timeout` has passed (4000), and
    not before.

    The broker's clock stands still while the client connects in its thread (no real time
    limit can race the connect), then jumps over the timeout.
    """
    handshake_timeout = 5.0
    with trio.fail_after(TEST_TIMEOUT), ExitStack() as stack:
        async with running_broker(handshake_timeout=handshake_timeout) as served:
            peer = await in_thread(lambda: stack.enter_context(open_peer(served.url, hello=False)))
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(handshake_timeout * 0.99)
            await trio.testing.wait_all_tasks_blocked()
            assert served.broker.statistics().errors == {}
            mock_clock.jump(handshake_timeout * 0.02)
            assert await in_thread(peer.close_code) == 4000
            assert served.broker.statistics().connections_total == 0
            assert served.broker.statistics().errors == {"handshake_timeout": 1}
        await in_thread(stack.close)


async def test_graceful_shutdown_closes_clients_1001() -> None:
    """Cancelling the broker closes a connected client with close code 1001."""
    with trio.fail_after(TEST_TIMEOUT):
        stack = ExitStack()
        try:
            async with running_broker() as served:

                def start() -> Peer:
                    peer = stack.enter_context(open_peer(served.url))
                    peer.subscribe(1, "shutdown.>")
                    return peer

                peer = await in_thread(start)
            code = await in_thread(peer.close_code)
        finally:
            await in_thread(stack.close)
    assert code == 1001


# ---------------------------------------------------------------------------------------------
# Regressions: each of these once crashed the whole broker


async def test_second_hello_is_fatal_for_that_client_only() -> None:
    """A second `hello` gets `error` code `protocol` and close 4000; other clients go on."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> tuple[Frame, int, list[Frame]]:
                with open_peer(served.url) as bystander:
                    with open_peer(served.url) as peer:
                        peer.send({"type": "hello", "protocol": 1})
                        error = peer.expect("error")
                        code = peer.close_code()
                    return error, code, bystander.ping()

            error, code, after = await in_thread(run)
            assert served.broker.statistics().errors == {"protocol": 1}
    assert error["code"] == "protocol"
    assert code == 4000
    assert after == []


#: Connections that close right after a request; each crashes a buggy broker about half the time.
CLOSING_ATTEMPTS: Final = 40


async def test_client_closing_with_answers_pending_does_not_crash_the_broker() -> None:
    """Clients that close right after sending requests, unanswered yet, do not hurt the broker."""
    with trio.fail_after(TEST_TIMEOUT):
        async with running_broker() as served:

            def run() -> list[Frame]:
                for _ in range(CLOSING_ATTEMPTS):
                    with open_peer(served.url) as peer:
                        peer.send([{"type": "ping"}] * 20)
                    # leaving the block closes the connection (a clean close handshake)
                with open_peer(served.url) as peer:
                    return peer.ping()

            assert await in_thread(run) == []
