"""The Event envelope, ids, typed payloads and JSON checks (trio_realtime._event).

The CloudEvents mapping is tested in test_cloudevents.py.

Registering an event type is global state: every name registered here starts with
``test_event.`` and is used by one test only.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from itertools import pairwise
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    JSON_INT_MAX,
    JSON_INT_MIN,
    aware_datetimes,
    events,
    json_values,
)

from trio_realtime import Event, InvalidTopic, _event, event_type
from trio_realtime._event import new_event_id, parse_time
from trio_realtime._payloads import check_json, registered_type, type_for_name

# ---------------------------------------------------------------------------------------------
# Typed payloads used by several tests (registered once, at import)


@attrs.frozen
class Address:
    """A nested attrs class (not itself registered)."""

    city: str
    lines: list[str]


@event_type("test_event.shipment")
@attrs.frozen
class Shipment:
    """A typed payload with nested and optional fields."""

    order_id: int
    weight: float
    address: Address
    tags: list[str] = attrs.Factory(list)
    note: str | None = None


@event_type("test_event.ping", topic="test_event.pings.in")
@attrs.frozen
class Ping:
    """A typed payload whose topic differs from its type name."""

    n: int


@event_type("test_event.loose")
@attrs.frozen
class Loose:
    """A typed payload with an untyped field, which may hold anything."""

    x: Any


def shipments() -> st.SearchStrategy[Shipment]:
    """Shipment payloads with arbitrary (JSON-representable) field values."""
    return st.builds(
        Shipment,
        order_id=st.integers(JSON_INT_MIN, JSON_INT_MAX),
        weight=st.floats(allow_nan=False, allow_infinity=False),
        address=st.builds(Address, city=st.text(), lines=st.lists(st.text(), max_size=3)),
        tags=st.lists(st.text(max_size=5), max_size=3),
        note=st.none() | st.text(),
    )


# ---------------------------------------------------------------------------------------------
# Ids


def test_new_event_id_unique_increasing_fixed_length() -> None:
    """10,000 ids are unique, 38 lowercase hex characters, and strictly increasing in order."""
    ids = [new_event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{38}", i) for i in ids)
    assert all(a < b for a, b in pairwise(ids))


def test_new_event_ids_carry_64_random_bits() -> None:
    """Issue 7, finding 8: an id's last 16 hex digits are random, so ids cannot be guessed."""
    tails = [int(new_event_id()[-16:], 16) for _ in range(2000)]
    assert len(set(tails)) == len(tails)
    # Not a counter: consecutive tails are far apart, and every bit position varies.
    assert sum(1 for a, b in pairwise(tails) if abs(a - b) < 2**32) < 5
    assert all(len({(t >> bit) & 1 for t in tails}) == 2 for bit in range(64))


def test_new_event_id_keeps_increasing_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If the wall clock goes backwards, new ids still sort after the earlier ones."""
    now = time.time_ns()
    readings = iter([now, now - 10**9, now - 2 * 10**9])

    class SteppingClock:
        @staticmethod
        def time_ns() -> int:
            return next(readings)

    monkeypatch.setattr(_event, "_time", SteppingClock)
    ids = [new_event_id() for _ in range(3)]
    assert all(a < b for a, b in pairwise(ids))
    monkeypatch.undo()
    assert new_event_id() > ids[-1]


# ---------------------------------------------------------------------------------------------
# The envelope


def test_event_defaults() -> None:
    """Only topic is required; the rest default as the design says."""
    before = datetime.now(UTC)
    event = Event(topic="orders.created")
    after = datetime.now(UTC)
    assert len(event.id) == 38
    assert event.id != Event(topic="orders.created").id
    assert event.topic == "orders.created"
    assert event.type == "orders.created"  # defaults to the topic
    assert event.data is None
    assert event.source == "trio-realtime"
    assert event.time.tzinfo is not None
    assert event.time.utcoffset() == timedelta(0)
    assert before <= event.time <= after
    assert event.headers == {}
    assert event.seq is None
    assert event.reply_to is None


def test_event_headers_default_is_not_shared() -> None:
    """Each event gets its own empty headers dict."""
    assert Event(topic="a").headers is not Event(topic="a").headers


def test_event_type_defaults_to_registered_name_of_typed_payload() -> None:
    """With a typed payload, type defaults to the registered name, not the topic."""
    event = Event(topic="anything", data=Ping(n=1))
    assert event.type == "test_event.ping"
    assert Event(topic="a", data=Ping(n=1), type="explicit").type == "explicit"
    assert Event(topic="a", data={"n": 1}).type == "a"


def test_event_is_frozen_and_keyword_only() -> None:
    """Assigning a field raises FrozenInstanceError; positional construction is refused."""
    event = Event(topic="a")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.topic = "b"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.seq = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Event("a")  # type: ignore[call-arg]


def test_event_equality_is_by_value() -> None:
    """Two events with the same fields are equal; any field differing makes them unequal."""
    when = datetime(2026, 11, 26, 15, 4, 5, 123456, tzinfo=UTC)
    one = Event(topic="a", id="x", time=when, data={"k": [1]})
    assert one == Event(topic="a", id="x", time=when, data={"k": [1]})
    assert one != attrs.evolve(one, seq=1)
    assert one != attrs.evolve(one, data={"k": [2]})


# ---------------------------------------------------------------------------------------------
# event_type registry


def test_event_type_registers_name_and_topic() -> None:
    """registered_type and type_for_name see a class registered with @event_type."""

    @event_type("test_event.registry.plain")
    @attrs.frozen
    class Plain:
        a: int

    assert registered_type(Plain) == ("test_event.registry.plain", "test_event.registry.plain")
    assert type_for_name("test_event.registry.plain") is Plain
    assert registered_type(Ping) == ("test_event.ping", "test_event.pings.in")
    assert type_for_name("test_event.ping") is Ping


def test_event_type_unknown_lookups_are_none() -> None:
    """Unregistered classes and names look up as None."""

    @attrs.frozen
    class Unregistered:
        a: int

    assert registered_type(Unregistered) is None
    assert registered_type(dict) is None
    assert type_for_name("test_event.never.registered") is None


def test_event_type_topic_override_need_not_match_name() -> None:
    """With topic=, the name may be any string; only the topic is validated."""

    @event_type("test_event override: not a topic", topic="test_event.override")
    @attrs.frozen
    class Override:
        a: int

    assert registered_type(Override) == ("test_event override: not a topic", "test_event.override")
    assert Event(topic="test_event.override", data=Override(a=1)).type == (
        "test_event override: not a topic"
    )


def test_event_type_rejects_non_attrs_class() -> None:
    """Registering a class that is not an attrs class raises TypeError and registers nothing."""

    class NotAttrs:
        pass

    with pytest.raises(TypeError, match="needs an attrs class"):
        event_type("test_event.not_attrs")(NotAttrs)
    assert type_for_name("test_event.not_attrs") is None
    assert registered_type(NotAttrs) is None


def test_event_type_rejects_a_name_taken_by_another_class() -> None:
    """Registering a second class under a taken name raises TypeError; the first stays."""

    @event_type("test_event.taken")
    @attrs.frozen
    class First:
        a: int

    @attrs.frozen
    class Second:
        a: int

    with pytest.raises(TypeError, match=r"'test_event\.taken' is already registered"):
        event_type("test_event.taken")(Second)
    assert type_for_name("test_event.taken") is First
    assert registered_type(Second) is None
    # Registering the same class again under the same name is harmless.
    assert event_type("test_event.taken")(First) is First


@pytest.mark.parametrize(
    ("name", "topic"),
    [
        ("test_event.bad.>.x", None),
        ("test_event..bad", None),
        ("test_event bad", None),
        ("test_event.ok", "test_event.a*"),
        ("test_event.ok2", ""),
    ],
)
def test_event_type_rejects_invalid_topic(name: str, topic: str | None) -> None:
    """An invalid topic or pattern (the name when it serves as topic) raises InvalidTopic at
    decoration."""
    with pytest.raises(InvalidTopic):
        event_type(name, topic=topic)
    assert type_for_name(name) is None


# ---------------------------------------------------------------------------------------------
# parse_time (times in the wire protocol and in CloudEvents)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-26T15:04:05", datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)),
        ("2026-11-26T15:04:05Z", datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)),
        ("2026-11-26T15:04:05.000001+00:00", datetime(2026, 11, 26, 15, 4, 5, 1, tzinfo=UTC)),
        ("2026-11-26T10:04:05-05:00", datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)),
        (datetime(2026, 11, 26, 15, 4, 5), datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)),
        (
            datetime(2026, 11, 26, 16, 4, 5, tzinfo=timezone(timedelta(hours=1))),
            datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC),
        ),
    ],
)
def test_parse_time(value: str | datetime, expected: datetime) -> None:
    """parse_time reads ISO 8601 (or a datetime), naive as UTC, and returns it in UTC."""
    parsed = parse_time(value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("value", [None, 5, 1.5, b"2026-11-26", "yesterday", ""])
def test_parse_time_rejects_non_iso(value: object) -> None:
    """parse_time raises ValueError for anything but an ISO 8601 string or a datetime."""
    with pytest.raises(ValueError):
        parse_time(value)


@settings(max_examples=100, deadline=None)
@given(aware_datetimes())
def test_parse_time_isoformat_round_trip(when: datetime) -> None:
    """parse_time(t.isoformat()) is the same instant as t, expressed in UTC."""
    parsed = parse_time(when.isoformat())
    assert parsed == when
    assert parsed.tzinfo is UTC
    assert parse_time(when.replace(tzinfo=None).isoformat()) == when.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# to_dict: the wire protocol's event object

PROTOCOL_EVENT_KEYS = [
    "id",
    "topic",
    "type",
    "source",
    "time",
    "data",
    "headers",
    "seq",
    "reply_to",
]


def test_to_dict_is_the_protocol_event_object() -> None:
    """to_dict has exactly PROTOCOL.md's keys, with the time as ISO 8601 text."""
    when = datetime(2026, 11, 26, 15, 4, 5, 123456, tzinfo=UTC)
    event = Event(
        topic="orders.created",
        id="id1",
        source="svc-a",
        time=when,
        data={"n": 1},
        headers={"k": "v"},
        seq=42,
        reply_to="_inbox.r1",
    )
    assert event.to_dict() == {
        "id": "id1",
        "topic": "orders.created",
        "type": "orders.created",
        "source": "svc-a",
        "time": "2026-11-26T15:04:05.123456+00:00",
        "data": {"n": 1},
        "headers": {"k": "v"},
        "seq": 42,
        "reply_to": "_inbox.r1",
    }
    bare = Event(topic="a").to_dict()
    assert list(bare) == PROTOCOL_EVENT_KEYS
    assert bare["seq"] is None
    assert bare["reply_to"] is None
    assert bare["headers"] == {}


def test_to_dict_unstructures_typed_payload() -> None:
    """A typed payload appears in to_dict as a plain dict, with its registered type."""
    d = Event(topic="p", data=Ping(n=3)).to_dict()
    assert d["data"] == {"n": 3}
    assert d["type"] == "test_event.ping"
    assert orjson.loads(orjson.dumps(d)) == d


@settings(max_examples=60, deadline=None)
@given(events(data=json_values() | shipments()))
def test_to_dict_is_orjson_serialisable(event: Event) -> None:
    """Any event's to_dict has the protocol keys and survives an orjson round trip unchanged."""
    d = event.to_dict()
    assert list(d) == PROTOCOL_EVENT_KEYS
    assert isinstance(d["headers"], dict)
    assert orjson.loads(orjson.dumps(d)) == d
    assert parse_time(d["time"]) == event.time


# ---------------------------------------------------------------------------------------------
# check_json


@settings(max_examples=100, deadline=None)
@given(json_values())
def test_check_json_accepts_json_values(value: Any) -> None:
    """Every JSON value (nested, unicode, 64-bit ints, finite floats) passes check_json."""
    check_json(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -1.5,
        "",
        "snow \N{SNOWMAN} 日本",
        JSON_INT_MAX,
        JSON_INT_MIN,
        [JSON_INT_MAX, JSON_INT_MIN],
        (1, "a", (None,)),  # tuples serialise as lists
        {"a": {"b": [1, {"c": None}]}},
        Ping(n=1),
        Shipment(order_id=1, weight=0.0, address=Address("x", [])),
        Loose(x={"nested": [1, 2]}),
    ],
    ids=repr,
)
def test_check_json_accepts_examples(value: object) -> None:
    """JSON values, tuples, boundary 64-bit ints and typed payloads pass check_json."""
    check_json(value)


def _deep_list(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        node.append([])
        node = node[0]
    return root


_SENTINEL = object()

# (value, the path the message must name, a fragment of the offending value's repr)
BAD_JSON = [
    (_SENTINEL, "data", "<object object"),
    ({1, 2}, "data", "{1, 2}"),
    (frozenset(), "data", "frozenset()"),
    (b"x", "data", "b'x'"),
    (bytearray(b"x"), "data", "bytearray"),
    (datetime(2026, 1, 1, tzinfo=UTC), "data", "datetime.datetime(2026"),
    (date(2026, 1, 1), "data", "datetime.date(2026"),
    (Decimal("1.5"), "data", "Decimal('1.5')"),
    (2**64, "data", "18446744073709551616"),
    (-(2**63) - 1, "data", "-9223372036854775809"),
    (-(2**64), "data", "-18446744073709551616"),
    ("bad \ud800 surrogate", "data", "'bad \\ud800 surrogate'"),
    ({1: "a"}, "data key", "1"),
    ({"a": {(1, 2): "b"}}, "data['a'] key", "(1, 2)"),
    ({None: 1}, "data key", "None"),
    ([1, 2, object()], "data[2]", "<object object"),
    (["fine", None, 1.5, b"x"], "data[3]", "b'x'"),
    ({"s": "fine", "t": {1}}, "data['t']", "{1}"),
    ({"ok": {"x": [1]}, "bad": b"x"}, "data['bad']", "b'x'"),
    ({"x": [1, b"z"]}, "data['x'][1]", "b'z'"),
    ({"x": [1, 2**64]}, "data['x'][1]", "18446744073709551616"),
    ({"a": {"b": [0, {"c": {3}}]}}, "data['a']['b'][1]['c']", "{3}"),
    ([[[[[[datetime(2026, 1, 1)]]]]]], "data[0][0][0][0][0][0]", "datetime.datetime"),
    ((1, (2, set())), "data[1][1]", "set()"),
    ([Ping(n=1)], "data[0]", "Ping(n=1)"),  # a typed payload is allowed only as the whole data
    ({"p": Ping(n=2)}, "data['p']", "Ping(n=2)"),
    (Loose(x=object()), "data.x", "<object object"),  # a typed payload's fields as attributes
    (Loose(x=[1, 2**70]), "data.x[1]", str(2**70)),
    (Loose(x={"k": [1, object()]}), "data.x['k'][1]", "<object object"),
]


@pytest.mark.parametrize(("value", "path", "fragment"), BAD_JSON)
def test_check_json_rejects_naming_path_and_value(value: object, path: str, fragment: str) -> None:
    """A non-JSON value, however deep, raises TypeError naming its path and the value."""
    with pytest.raises(TypeError) as caught:
        check_json(value)
    message = str(caught.value)
    assert message.startswith(f"{path} is not JSON-compatible: ")
    assert fragment in message


def test_check_json_rejects_too_deep_nesting() -> None:
    """Nesting beyond what orjson encodes is a TypeError too (with orjson's reason)."""
    with pytest.raises(TypeError, match="data is not JSON-compatible"):
        check_json(_deep_list(300))
    check_json(_deep_list(200))


@settings(max_examples=50, deadline=None)
@given(json_values(), st.sampled_from([object(), b"b", {1}, 2**64]), st.data())
def test_check_json_finds_one_bad_value_anywhere(
    value: Any, bad: object, data: st.DataObject
) -> None:
    """One bad value planted anywhere in a JSON value is reported at the path where it is."""
    path = "data"
    container: Any = value
    parent: Any = None
    key: Any = None
    # Walk down a random existing branch, then plant the bad value there.
    while isinstance(container, (list, dict)) and container and data.draw(st.booleans()):
        keys = sorted(container) if isinstance(container, dict) else range(len(container))
        key = data.draw(st.sampled_from(keys))
        parent, container = container, container[key]
        path += f"[{key!r}]"
    if parent is None:
        value = bad
    else:
        parent[key] = bad
    with pytest.raises(TypeError) as caught:
        check_json(value)
    assert str(caught.value).startswith(f"{path} is not JSON-compatible: {bad!r}")
