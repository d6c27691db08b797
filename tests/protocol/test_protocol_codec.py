"""The JSON codec of trio_realtime.protocol: encode, decode, encode_event."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

import attrs
import orjson
import pytest
from cattrs import ClassValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_realtime.protocol._codec as codec_module
from trio_realtime import Event, LocalProtocolError, RemoteProtocolError, event_type
from trio_realtime.protocol import (
    BAD_FRAME,
    FRAME_TYPES,
    UNKNOWN_TYPE,
    Ack,
    Error,
    EventFrame,
    Frame,
    Gap,
    Hello,
    History,
    HistoryResult,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    _codec,
    decode,
    encode,
    encode_event,
)

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

T0 = datetime(2026, 11, 26, 15, 4, 5, 123456, tzinfo=UTC)
EVENT = Event(
    id="e1",
    topic="orders.created",
    type="orders.created",
    source="svc-a",
    time=T0,
    data={"order": 7, "lines": [1.5, None, "x"]},
    headers={"k": "v"},
    seq=42,
    reply_to=None,
)
EVENT_JSON = {
    "id": "e1",
    "topic": "orders.created",
    "type": "orders.created",
    "source": "svc-a",
    "time": "2026-11-26T15:04:05.123456+00:00",
    "data": {"order": 7, "lines": [1.5, None, "x"]},
    "headers": {"k": "v"},
    "seq": 42,
    "reply_to": None,
}


@event_type("tests.protocol.payload")
@attrs.frozen
class Payload:
    """A typed payload."""

    n: int


def one_error(text: str | bytes) -> RemoteProtocolError:
    """Decode *text*, which must yield exactly one error, and return it."""
    (item,) = decode(text)
    assert isinstance(item, RemoteProtocolError), item
    return item


# ---------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize(
    ("frame", "wire"),
    [
        (
            Hello(token="t"),
            {"type": "hello", "protocol": 1, "token": "t", "client": None, "instance": None},
        ),
        (
            Subscribe(id=3, pattern="orders.>", group="g", since=10),
            {
                "type": "subscribe",
                "id": 3,
                "pattern": "orders.>",
                "group": "g",
                "since": 10,
                "since_time": None,
            },
        ),
        (Unsubscribe(id=3), {"type": "unsubscribe", "id": 3}),
        (
            Publish(event=EVENT, retain=True, ref=5),
            {"type": "publish", "event": EVENT_JSON, "retain": True, "ref": 5},
        ),
        (
            History(ref=4, pattern="a.*", since_time="2026-01-01T00:00:00+00:00", limit=5),
            {
                "type": "history",
                "ref": 4,
                "pattern": "a.*",
                "since": None,
                "since_time": "2026-01-01T00:00:00+00:00",
                "limit": 5,
            },
        ),
        (Ping(), {"type": "ping"}),
        (Pong(), {"type": "pong"}),
        (
            Welcome(session="s1", broker="b", heartbeat=15.0, epoch="ep"),
            {
                "type": "welcome",
                "protocol": 1,
                "session": "s1",
                "broker": "b",
                "heartbeat": 15.0,
                "epoch": "ep",
                "user": None,
                "inbox": None,
                "expires_in": None,
            },
        ),
        (
            Welcome(
                session="s1",
                broker="b",
                heartbeat=15.0,
                user="u",
                inbox="_inbox.x",
                expires_in=9.5,
            ),
            {
                "type": "welcome",
                "protocol": 1,
                "session": "s1",
                "broker": "b",
                "heartbeat": 15.0,
                "epoch": None,
                "user": "u",
                "inbox": "_inbox.x",
                "expires_in": 9.5,
            },
        ),
        (  # nodes only when there are some
            Welcome(session="s1", broker="b", heartbeat=15.0, nodes=("ws://b", "ws://c")),
            {
                "type": "welcome",
                "protocol": 1,
                "session": "s1",
                "broker": "b",
                "heartbeat": 15.0,
                "epoch": None,
                "user": None,
                "inbox": None,
                "expires_in": None,
                "nodes": ["ws://b", "ws://c"],
            },
        ),
        (Refresh(ref=7, token="t"), {"type": "refresh", "token": "t", "ref": 7}),
        (Refresh(token="t"), {"type": "refresh", "token": "t", "ref": None}),
        (
            Refreshed(ref=7, user="u", expires_in=9.0),
            {"type": "refreshed", "ref": 7, "user": "u", "expires_in": 9.0},
        ),
        (
            EventFrame(subs=(1, 2), event=EVENT),
            {"type": "event", "subs": [1, 2], "event": EVENT_JSON},
        ),
        (Subscribed(id=3), {"type": "subscribed", "id": 3, "seq": None}),
        (Subscribed(id=3, seq=40), {"type": "subscribed", "id": 3, "seq": 40}),
        (Unsubscribed(id=3), {"type": "unsubscribed", "id": 3}),
        (
            Unsubscribed(id=3, reason="no longer allowed"),
            {"type": "unsubscribed", "id": 3, "reason": "no longer allowed"},
        ),
        (Ack(ref=5, id="e1", seq=42), {"type": "ack", "ref": 5, "id": "e1", "seq": 42}),
        (Gap(sub=1, missed=9), {"type": "gap", "sub": 1, "missed": 9, "stored": None}),
        (Gap(sub=1, missed=9, stored=4), {"type": "gap", "sub": 1, "missed": 9, "stored": 4}),
        (
            Error(ref=None, code="internal", message="oops"),
            {"type": "error", "ref": None, "code": "internal", "message": "oops"},
        ),
        (
            HistoryResult(ref=4, events=(EVENT, EVENT)),
            {"type": "history_result", "ref": 4, "events": [EVENT_JSON, EVENT_JSON]},
        ),
        (
            HistoryResult(ref=4, events=(EVENT,), more=True, resume=90),
            {
                "type": "history_result",
                "ref": 4,
                "events": [EVENT_JSON],
                "more": True,
                "resume": 90,
            },
        ),
    ],
    ids=lambda value: getattr(value, "TYPE", ""),
)
def test_encode_each_frame_type(frame: Frame, wire: dict[str, Any]) -> None:
    """Each frame type encodes to the JSON object of the protocol, "type" first."""
    text = encode(frame)
    assert isinstance(text, str)
    assert orjson.loads(text) == wire
    assert text.startswith('{"type":')
    assert decode(text) == [frame]


def test_encode_batch_is_a_json_array() -> None:
    """A list or tuple of frames encodes to a JSON array of them, in order."""
    frames: list[Frame] = [Ping(), EventFrame(subs=(1,), event=EVENT), Pong()]
    text = encode(frames)
    assert [item["type"] for item in orjson.loads(text)] == ["ping", "event", "pong"]
    assert decode(text) == frames
    assert encode(tuple(frames)) == text
    assert encode([]) == "[]"


def test_encode_event_matches_to_dict() -> None:
    """encode_event gives the event's to_dict() as JSON."""
    assert orjson.loads(encode_event(EVENT)) == EVENT.to_dict() == EVENT_JSON


def test_encode_event_is_cached_by_identity() -> None:
    """Encoding the same Event again reuses its text; an equal-id but different event is new."""
    first = encode_event(EVENT)
    assert encode_event(EVENT) is first
    stored = attrs.evolve(EVENT, seq=43)
    assert orjson.loads(encode_event(stored))["seq"] == 43
    assert orjson.loads(encode(EventFrame(subs=(1,), event=EVENT)))["event"]["seq"] == 42


def test_the_encoding_is_kept_on_the_event() -> None:
    """An event is encoded once: its text and size live on it, and evolve() starts afresh
    (equality and repr ignore it)."""
    event = attrs.evolve(EVENT)
    before: object = event._wire
    assert before is None
    text = encode_event(event)
    after: object = event._wire
    assert after == (text, len(text.encode()))
    assert event == EVENT
    assert "_wire" not in repr(event)
    assert attrs.evolve(event, seq=1)._wire is None


def test_encode_typed_payload_as_json() -> None:
    """An event whose data is a registered attrs instance encodes its data as an object."""
    event = Event(topic="tests.protocol.payload", data=Payload(n=3))
    wire = orjson.loads(encode(EventFrame(subs=(1,), event=event)))
    assert wire["event"]["data"] == {"n": 3}
    assert wire["event"]["type"] == "tests.protocol.payload"


@pytest.mark.parametrize(
    "frame",
    [
        EventFrame(subs=(1,), event=Event(topic="a", data={1, 2})),
        Publish(event=Event(topic="a", data=object())),
        EventFrame(subs=("1",), event=EVENT),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_json_cannot_hold(frame: Frame) -> None:
    """Data that is not JSON-compatible, or a field of the wrong type, is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode(frame)


def test_encode_refuses_non_frames() -> None:
    """Encoding something that is not a frame is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match="not a frame"):
        encode({"type": "ping"})  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="not a frame"):
        encode([Ping(), "pong"])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# Decoding good input


def test_decode_accepts_bytes() -> None:
    """decode takes UTF-8 bytes as well as str."""
    assert decode(b'{"type":"ping"}') == [Ping()]


def test_decode_ignores_unknown_fields() -> None:
    """Unknown fields, in a frame or in an event, are ignored."""
    text = orjson.dumps(
        {"type": "event", "subs": [1], "future": True, "event": {**EVENT_JSON, "new": 1}}
    )
    assert decode(text) == [EventFrame(subs=(1,), event=EVENT)]


def test_decode_fills_defaults() -> None:
    """Nullable and defaulted fields may be left out."""
    assert decode('{"type":"hello"}') == [Hello()]
    assert decode('{"type":"subscribe","id":1,"pattern":"a"}') == [Subscribe(id=1, pattern="a")]
    assert decode('{"type":"ack","ref":1,"id":"x"}') == [Ack(ref=1, id="x", seq=None)]
    assert decode('{"type":"error","code":"internal","message":"m"}') == [
        Error(code="internal", message="m")
    ]
    assert decode('{"type":"history","ref":1,"pattern":"a"}') == [History(ref=1, pattern="a")]


def test_decode_minimal_publish_fills_the_event() -> None:
    """A publish may give only the topic: id, time, type, source and headers are filled."""
    before = datetime.now(UTC)
    (frame,) = decode('{"type":"publish","event":{"topic":"orders.created","data":[1]}}')
    assert isinstance(frame, Publish)
    event = frame.event
    assert (event.topic, event.type, event.data, event.headers) == (
        "orders.created",
        "orders.created",
        [1],
        {},
    )
    assert event.source == "trio-realtime"
    assert event.seq is None
    assert event.reply_to is None
    assert len(event.id) == 38
    assert before <= event.time <= datetime.now(UTC)
    assert frame.retain is False
    assert frame.ref is None
    (other,) = decode('{"type":"publish","event":{"topic":"orders.created","id":null}}')
    assert isinstance(other, Publish)
    assert other.event.id != event.id


def test_decode_normalises_times_to_utc() -> None:
    """Event times at other offsets, or without one, come out as aware UTC datetimes."""
    for raw, expected in [
        ("2026-11-26T16:04:05+01:00", datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)),
        ("2026-11-26T15:04:05", datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)),
    ]:
        (frame,) = decode(orjson.dumps({"type": "publish", "event": {"topic": "a", "time": raw}}))
        assert isinstance(frame, Publish)
        assert frame.event.time == expected
        assert frame.event.time.utcoffset() == timedelta(0)


def test_decode_heartbeat_accepts_an_integer() -> None:
    """A float field accepts a JSON integer (JavaScript sends 30 for 30.0)."""
    (frame,) = decode('{"type":"welcome","session":"s","broker":"b","heartbeat":30}')
    assert frame == Welcome(session="s", broker="b", heartbeat=30.0)
    assert isinstance(frame, Welcome)
    assert type(frame.heartbeat) is float


def test_decode_keeps_data_plain_json() -> None:
    """Event data stays plain JSON on decode, even for a registered event type."""
    (frame,) = decode(
        orjson.dumps({"type": "event", "subs": [1], "event": {**EVENT_JSON, "data": {"n": 1}}})
    )
    assert isinstance(frame, EventFrame)
    assert frame.event.data == {"n": 1}


def test_decode_empty_batch() -> None:
    """An empty batch holds no frames."""
    assert decode("[]") == []


# ---------------------------------------------------------------------------------------------
# Decoding bad input


@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"type": "ping"', b"\xff\xfe", "NaN", '"\\ud800"'],
)
def test_decode_not_json(text: str | bytes) -> None:
    """A message that is not JSON yields one bad_frame error."""
    error = one_error(text)
    assert error.code == BAD_FRAME
    assert "not JSON" in str(error)
    assert error.ref is None


@pytest.mark.parametrize("text", ["3", '"ping"', "null", "true", "1.5"])
def test_decode_json_that_is_neither_object_nor_array(text: str) -> None:
    """A JSON scalar is not a frame nor a batch: bad_frame."""
    error = one_error(text)
    assert error.code == BAD_FRAME
    assert "JSON object" in str(error)


def test_decode_batch_with_a_non_object() -> None:
    """In a batch, an item that is not an object is a bad_frame; the others still decode."""
    items = decode('[{"type":"ping"}, 3, [], {"type":"pong"}, "x"]')
    assert items[0] == Ping()
    assert items[3] == Pong()
    for index in (1, 2, 4):
        error = items[index]
        assert isinstance(error, RemoteProtocolError)
        assert error.code == BAD_FRAME
        assert "must be a JSON object" in str(error)


def test_decode_missing_type() -> None:
    """A frame without "type" is a bad_frame, answering its ref when it has one."""
    error = one_error('{"id": 4}')
    assert error.code == BAD_FRAME
    assert "'type' is required" in str(error)
    assert error.ref == 4


@pytest.mark.parametrize("tag", ["3", "null", "true", '["ping"]', '{"a":1}'])
def test_decode_non_string_type(tag: str) -> None:
    """A "type" that is not a string is a bad_frame."""
    error = one_error('{"type": %s, "ref": 2}' % tag)  # noqa: UP031 - JSON braces
    assert error.code == BAD_FRAME
    assert "'type'" in str(error)
    assert error.ref == 2


def test_decode_unknown_type() -> None:
    """An unknown "type" is unknown_type, answering the frame's ref or id."""
    error = one_error('{"type": "teleport", "ref": 9}')
    assert error.code == UNKNOWN_TYPE
    assert "teleport" in str(error)
    assert error.ref == 9
    assert one_error('{"type": "teleport", "id": 3}').ref == 3
    assert one_error('{"type": "teleport", "id": "x"}').ref is None
    assert one_error('{"type": "Ping"}').code == UNKNOWN_TYPE


@pytest.mark.parametrize(
    ("frame", "field", "ref"),
    [
        ({"type": "subscribe", "pattern": "a"}, "'id' is required", None),
        ({"type": "subscribe", "id": 1}, "'pattern' is required", 1),
        ({"type": "unsubscribe"}, "'id' is required", None),
        ({"type": "publish", "ref": 2}, "'event' is required", 2),
        ({"type": "publish", "ref": 2, "event": {}}, "'event.topic' is required", 2),
        ({"type": "history", "pattern": "a"}, "'ref' is required", None),
        ({"type": "welcome", "session": "s", "broker": "b"}, "'heartbeat' is required", None),
        ({"type": "event", "subs": [1]}, "'event' is required", None),
        ({"type": "event", "event": EVENT_JSON}, "'subs' is required", None),
        ({"type": "ack", "ref": 1}, "'id' is required", 1),
        ({"type": "gap", "sub": 1}, "'missed' is required", None),
        ({"type": "error", "code": "x"}, "'message' is required", None),
        ({"type": "history_result", "ref": 1}, "'events' is required", 1),
        ({"type": "subscribed"}, "'id' is required", None),
    ],
)
def test_decode_missing_required_field(frame: dict[str, Any], field: str, ref: int | None) -> None:
    """A missing required field is a bad_frame naming the field."""
    error = one_error(orjson.dumps(frame))
    assert error.code == BAD_FRAME
    assert field in str(error)
    assert f"bad {frame['type']!r} frame" in str(error)
    assert error.ref == ref


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"type": "subscribe", "id": "x", "pattern": "a"}, "'id' must be an integer, not a string"),
        (
            {"type": "subscribe", "id": True, "pattern": "a"},
            "'id' must be an integer, not a boolean",
        ),
        ({"type": "subscribe", "id": 1.0, "pattern": "a"}, "'id' must be an integer, not a number"),
        ({"type": "subscribe", "id": 1, "pattern": 5}, "'pattern' must be a string"),
        ({"type": "subscribe", "id": 1, "pattern": "a", "group": 1}, "'group' must be a string"),
        ({"type": "subscribe", "id": 1, "pattern": "a", "since": "1"}, "'since' must be an int"),
        ({"type": "subscribe", "id": 1, "pattern": "a", "since": False}, "'since' must be an int"),
        (
            {"type": "subscribe", "id": 1, "pattern": "a", "since_time": "yesterday"},
            "'since_time' is not an ISO 8601 time",
        ),
        ({"type": "subscribe", "id": 1, "pattern": "a", "since_time": 5}, "'since_time' must be"),
        ({"type": "unsubscribe", "id": None}, "'id' must be an integer, not null"),
        ({"type": "hello", "protocol": "1"}, "'protocol' must be an integer"),
        ({"type": "hello", "protocol": True}, "'protocol' must be an integer, not a boolean"),
        ({"type": "hello", "token": 5}, "'token' must be a string or null"),
        ({"type": "event", "subs": "1", "event": EVENT_JSON}, "'subs' must be an array"),
        ({"type": "event", "subs": [1, "2"], "event": EVENT_JSON}, "'subs[1]' must be an int"),
        ({"type": "event", "subs": [True], "event": EVENT_JSON}, "'subs[0]' must be an int"),
        ({"type": "event", "subs": [1], "event": 3}, "'event' must be an event object"),
        ({"type": "event", "subs": [1], "event": [EVENT_JSON]}, "'event' must be an event object"),
        ({"type": "publish", "event": EVENT_JSON, "retain": "yes"}, "'retain' must be true or"),
        ({"type": "publish", "event": EVENT_JSON, "retain": 1}, "'retain' must be true or false"),
        ({"type": "publish", "event": EVENT_JSON, "retain": None}, "'retain' must be true or"),
        ({"type": "publish", "event": EVENT_JSON, "ref": "2"}, "'ref' must be an integer or null"),
        ({"type": "publish", "event": EVENT_JSON, "ref": True}, "'ref' must be an integer or"),
        ({"type": "welcome", "session": "s", "broker": "b", "heartbeat": "30"}, "'heartbeat'"),
        ({"type": "welcome", "session": "s", "broker": "b", "heartbeat": True}, "'heartbeat'"),
        (
            {"type": "welcome", "session": "s", "broker": "b", "heartbeat": 1, "nodes": "ws://a"},
            "'nodes' must be an array of strings, not a string",
        ),
        (
            {"type": "welcome", "session": "s", "broker": "b", "heartbeat": 1, "nodes": ["a", 1]},
            "'nodes[1]' must be a string, not an integer",
        ),
        ({"type": "ack", "ref": 1, "id": 1}, "'id' must be a string"),
        ({"type": "ack", "ref": 1, "id": "x", "seq": "1"}, "'seq' must be an integer or null"),
        ({"type": "gap", "sub": 1, "missed": 1.5}, "'missed' must be an integer"),
        ({"type": "error", "code": 1, "message": "m"}, "'code' must be a string"),
        ({"type": "history", "ref": 1, "pattern": "a", "limit": "10"}, "'limit' must be an int"),
        ({"type": "history_result", "ref": 1, "events": {}}, "'events' must be an array"),
        ({"type": "history_result", "ref": 1, "events": [3]}, "'events[0]' must be an event"),
    ],
)
def test_decode_wrong_typed_field(frame: dict[str, Any], message: str) -> None:
    """A field of the wrong type (bools are not integers) is a bad_frame naming the field."""
    error = one_error(orjson.dumps(frame))
    assert error.code == BAD_FRAME
    assert message in str(error)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"topic": 3}, "'event.topic' must be a string"),
        ({"topic": None}, "'event.topic' is required"),
        ({"topic": "a", "id": 1}, "'event.id' must be a string"),
        ({"topic": "a", "type": ["x"]}, "'event.type' must be a string"),
        ({"topic": "a", "source": {}}, "'event.source' must be a string"),
        ({"topic": "a", "time": 1700000000}, "'event.time' must be an ISO 8601 time string"),
        ({"topic": "a", "time": "noon"}, "'event.time' is not an ISO 8601 time"),
        ({"topic": "a", "time": "0001-01-01T00:00:00+01:00"}, "'event.time' is not an ISO"),
        ({"topic": "a", "headers": ["k"]}, "'event.headers' must be an object"),
        ({"topic": "a", "headers": {"k": 1}}, "'event.headers.k' must be a string"),
        ({"topic": "a", "seq": "1"}, "'event.seq' must be an integer or null"),
        ({"topic": "a", "seq": True}, "'event.seq' must be an integer or null"),
        ({"topic": "a", "reply_to": 1}, "'event.reply_to' must be a string or null"),
    ],
)
def test_decode_wrong_typed_event_field(event: dict[str, Any], message: str) -> None:
    """A bad field of an event is a bad_frame naming it, in publish and event frames alike."""
    for frame in (
        {"type": "publish", "event": event, "ref": 6},
        {"type": "event", "subs": [1], "event": event},
        {"type": "history_result", "ref": 6, "events": [EVENT_JSON, event]},
    ):
        error = one_error(orjson.dumps(frame))
        assert error.code == BAD_FRAME
        expected = message
        if frame["type"] == "history_result":
            expected = message.replace("'event.", "'events[1].")
        assert expected in str(error)
        assert error.ref == frame.get("ref")


def test_decode_reports_every_bad_field() -> None:
    """All bad fields of one frame are named in its error."""
    error = one_error('{"type":"subscribe","id":"1","pattern":2}')
    assert "'id'" in str(error)
    assert "'pattern'" in str(error)


def test_decode_topic_grammar_is_not_checked() -> None:
    """Topic grammar is the broker's to check: decode accepts any string topic."""
    (frame,) = decode('{"type":"publish","event":{"topic":"not a..topic*"}}')
    assert isinstance(frame, Publish)
    assert frame.event.topic == "not a..topic*"


def test_decode_batch_keeps_good_frames_around_bad_ones() -> None:
    """One bad frame in a batch does not spoil the others, which keep their order."""
    items = decode(
        orjson.dumps(
            [
                {"type": "subscribe", "id": 1, "pattern": "a"},
                {"type": "subscribe", "id": 2},
                {"type": "nope", "ref": 3},
                {"type": "publish", "event": {"topic": "a", "id": "p"}, "ref": 4},
                {"type": "publish", "event": {"topic": 5}, "ref": 5},
                {"type": "ping"},
            ]
        )
    )
    assert items[0] == Subscribe(id=1, pattern="a")
    assert isinstance(items[3], Publish)
    assert items[3].ref == 4
    assert items[5] == Ping()
    errors = [(item.code, item.ref) for item in items if isinstance(item, RemoteProtocolError)]
    assert errors == [(BAD_FRAME, 2), (UNKNOWN_TYPE, 3), (BAD_FRAME, 5)]


# ---------------------------------------------------------------------------------------------
# Properties

JSON_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
INT = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
OPT_TEXT = st.none() | TEXT
OPT_INT = st.none() | INT
TOKEN = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=6)
TOPIC = st.lists(TOKEN, min_size=1, max_size=4).map(".".join)
UTC_TIMES = st.datetimes(timezones=st.just(UTC))
JSON = st.recursive(
    st.none() | st.booleans() | JSON_INT | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=10,
)
EVENTS = st.builds(
    Event,
    id=TEXT,
    topic=TOPIC,
    type=TEXT,
    source=TEXT,
    time=UTC_TIMES,
    data=JSON,
    headers=st.dictionaries(TEXT, TEXT, max_size=3),
    seq=OPT_INT,
    reply_to=st.none() | TOPIC.map("_inbox.".__add__),
)
ISO_TIMES = st.none() | UTC_TIMES.map(datetime.isoformat)

FRAMES: SearchStrategy[Frame] = st.one_of(
    st.builds(Hello, protocol=INT, token=OPT_TEXT, client=OPT_TEXT),
    st.builds(Subscribe, id=INT, pattern=TEXT, group=OPT_TEXT, since=OPT_INT, since_time=ISO_TIMES),
    st.builds(Unsubscribe, id=INT),
    st.builds(Publish, event=EVENTS, retain=st.booleans(), ref=OPT_INT),
    st.builds(
        History,
        ref=INT,
        pattern=TEXT,
        since=OPT_INT,
        since_time=ISO_TIMES,
        limit=INT,
    ),
    st.builds(Ping),
    st.builds(Pong),
    st.builds(
        Welcome,
        protocol=INT,
        session=TEXT,
        broker=TEXT,
        heartbeat=st.floats(allow_nan=False, allow_infinity=False),
        epoch=OPT_TEXT,
        nodes=st.lists(TEXT, max_size=3).map(tuple),
    ),
    st.builds(EventFrame, subs=st.lists(INT, max_size=4).map(tuple), event=EVENTS),
    st.builds(Subscribed, id=INT),
    st.builds(Unsubscribed, id=INT),
    st.builds(Ack, ref=INT, id=TEXT, seq=OPT_INT),
    st.builds(Gap, sub=INT, missed=INT),
    st.builds(Error, ref=OPT_INT, code=TEXT, message=TEXT),
    st.builds(HistoryResult, ref=INT, events=st.lists(EVENTS, max_size=3).map(tuple)),
)


@settings(max_examples=200, deadline=None)
@given(FRAMES)
def test_round_trip_every_frame(frame: Frame) -> None:
    """decode(encode(frame)) gives the frame back, for frames of every type."""
    assert decode(encode(frame)) == [frame]


@settings(max_examples=50, deadline=None)
@given(st.lists(FRAMES, max_size=4))
def test_round_trip_batches(frames: list[Frame]) -> None:
    """decode(encode(frames)) gives the batch back, in order."""
    assert decode(encode(frames)) == frames


def check_items(items: object) -> None:
    """*items* is what decode must return: a list of frames and RemoteProtocolErrors."""
    assert isinstance(items, list)
    for item in items:
        assert isinstance(item, (RemoteProtocolError, *FRAME_TYPES.values()))
        if isinstance(item, RemoteProtocolError):
            assert item.code in {BAD_FRAME, UNKNOWN_TYPE}
            assert item.ref is None or type(item.ref) is int


@settings(max_examples=200, deadline=None)
@given(st.text() | st.binary())
def test_decode_arbitrary_text_never_raises(text: str | bytes) -> None:
    """decode of any text or bytes returns frames and errors; it never raises."""
    check_items(decode(text))


@settings(max_examples=150, deadline=None)
@given(JSON | st.lists(JSON, max_size=3))
def test_decode_arbitrary_json_never_raises(value: Any) -> None:
    """decode of any JSON value returns frames and errors; it never raises."""
    check_items(decode(orjson.dumps(value)))


EVENT_FIELDS = ("id", "topic", "type", "source", "time", "data", "headers", "seq", "reply_to")
#: Values for event fields: sometimes right, often wrong.
EVENT_FIELD_VALUES = JSON | TOPIC | UTC_TIMES.map(datetime.isoformat) | st.just("2026-13-01")
EVENT_OBJECTS = st.fixed_dictionaries(
    {}, optional=dict.fromkeys(EVENT_FIELDS, EVENT_FIELD_VALUES)
) | st.dictionaries(st.sampled_from(EVENT_FIELDS), st.just("x") | INT, max_size=3)
FIELD_NAMES = sorted(
    {field.name for cls in FRAME_TYPES.values() for field in attrs.fields(cls)} - {"event"}
)
#: Objects shaped like frames, with fields of every kind of value: mostly bad frames.
FRAME_LIKE = st.builds(
    lambda tag, fields, event: {"type": tag, **fields, **event},
    st.sampled_from(sorted(FRAME_TYPES)) | TEXT,
    st.dictionaries(st.sampled_from(FIELD_NAMES), JSON | st.lists(INT, max_size=2) | INT),
    st.fixed_dictionaries({}, optional={"event": EVENT_OBJECTS | JSON}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(FRAME_LIKE, min_size=1, max_size=2))
def test_decode_frame_like_objects_never_raises(frames: list[dict[str, Any]]) -> None:
    """decode of objects shaped like frames, with any field values, never raises."""
    items = decode(orjson.dumps(frames))
    check_items(items)
    assert len(items) == len(frames)


def normalised(frame: Frame, obj: dict[str, Any]) -> Frame:
    """*frame* with the event id and time that decoding filled in (if any) made fixed."""
    event = getattr(frame, "event", None)
    raw = obj.get("event")
    if isinstance(event, Event) and isinstance(raw, dict):
        if raw.get("id") is None:
            event = attrs.evolve(event, id="filled")
        if raw.get("time") is None:
            event = attrs.evolve(event, time=T0)
        return attrs.evolve(cast("Any", frame), event=event)  # type: ignore[no-any-return]
    return frame


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.builds(
        lambda tag, subs, extra, event: {"type": tag, "event": event, **subs, **extra},
        st.sampled_from(["event", "publish"]),
        st.fixed_dictionaries(
            {},
            optional={"subs": st.lists(INT | TEXT | st.booleans(), max_size=2) | JSON},
        ),
        st.fixed_dictionaries({}, optional={"retain": st.booleans() | JSON, "ref": OPT_INT | JSON}),
        EVENT_OBJECTS | EVENTS.map(Event.to_dict) | JSON,
    )
)
def test_fast_paths_agree_with_the_converter(obj: dict[str, Any]) -> None:
    """The hand-written decoders of event and publish frames agree with the cattrs converter."""
    fast: Frame | None
    try:
        fast = _codec._FAST_DECODERS[obj["type"]](obj)
    except (KeyError, TypeError, ValueError):
        fast = None
    slow: Frame | None
    try:
        slow = _codec.structure_frame(obj)
    except (ClassValidationError, ValueError):
        slow = None
    assert (fast is None) == (slow is None), (fast, slow)
    if fast is not None and slow is not None:
        assert normalised(fast, obj) == normalised(slow, obj)


def test_fast_path_failure_falls_back_to_precise_errors() -> None:
    """A frame the fast path refuses still gets the converter's precise message."""
    error = one_error('{"type":"event","subs":[1],"event":{"topic":"a","seq":"x"}}')
    assert "'event.seq' must be an integer or null, not a string" in str(error)


@settings(max_examples=100, deadline=None)
@given(
    st.datetimes(timezones=st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m))))
)
def test_decoded_times_are_utc(when: datetime) -> None:
    """Any valid ISO 8601 time with an offset decodes to the same instant, in UTC."""
    text = orjson.dumps({"type": "publish", "event": {"topic": "a", "time": when.isoformat()}})
    (item,) = decode(text)
    if isinstance(item, RemoteProtocolError):  # converting to UTC left the datetime range
        assert item.code == BAD_FRAME
        assert "'event.time'" in str(item)
        return
    assert isinstance(item, Publish)
    assert item.event.time == when
    assert item.event.time.tzinfo is UTC


# ---------------------------------------------------------------------------------------------
# Integers are never changed (issue 7, finding 9)


@given(st.integers(min_value=-(2**70), max_value=2**70), st.booleans())
def test_integers_in_data_are_exact_or_refused(number: int, spaced: bool) -> None:
    """An integer in event data decodes exactly, or, outside what orjson keeps exact (i64 and
    u64), is a bad_frame naming the field: never silently a float."""
    gap = " \n " if spaced else ""
    text = f'{{"type":"publish","ref":7,"event":{{"topic":"a","data":[1,{gap}{number}]}}}}'
    [result] = decode(text)
    if -(2**63) <= number <= 2**64 - 1:
        assert isinstance(result, Publish)
        assert result.event.data == [1, number]
        assert type(result.event.data[1]) is int
    else:
        assert isinstance(result, RemoteProtocolError)
        assert result.code == "bad_frame"
        assert result.ref == 7
        assert "event.data[1]" in str(result)


@given(st.integers(min_value=2**63, max_value=2**70) | st.integers(max_value=-(2**63) - 1))
def test_frame_fields_outside_64_bits_are_bad_frames(number: int) -> None:
    """A frame field (a subscription id, a since) outside signed 64 bits is a bad_frame."""
    for text in (
        f'{{"type":"subscribe","id":{number},"pattern":"a"}}',
        f'{{"type":"subscribe","id":1,"pattern":"a","since":{number}}}',
    ):
        [result] = decode(text)
        assert isinstance(result, RemoteProtocolError)
        assert result.code == "bad_frame"


def test_long_digit_runs_inside_strings_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Digits inside strings (event ids, phone numbers) do not make decode re-read a message."""

    def exact(*_: object) -> object:
        raise AssertionError("re-read exactly")

    monkeypatch.setattr(codec_module, "_exact", exact)
    digits = "1234567890" * 3
    text = (
        f'{{"type":"publish","event":{{"topic":"a","id":"ab{digits}","data":"{digits}",'
        f'"headers":{{"n":"x{digits}"}}}}}}'
    )
    [result] = decode(text)
    assert isinstance(result, Publish)
    assert result.event.data == digits


@given(st.datetimes(timezones=st.just(UTC)))
def test_time_on_the_wire_has_a_fixed_width(when: datetime) -> None:
    """`time` is always written with microseconds (a whole second too): 32 characters."""
    text = encode_event(Event(topic="t", time=when))
    wire = orjson.loads(text)["time"]
    assert len(wire) == 32
    assert datetime.fromisoformat(wire) == when


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))])))
def test_the_encoded_time_is_to_dict_s_whatever_the_time(when: datetime) -> None:
    """The codec lets orjson write a UTC time (faster than isoformat): the text must be
    to_dict()'s exactly, microseconds always, any year, any offset."""
    event = Event(topic="a", time=when)
    assert orjson.loads(encode_event(event))["time"] == event.to_dict()["time"]
