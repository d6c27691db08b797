"""Fuzzing a live broker with Hypothesis: random and mutated frames over a raw WebSocket.

One broker serves for the whole test, with two clients of its own: a *fuzz* client (raw
trio-websocket) that sends the messages Hypothesis draws, and a well-behaved *checker* client,
connected before the fuzzing starts. After each drawn batch of messages the test checks that

(a) the broker's serve task is still running (no exception escaped it);
(b) the checker still completes a subscribe → publish → ack + event round trip;
(c) every message the broker sent the fuzz client is JSON made of frames whose ``type`` is in
    PROTOCOL.md's broker → client list, with the fields it lists, and every ``error`` has a
    ``code`` from PROTOCOL.md's list.

The broker may close the fuzz connection (fatal errors do: here, a message over
``max_message_size``); it must use a close code from PROTOCOL.md, and a new fuzz client takes
over. Hypothesis runs in a worker thread; each example enters the test's Trio run with
``trio.from_thread.run``, so the broker and the checker live across examples.

Two things are left to dedicated tests in ``tests/test_interop.py`` rather than drawn here, as
they close the fuzz connection on purpose and would drown the fuzzing in reconnects: a second
``hello`` (fatal: ``protocol``, close 4000), and a client closing while answers are pending
(the fuzz client is drained before anything closes it).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import trio
import trio_websocket
from conftest import RunningBroker, start_broker
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from trio_realtime.broker._broker import Broker

Frame = dict[str, Any]
Message = str | bytes

# ---------------------------------------------------------------------------------------------
# The contract, as PROTOCOL.md writes it (deliberately not imported from the package)

#: Frame types a broker sends.
SERVER_FRAME_TYPES: Final = frozenset(
    {"welcome", "event", "subscribed", "unsubscribed", "ack", "gap", "error", "ping", "pong"}
)
#: Error codes.
ERROR_CODES: Final = frozenset(
    {
        "bad_frame",
        "unknown_type",
        "protocol",
        "unsupported_protocol",
        "auth_failed",
        "forbidden",
        "invalid_topic",
        "too_large",
        "rate_limited",
        "slow_consumer",
        "no_responders",
        "internal",
        "limit",  # extensions of the project's: a configured limit refused the frame,
        "no_store",  # the broker has no store for since or history,
        "duplicate_id",  # an event id is another publisher's,
        "store_failed",  # and the store failed
    }
)
#: The error codes this broker (no store, no auth, no rate limit) can answer a client with.
REACHABLE_ERROR_CODES: Final = frozenset(
    {
        "bad_frame",
        "unknown_type",
        "protocol",
        "forbidden",
        "invalid_topic",
        "no_responders",
        "no_store",
        "limit",
        "too_large",
    }
)
#: WebSocket close codes (1007 and 4002 are in the project's protocol docs).
#: The close codes a peer may get for what it sent. Not 1011 (the broker failed: a hostile
#: peer must never make it fail) nor 1008 (the fuzzed broker does not authenticate).
CLOSE_CODES: Final = frozenset({1000, 1001, 1007, 1009, 4000, 4001, 4002})

# ---------------------------------------------------------------------------------------------
# Settings

#: Examples Hypothesis draws (each is a batch of messages, then the checks).
MAX_EXAMPLES: Final = 100
#: The broker's ``max_message_size`` in this test: larger messages close the connection.
MAX_MESSAGE_SIZE: Final = 16 * 1024
#: The broker's ``max_subscriptions`` in this test (low, so that attacks reach it).
MAX_SUBSCRIPTIONS: Final = 100
#: The broker's ``max_retained`` in this test.
MAX_RETAINED: Final = 50
#: Nesting at most this deep is relayed; deeper (to the parser limit) is refused as bad_frame.
SAFE_DEPTH: Final = 200
#: Nesting the broker's JSON parser refuses (the whole message is then ``bad_frame``).
TOO_DEEP: Final = 1100
#: Seconds one example (its messages and every check) may take.
EXAMPLE_TIMEOUT: Final = 10.0
#: Seconds a failed check waits for the broker to finish crashing, if it is crashing.
CRASH_GRACE: Final = 2.0
#: Seconds the whole test may take.
TEST_TIMEOUT: Final = 60.0

# ---------------------------------------------------------------------------------------------
# Checking what the broker sends


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_str(value: object) -> bool:
    return type(value) is str


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"the broker sent {name}, which is not JSON")


def check_event(event: object) -> None:
    """*event* is an event object as PROTOCOL.md describes it."""
    assert isinstance(event, dict), event
    for key in ("id", "topic", "type", "source", "time"):
        assert _is_str(event.get(key)), f"event field {key!r}: {event!r}"
    assert datetime.fromisoformat(event["time"]).utcoffset() is not None, event
    assert "data" in event, event
    headers = event.get("headers")
    assert isinstance(headers, dict), event
    assert all(_is_str(value) for value in headers.values()), event
    assert event.get("seq") is None or _is_int(event["seq"]), event
    assert event.get("reply_to") is None or _is_str(event["reply_to"]), event


def check_frame(frame: object) -> Frame:
    """*frame* is a broker → client frame of PROTOCOL.md, with the fields it lists."""
    assert isinstance(frame, dict), f"a frame must be an object: {frame!r}"
    kind = frame.get("type")
    assert kind in SERVER_FRAME_TYPES, f"not a broker → client frame type: {frame!r}"
    if kind == "welcome":
        assert frame["protocol"] == 1, frame
        assert _is_str(frame["session"]), frame
        assert _is_str(frame["broker"]), frame
        assert type(frame["heartbeat"]) in (int, float), frame
    elif kind == "event":
        subs = frame["subs"]
        assert isinstance(subs, list), frame
        assert subs, frame
        assert all(_is_int(sub) for sub in subs), frame
        assert len(set(subs)) == len(subs), frame
        check_event(frame["event"])
    elif kind in ("subscribed", "unsubscribed"):
        assert _is_int(frame["id"]), frame
        assert frame.get("seq") is None or _is_int(frame["seq"]), frame
    elif kind == "ack":
        assert _is_int(frame["ref"]), frame
        assert _is_str(frame["id"]), frame
        assert frame["seq"] is None or _is_int(frame["seq"]), frame
    elif kind == "gap":
        assert _is_int(frame["sub"]), frame
        assert _is_int(frame["missed"]), frame
        assert frame.get("stored") is None or _is_int(frame["stored"]), frame
    elif kind == "error":
        assert frame["code"] in ERROR_CODES, f"not a PROTOCOL.md error code: {frame!r}"
        assert frame.get("ref") is None or _is_int(frame["ref"]), frame
        assert _is_str(frame["message"]), frame
    return frame


def check_message(message: Message) -> list[Frame]:
    """The frames of one message from the broker: a text message of JSON frames."""
    assert isinstance(message, str), f"the broker sent a binary message: {message!r}"
    parsed = json.loads(message, parse_constant=_reject_constant)
    if isinstance(parsed, list):
        assert parsed, "the broker sent an empty batch"
        return [check_frame(frame) for frame in parsed]
    return [check_frame(parsed)]


# ---------------------------------------------------------------------------------------------
# The harness: one broker, the checker, the fuzz client


class FuzzHarness:
    """A live broker, the checker client, and the (replaceable) fuzz client."""

    def __init__(self, running: RunningBroker, nursery: trio.Nursery) -> None:
        self.running = running
        self.broker = running.broker
        self.nursery = nursery
        self.port = running.port
        #: The TCP streams under the clients: trio-websocket leaves a client's open when the
        #: server closes first, so the test closes them itself.
        self._streams: dict[trio_websocket.WebSocketConnection, trio.SocketStream] = {}
        self.checker: trio_websocket.WebSocketConnection | None = None
        self.fuzz: trio_websocket.WebSocketConnection | None = None
        self.examples = 0
        #: Frames the fuzz client received, by type (errors as ``error:<code>``).
        self.received: Counter[str] = Counter()
        #: How the broker closed fuzz connections, by close code.
        self.closes: Counter[int] = Counter()
        self._numbers = itertools.count(1)

    def check_serving(self) -> None:
        """(a) The broker's serve task is still running."""
        if self.running.crash is not None:
            raise AssertionError("the broker crashed") from self.running.crash
        assert self.running.serving, "the broker stopped serving"

    async def connect(self, client: str) -> trio_websocket.WebSocketConnection:
        """A new connection, past the handshake."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        ws = await trio_websocket.wrap_client_stream(
            self.nursery, stream, "127.0.0.1", "/", max_message_size=64 * 1024 * 1024
        )
        self._streams[ws] = stream
        await ws.send_message(json.dumps({"type": "hello", "protocol": 1, "client": client}))
        (welcome,) = check_message(await ws.get_message())
        assert welcome["type"] == "welcome", welcome
        return ws

    # -- the fuzz client -----------------------------------------------------------------

    async def run_example(self, messages: list[Message]) -> None:
        """Send *messages* from the fuzz client, then check (a), (b) and (c)."""
        self.examples += 1
        self.check_serving()
        try:
            with trio.fail_after(EXAMPLE_TIMEOUT):
                for message in messages:
                    await self._send(message)
                await self._drain()
                await self._check_round_trip()
        except Exception:
            # A crash explains the failure better: give a crashing broker time to finish.
            with trio.move_on_after(CRASH_GRACE):
                await self.running.stopped.wait()
            self.check_serving()
            raise
        self.check_serving()

    async def _fuzz_client(self) -> trio_websocket.WebSocketConnection:
        """The fuzz client, connected anew if the broker closed the last one."""
        if self.fuzz is None:
            self.fuzz = await self.connect("fuzz")
        return self.fuzz

    async def _send(self, message: Message) -> None:
        size = len(message.encode() if isinstance(message, str) else message)
        if size > MAX_MESSAGE_SIZE:
            # Fatal: drain first, so that no answer is pending when the broker closes (bug).
            await self._drain()
            await (await self._fuzz_client()).send_message(message)
            code = await self._read_until_closed()
            assert code == 1009, f"a message over max_message_size closed with {code}"
            return
        try:
            await (await self._fuzz_client()).send_message(message)
        except trio_websocket.ConnectionClosed:
            await self._read_until_closed()

    async def _receive(self) -> list[Frame]:
        """(c) The frames of the fuzz client's next message, checked."""
        assert self.fuzz is not None
        frames = check_message(await self.fuzz.get_message())
        for frame in frames:
            kind = frame["type"]
            self.received[f"error:{frame['code']}" if kind == "error" else kind] += 1
        return frames

    async def _read_until_closed(self) -> int:
        """Read (and check) what is left until the broker closes the fuzz connection."""
        assert self.fuzz is not None
        try:
            while True:
                await self._receive()
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
        await self._aclose(self.fuzz)
        self.fuzz = None
        assert reason is not None
        assert reason.code in CLOSE_CODES, f"not a PROTOCOL.md close code: {reason}"
        self.closes[reason.code] += 1
        return reason.code

    async def _drain(self) -> None:
        """Read the fuzz client's answers up to the ack of a marker publish sent now."""
        if self.fuzz is None:
            return
        marker = f"fuzz-marker-{next(self._numbers)}"
        publish = {"type": "publish", "ref": 0, "event": {"topic": "zz-marker", "id": marker}}
        try:
            await self.fuzz.send_message(json.dumps(publish))
            while True:
                frames = await self._receive()
                if any(f["type"] == "ack" and f["id"] == marker for f in frames):
                    return
        except trio_websocket.ConnectionClosed:
            await self._read_until_closed()

    # -- the checker client --------------------------------------------------------------

    async def _check_round_trip(self) -> None:
        """(b) The checker subscribes, publishes, gets its ack and the event, unsubscribes."""
        assert self.checker is not None
        n = next(self._numbers)
        topic = f"zz-checker.t{n}"
        await self.checker.send_message(
            json.dumps({"type": "subscribe", "id": n, "pattern": "zz-checker.*"})
        )
        assert await self._checker_frames() == [{"type": "subscribed", "id": n, "seq": None}]
        publish = {"type": "publish", "ref": n, "event": {"topic": topic, "data": {"n": n}}}
        await self.checker.send_message(json.dumps(publish))
        frames: list[Frame] = []
        while len(frames) < 2:
            frames += await self._checker_frames()
        ack = next(f for f in frames if f["type"] == "ack")
        event = next(f for f in frames if f["type"] == "event")
        assert len(frames) == 2, frames
        assert ack["ref"] == n
        assert event["subs"] == [n]
        assert event["event"]["id"] == ack["id"]
        assert event["event"]["data"] == {"n": n}
        await self.checker.send_message(json.dumps({"type": "unsubscribe", "id": n}))
        assert await self._checker_frames() == [{"type": "unsubscribed", "id": n}]

    async def _checker_frames(self) -> list[Frame]:
        assert self.checker is not None
        return check_message(await self.checker.get_message())

    async def close(self) -> None:
        """Close both clients, having read everything owed to them."""
        await self._drain()
        await self.abort()

    async def abort(self) -> None:
        """Close both clients now (idempotent)."""
        for ws in list(self._streams):
            await self._aclose(ws)

    async def _aclose(self, ws: trio_websocket.WebSocketConnection) -> None:
        await ws.aclose()
        await self._streams.pop(ws).aclose()


@asynccontextmanager
async def open_harness() -> AsyncIterator[FuzzHarness]:
    """A serving broker with its checker client connected; everything stopped on exit."""
    broker = Broker(
        stats_interval=None,
        max_message_size=MAX_MESSAGE_SIZE,
        max_subscriptions=MAX_SUBSCRIPTIONS,
        max_retained=MAX_RETAINED,
    )
    async with trio.open_nursery() as nursery:
        # A crash is recorded, not raised: each example checks for one, and names itself.
        running = await start_broker(nursery, broker, record_crash=True)
        harness = FuzzHarness(running, nursery)
        try:
            harness.checker = await harness.connect("checker")
            yield harness
            await harness.close()
            harness.check_serving()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(EXAMPLE_TIMEOUT):
                await harness.abort()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Strategies: what the fuzz client sends

#: Topics and patterns that are valid somewhere (so that frames get through and match).
GOOD_TOPICS: Final = (
    "a",
    "a.b",
    "orders.created",
    "orders.>",
    "orders.*",
    "*.created",
    ">",
    "*",
    "_inbox.x",
    "$sys.stats",
    "$sys.>",
)
#: Topics and patterns that break the grammar in every way.
BAD_TOPICS: Final = (
    "a..b",
    ".a",
    "a.",
    "",
    "a b",
    "a.>.b",
    "ordres.cr\u00e9\u00e9",
    "x" * 1025,
)
#: Frame types: the client's (but ``hello``: see the module docstring), the broker's, others.
FRAME_TYPES: Final = (
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "pong",
    "welcome",
    "event",
    "subscribed",
    "unsubscribed",
    "ack",
    "gap",
    "error",
    "PING",
    "",
    "frobnicate",
)
#: Field names that frames and events have (used for unknown fields and mutations too).
FIELD_NAMES: Final = (
    "type",
    "id",
    "ref",
    "pattern",
    "group",
    "since",
    "event",
    "retain",
    "topic",
    "data",
    "headers",
    "seq",
    "reply_to",
    "time",
    "source",
)
#: Integers at the edges: 32, 53 and 64 bits, and beyond.
EDGE_INTS: Final = (
    2**31 - 1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**40,
)

small_ids = st.integers(-1, 6)
ids = st.one_of(small_ids, small_ids, small_ids, st.sampled_from(EDGE_INTS))
topics = st.sampled_from(GOOD_TOPICS) | st.sampled_from(GOOD_TOPICS) | st.sampled_from(BAD_TOPICS)
json_leaves = (
    st.none()
    | st.booleans()
    | ids
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | topics
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
times = st.one_of(
    st.sampled_from(
        (
            "2026-11-26T15:04:05.123456+00:00",
            "2026-11-26T15:04:05+02:00",
            "2026-11-26T15:04:05",
            "2026-11-26",
            "9999-12-31T23:59:59.999999-23:59",
        )
    ),
    st.sampled_from(("noon", "", "2026-13-01", "2026-11-26T25:00")),
    st.text(max_size=12),
)
events = st.fixed_dictionaries(
    {"topic": topics},
    optional={
        "id": st.text(max_size=12),
        "type": st.text(max_size=12),
        "source": st.text(max_size=12),
        "time": times,
        "data": json_values,
        "headers": st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
        "seq": st.none() | ids,
        "reply_to": st.none() | topics,
    },
)
valid_frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("subscribe"), "id": ids, "pattern": topics},
        optional={"group": st.none() | st.sampled_from(("g1", "g2")), "since": st.none() | ids},
    ),
    st.fixed_dictionaries({"type": st.just("unsubscribe"), "id": ids}),
    st.fixed_dictionaries(
        {"type": st.just("publish"), "event": events},
        optional={"ref": st.none() | ids, "retain": st.booleans()},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(("ping", "pong"))}),
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> Any:
    """A valid frame, then one or two mutations: a field removed, retyped, added, or its type."""
    frame: Frame = draw(valid_frames)
    for _ in range(draw(st.integers(1, 2))):
        target = frame
        if isinstance(frame.get("event"), dict) and draw(st.booleans()):
            target = frame["event"]
        how = draw(st.sampled_from(("remove", "retype", "add", "type", "null")))
        if not target:
            how = "add"
        key = draw(st.sampled_from(sorted(target))) if target else ""
        if how == "remove":
            del target[key]
        elif how == "retype":
            target[key] = draw(json_values)
        elif how == "add":
            target[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = draw(json_values)
        elif how == "null":
            target[key] = None
        else:
            frame["type"] = draw(st.sampled_from(FRAME_TYPES) | st.text(max_size=10))
    return frame


@st.composite
def deep_nesting(draw: st.DrawFn) -> str:
    """JSON nested deep: a bare array or object, or event data, up to past the parser's limit."""
    bare = draw(st.booleans())
    depth = draw(st.integers(1, SAFE_DEPTH) | st.integers(SAFE_DEPTH, TOO_DEEP + 200))
    opening, leaf, closing = draw(st.sampled_from((("[", "", "]"), ('{"a":', "1", "}"))))
    inner = opening * depth + leaf + closing * depth
    if bare:
        return inner
    topic = draw(st.sampled_from(("a", "a.b", "orders.created")))
    return f'{{"type":"publish","ref":{draw(ids)},"event":{{"topic":"{topic}","data":{inner}}}}}'


@st.composite
def oversized(draw: st.DrawFn) -> str:
    """A valid publish just over ``max_message_size``."""
    size = MAX_MESSAGE_SIZE + draw(st.integers(1, 4096))
    return json.dumps({"type": "publish", "event": {"topic": "big", "data": "x" * size}})


# Attacks (issue 7): batches that ask the broker for much, and values at the edges it checks.


def _subscribe_flood(count: int, first_id: int, pattern: str) -> str:
    return json.dumps(
        [{"type": "subscribe", "id": first_id + i, "pattern": pattern} for i in range(count)]
    )


def _retain_flood(count: int, prefix: str) -> str:
    return json.dumps(
        [
            {"type": "publish", "retain": True, "event": {"topic": f"{prefix}.t{i}", "data": i}}
            for i in range(count)
        ]
    )


def _raw_number_publish(number: str, ref: int) -> str:
    return f'{{"type":"publish","ref":{ref},"event":{{"topic":"a","data":{{"n":[{number}]}}}}}}'


def _near_event_limit(delta: int) -> str:
    size = MAX_MESSAGE_SIZE - 1024 - 300 + delta  # about the event limit, either side
    return json.dumps({"type": "publish", "ref": 9, "event": {"topic": "a.b", "data": "e" * size}})


attacks = st.one_of(
    st.builds(_subscribe_flood, st.integers(1, 150), st.integers(0, 10**6), topics),
    st.builds(_retain_flood, st.integers(40, 120), st.sampled_from(("r", "a", "orders"))),
    st.builds(
        _raw_number_publish,
        st.sampled_from(
            ("18446744073709551617", "-9223372036854775809", "18446744073709551615", "1" * 40)
        ),
        small_ids,
    ),
    st.builds(_near_event_limit, st.integers(-200, 600)),
    st.builds(
        json.dumps,
        st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(("history", "subscribe")),
                    "id": small_ids,
                    "ref": small_ids,
                    "pattern": topics,
                    "since": st.sampled_from(EDGE_INTS) | small_ids,
                }
            ),
            min_size=1,
            max_size=40,
        ),
    ),
    st.builds(
        json.dumps,
        st.fixed_dictionaries(
            {
                "type": st.just("publish"),
                "ref": small_ids,
                "event": st.fixed_dictionaries(
                    {
                        "topic": st.sampled_from(("a", "svc.x")),
                        "reply_to": st.sampled_from(("$sys.x", "$x", "_inbox.y", "a")),
                    }
                ),
            }
        ),
    ),
)


def encode(value: Any, ascii_only: bool) -> str:
    """JSON as Python writes it: NaN and Infinity included (the broker must refuse those)."""
    return json.dumps(value, ensure_ascii=ascii_only)


frames = st.one_of(valid_frames, valid_frames, mutated_frames(), json_values)
messages = st.one_of(
    st.builds(encode, valid_frames, st.booleans()),
    st.builds(encode, valid_frames, st.booleans()),
    st.builds(encode, valid_frames, st.booleans()),
    st.builds(encode, mutated_frames(), st.booleans()),
    st.builds(encode, mutated_frames(), st.booleans()),
    st.builds(encode, st.lists(frames, max_size=6), st.booleans()),
    st.builds(encode, st.lists(frames, max_size=6), st.booleans()),
    st.builds(encode, json_values, st.booleans()),
    st.text(max_size=60),
    st.binary(max_size=40),
    st.sampled_from(("", "[]", "{}", "[[]]", "[{}]", "null", '{"type":null}', "\ufeff{}")),
    deep_nesting(),
    oversized(),
    attacks,
    attacks,
)


#: Subscribes to everything, with the largest id (64-bit unsigned).
SUBSCRIBE_ALL: Final = '{"type": "subscribe", "id": 18446744073709551615, "pattern": ">"}'
#: A batch that meets every non-fatal error code the broker can send here, and an event.
TOUR: Final = [
    # first end whatever the fuzzing subscribed (a ">" would be a route for "nobody.home")
    *({"type": "unsubscribe", "id": sub_id} for sub_id in (*range(-1, 7), *EDGE_INTS)),
    {"type": "subscribe", "id": 1, "pattern": "tour.*"},
    {"type": "subscribe", "id": 2, "pattern": "tour.>"},
    {"type": "subscribe", "id": 2, "pattern": "tour.x"},
    {"type": "subscribe", "id": 3, "pattern": "tour.x", "since": 0},
    {"type": "publish", "ref": 4, "event": {"topic": "tour.x", "data": {"\u00e9": [1.5, None]}}},
    {"type": "publish", "ref": 5, "event": {"topic": "tour..x"}},
    {"type": "publish", "ref": 6, "event": {"topic": "$sys.tour"}},
    {"type": "publish", "ref": 7, "event": {"topic": "nobody.home", "reply_to": "_inbox.t"}},
    {"type": "frobnicate", "ref": 8},
    {"type": "unsubscribe", "id": 1},
    {"type": "unsubscribe", "id": 2},
    {"type": "ping"},
    "not a frame",
]


def says_hello(message: Message) -> bool:
    """Whether *message* holds a ``hello`` frame (fatal on an open connection: not drawn)."""
    try:
        parsed = json.loads(message)
    except (ValueError, RecursionError):
        return False
    candidates = parsed if isinstance(parsed, list) else [parsed]
    return any(isinstance(c, dict) and c.get("type") == "hello" for c in candidates)


# ---------------------------------------------------------------------------------------------
# Tests


async def test_broker_survives_random_frames() -> None:
    """Random and mutated frames never crash the broker nor disturb a client, and get answers."""
    with trio.fail_after(TEST_TIMEOUT):
        async with open_harness() as harness:

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                # no shrinking: every example runs against the same broker, so a smaller
                # example after a crash fails for the crash, not for itself
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(batch=st.lists(messages, min_size=1, max_size=8))
            @example(batch=["[]", "", "\x00", "\ufeff", '{"type": "ping"}', b"\xff"])
            @example(batch=["[" * TOO_DEEP + "]" * TOO_DEEP, '{"type": "pong"}'])
            @example(batch=['{"type":"publish","ref":1,"event":{"topic":"a","data":NaN}}'])
            @example(batch=[SUBSCRIBE_ALL, "x" * MAX_MESSAGE_SIZE * 2, SUBSCRIBE_ALL])
            @example(batch=[json.dumps(TOUR)])
            def fuzz(batch: list[Message]) -> None:
                assume(not any(says_hello(message) for message in batch))
                trio.from_thread.run(harness.run_example, batch)

            await trio.to_thread.run_sync(fuzz, abandon_on_cancel=True)
            limits = harness.broker.statistics().limits  # (retained: while the bus is open)
    errors = harness.broker.statistics().errors
    assert harness.examples >= MAX_EXAMPLES // 2
    # only messages over max_message_size closed the fuzz connection (one explicit example)
    assert set(harness.closes) == {1009}, harness.closes
    # every error the broker counted, it reported, and the other way round (a message too big
    # to read too: too_large, then the close)
    reported = {
        kind.removeprefix("error:"): n for kind, n in harness.received.items() if "error:" in kind
    }
    assert errors == reported
    assert harness.closes[1009] <= errors["too_large"]
    # the attacks reached the limits
    assert limits.get("max_subscriptions", 0) > 0, limits
    assert limits.get("max_retained", 0) > 0, limits
    # the fuzzing reached the broker's checks, not only its JSON parser
    # (the explicit examples make sure of it; the counts show the fuzzing got past the parser)
    for kind in (*(f"error:{code}" for code in REACHABLE_ERROR_CODES), "ack", "event", "pong"):
        assert harness.received[kind] > 0, (kind, harness.received)


async def test_deeply_nested_event_data_does_not_crash_the_broker() -> None:
    """An event whose data nests 300 deep, delivered to a subscriber, leaves the broker serving."""
    deep = "[" * 300 + "]" * 300
    with trio.fail_after(TEST_TIMEOUT):
        async with open_harness() as harness:
            await harness.run_example(
                [
                    '{"type": "subscribe", "id": 1, "pattern": "deep.>"}',
                    f'{{"type":"publish","ref":2,"event":{{"topic":"deep.x","data":{deep}}}}}',
                ]
            )
