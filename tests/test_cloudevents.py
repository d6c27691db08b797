"""Events as CloudEvents 1.0 (Event.to_cloudevent, Event.from_cloudevent), checked by the SDK.

The official CloudEvents Python SDK (the ``cloudevents`` package, in the ``test`` extra) is the
oracle: its API (``cloudevents.core``) validates attributes and speaks the HTTP binding's
structured and binary content modes; its compatibility layer (``cloudevents.v1``) is the API
most existing code calls. Both must accept what we write, and we must accept what they write,
with nothing lost.

Registering an event type is global state: every name registered here starts with
``test_cloudevents.`` and is used by this module only.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import parse_qsl

import attrs
import orjson
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import conversion as v1_conversion
from cloudevents.v1 import http as v1_http
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import JSON_INT_MAX, JSON_INT_MIN, events, json_values

from trio_realtime import Event, InvalidTopic, event_type
from trio_realtime._event import parse_time

# ---------------------------------------------------------------------------------------------
# Typed payloads


@event_type("test_cloudevents.parcel")
@attrs.frozen
class Parcel:
    """A typed payload with nested and optional fields."""

    order_id: int
    weight: float
    tags: list[str] = attrs.Factory(list)
    note: str | None = None


@event_type("test_cloudevents.ping", topic="test_cloudevents.pings.in")
@attrs.frozen
class Ping:
    """A typed payload whose topic differs from its type name."""

    n: int


def parcels() -> st.SearchStrategy[Parcel]:
    """Parcel payloads with arbitrary (JSON-representable) field values."""
    return st.builds(
        Parcel,
        order_id=st.integers(JSON_INT_MIN, JSON_INT_MAX),
        weight=st.floats(allow_nan=False, allow_infinity=False),
        tags=st.lists(st.text(max_size=5), max_size=3),
        note=st.none() | st.text(),
    )


# ---------------------------------------------------------------------------------------------
# What CloudEvents 1.0 allows, written out here independently of the implementation

#: An extension attribute name: lowercase ASCII letters and digits, at most 20 of them.
LEGAL_NAME: Final = re.compile(r"[a-z0-9]{1,20}")
#: The fixed-width time we write.
FIXED_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
STRUCTURED: Final = {"content-type": "application/cloudevents+json"}


def is_ce_string(text: str) -> bool:
    """Whether *text* is a CloudEvents String: no control character, surrogate or noncharacter."""
    for char in text:
        cp = ord(char)
        if cp <= 0x1F or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF:
            return False
        if 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE:
            return False
    return True


def ce_text(text: str) -> str:
    """*text* without the characters a CloudEvents String may not hold, and never empty."""
    return "".join(c for c in text if is_ce_string(c)) or "x"


def ce_events(
    data: st.SearchStrategy[Any] | None = None, *, explicit_type: bool = True
) -> st.SearchStrategy[Event]:
    """:func:`strategies.events` whose id, source and type CloudEvents can carry.

    CloudEvents refuses empty values and control characters there, and so does
    to_cloudevent (tested on its own below); headers are left as drawn: any header travels.
    """
    return events(data, explicit_type=explicit_type).map(
        lambda e: attrs.evolve(e, id=ce_text(e.id), source=ce_text(e.source), type=ce_text(e.type))
    )


def binary_events() -> st.SearchStrategy[Event]:
    """Events whose data is binary: base64 text, with the data_base64 header."""
    return st.builds(
        lambda event, blob, content_type: attrs.evolve(
            event,
            data=base64.b64encode(blob).decode(),
            headers={
                **event.headers,
                "data_base64": "true",
                **({} if content_type is None else {"datacontenttype": content_type}),
            },
        ),
        ce_events(data=st.none()),
        # Not UTF-8, as binary data is: the SDK's binary mode reads UTF-8 bodies as text.
        st.binary(max_size=40).map(lambda b: b"\xff" + b),
        st.none() | st.sampled_from(["application/octet-stream", "image/png"]),
    )


def all_events() -> st.SearchStrategy[Event]:
    """Events with JSON data, a typed payload (of its default type) or binary data."""
    return ce_events() | ce_events(data=parcels(), explicit_type=False) | binary_events()


def sdk_event(ce: dict[str, Any]) -> BaseCloudEvent:
    """Our CloudEvent as the SDK reads it from a structured-mode HTTP message."""
    return from_http_event(HTTPMessage(headers=STRUCTURED, body=orjson.dumps(ce)))


def from_sdk(event: BaseCloudEvent) -> dict[str, Any]:
    """An SDK event as the structured-mode JSON object the SDK writes."""
    return dict(orjson.loads(to_structured_event(event).body))


def through_binary_mode(event: BaseCloudEvent) -> BaseCloudEvent:
    """*event* sent and received in the HTTP binding's binary content mode by the SDK."""
    message = to_binary_event(event)
    for name in message.headers:
        assert name == "content-type" or (
            name.startswith("ce-") and LEGAL_NAME.fullmatch(name[3:])
        ), name
    return from_http_event(message)


def assert_same_cloudevent(sdk: BaseCloudEvent, ce: dict[str, Any]) -> None:
    """The SDK's event has exactly the attributes and the data of our CloudEvent *ce*."""
    attributes = dict(sdk.get_attributes())
    expected = {k: v for k, v in ce.items() if k not in ("data", "data_base64")}
    assert parse_time(attributes.pop("time")) == parse_time(expected.pop("time"))
    assert attributes == expected
    if "data_base64" in ce:
        assert sdk.get_data() == base64.b64decode(ce["data_base64"])
    else:
        assert sdk.get_data() == ce.get("data")


def assert_nothing_lost(original: BaseCloudEvent, event: Event) -> None:
    """Written back out, *event* is the SDK event it was read from.

    The mapping may normalise: ``time`` is written at fixed width (compared as an instant),
    a decimal ``sequence`` as 20 digits (compared as a number), and it adds ``subject`` (the
    topic) and, for data with no content type, ``datacontenttype: application/json``.
    """
    back = sdk_event(event.to_cloudevent())
    theirs = dict(original.get_attributes())
    ours = dict(back.get_attributes())
    assert ours.pop("time") == theirs.pop("time")
    if "sequence" in theirs and theirs["sequence"].isdecimal():
        assert int(ours.pop("sequence")) == int(theirs.pop("sequence"))
    if "subject" not in theirs:
        assert ours.pop("subject") == event.topic
    data = original.get_data()
    if "datacontenttype" not in theirs and data is not None and not isinstance(data, bytes):
        assert ours.pop("datacontenttype") == "application/json"
    assert ours == theirs
    assert back.get_data() == original.get_data()


# ---------------------------------------------------------------------------------------------
# Round trips: Event -> CloudEvent -> Event


@settings(max_examples=150, deadline=None)
@given(ce_events())
def test_round_trip(event: Event) -> None:
    """from_cloudevent(to_cloudevent(e)) == e, directly and through JSON text."""
    ce = event.to_cloudevent()
    assert Event.from_cloudevent(ce) == event
    assert Event.from_cloudevent(orjson.loads(orjson.dumps(ce))) == event


@settings(max_examples=50, deadline=None)
@given(ce_events(data=parcels() | st.builds(Ping, n=st.integers(0, 10**6)), explicit_type=False))
def test_round_trip_typed_payload(event: Event) -> None:
    """A typed payload goes out as a JSON object and comes back as an instance of its class."""
    ce = orjson.loads(orjson.dumps(event.to_cloudevent()))
    assert isinstance(ce["data"], dict)
    back = Event.from_cloudevent(ce)
    assert type(back.data) is type(event.data)
    assert back == event


@settings(max_examples=50, deadline=None)
@given(binary_events())
def test_round_trip_binary_data(event: Event) -> None:
    """Data marked data_base64 goes out as data_base64 and comes back the same."""
    ce = event.to_cloudevent()
    assert "data" not in ce
    assert ce["data_base64"] == event.data
    assert ce.get("datacontenttype") == event.headers.get("datacontenttype")
    assert Event.from_cloudevent(orjson.loads(orjson.dumps(ce))) == event


def test_typed_payload_default_type_comes_back_typed() -> None:
    """An event whose type is the payload's registered name round-trips to the same class."""
    event = Event(topic="orders.shipped", data=Parcel(order_id=7, weight=1.5, tags=["x"]))
    ce = event.to_cloudevent()
    assert ce["type"] == "test_cloudevents.parcel"
    assert ce["data"] == {"order_id": 7, "weight": 1.5, "tags": ["x"], "note": None}
    back = Event.from_cloudevent(ce)
    assert isinstance(back.data, Parcel)
    assert back == event


def test_payload_that_does_not_fit_its_type_stays_json() -> None:
    """data that does not structure into the registered class is kept as plain JSON."""
    ce = Event(topic="a", type="test_cloudevents.ping", data={"wrong": 1}).to_cloudevent()
    assert Event.from_cloudevent(ce).data == {"wrong": 1}


# ---------------------------------------------------------------------------------------------
# What to_cloudevent writes


def test_to_cloudevent_shape() -> None:
    """specversion, subject=topic, fixed-width time; extensions only when set."""
    when = datetime(2026, 11, 26, 15, 4, 5, 123456, tzinfo=UTC)
    bare = Event(topic="orders.created", id="id1", source="svc-a", time=when, data=[1])
    assert bare.to_cloudevent() == {
        "specversion": "1.0",
        "id": "id1",
        "source": "svc-a",
        "type": "orders.created",
        "subject": "orders.created",
        "time": "2026-11-26T15:04:05.123456Z",
        "datacontenttype": "application/json",
        "data": [1],
    }
    full = attrs.evolve(
        bare, seq=42, reply_to="_inbox.r1", headers={"traceparent": "00-ab-cd-01", "X-Id": "7"}
    )
    assert full.to_cloudevent() == {
        **bare.to_cloudevent(),
        "sequence": "00000000000000000042",
        "replyto": "_inbox.r1",
        "traceparent": "00-ab-cd-01",
        "rtheaders": "X-Id=7",
    }
    assert attrs.evolve(bare, seq=0).to_cloudevent()["sequence"] == "0" * 20  # 0 is set


def test_to_cloudevent_without_data_has_no_data_and_no_content_type() -> None:
    """An event without data is a CloudEvent without data (not JSON null)."""
    ce = Event(topic="a").to_cloudevent()
    assert "data" not in ce
    assert "datacontenttype" not in ce
    ce = Event(topic="a", headers={"datacontenttype": "text/plain"}).to_cloudevent()
    assert ce["datacontenttype"] == "text/plain"
    assert "data" not in ce


@settings(max_examples=100, deadline=None)
@given(all_events())
def test_to_cloudevent_is_a_valid_cloudevent(event: Event) -> None:
    """Every attribute has a legal name and a CloudEvents String value; no JSON maps."""
    ce = event.to_cloudevent()
    assert ce["specversion"] == "1.0"
    assert ce["subject"] == event.topic
    assert FIXED_TIME.fullmatch(ce["time"])
    assert parse_time(ce["time"]) == event.time
    assert ("sequence" in ce) == (event.seq is not None)
    if event.seq is not None:
        assert re.fullmatch(r"\d{20}", ce["sequence"])
        assert int(ce["sequence"]) == event.seq
    assert ("replyto" in ce) == (event.reply_to is not None)
    for name, value in ce.items():
        if name in ("data", "data_base64"):
            continue
        assert LEGAL_NAME.fullmatch(name), name
        assert isinstance(value, str), (name, value)
        assert value or name not in ("id", "source", "type", "subject", "datacontenttype")
        assert is_ce_string(value), (name, value)
    # The SDK's validating constructor takes it (it raises on any attribute it finds wrong).
    attributes = {k: v for k, v in ce.items() if k not in ("data", "data_base64")}
    attributes["time"] = parse_time(attributes["time"])
    CloudEvent(attributes, ce.get("data"))


@settings(max_examples=100, deadline=None)
@given(ce_events())
def test_headers_are_attributes_or_packed(event: Event) -> None:
    """Each header is an attribute of its name or a pair in rtheaders, read as form data."""
    ce = event.to_cloudevent()
    # The standard library's form decoder reads rtheaders: it is ordinary form data.
    packed = parse_qsl(ce.get("rtheaders", ""), keep_blank_values=True, strict_parsing=True)
    for name, value in event.headers.items():
        if (name, value) in packed:
            assert ce.get(name) != value or name in ("id", "type", "subject")
        else:
            assert ce[name] == value
            assert LEGAL_NAME.fullmatch(name)
    assert len(packed) == len({name for name, _ in packed})


@pytest.mark.parametrize(
    ("name", "value", "own"),
    [
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        ("tracestate", "rojo=00f067aa0ba902b7", True),
        ("error", "handler failed", True),  # REPLY_ERROR_HEADER
        ("a1", "", True),  # an empty value is still a String
        ("x" * 20, "v", True),
        ("x" * 21, "v", False),  # longer than the spec's 20 characters
        ("X-Request-Id", "v", False),  # uppercase and '-'
        ("trace_id", "v", False),
        ("", "v", False),
        ("schlüssel", "v", False),
        ("note", "line\nbreak", False),  # a control character in the value
        ("note", "tab\there", False),
        ("note", "\ufffe", False),  # a noncharacter
        ("note", "snow \N{SNOWMAN} 日本", True),
        ("datacontenttype", "text/plain", True),
        ("datacontenttype", "", False),  # the spec's attribute may not be empty
        ("dataschema", "https://example.com/s.json", True),
        ("sequence", "opaque-1", True),  # another producer's sequence
        ("sequence", "17", False),  # would come back as seq
        *[(name, "v", False) for name in ("id", "source", "type", "subject", "time", "data")],
        *[(name, "v", False) for name in ("specversion", "replyto", "rtheaders")],
    ],
)
def test_header_scheme(name: str, value: str, own: bool) -> None:
    """A header is an attribute of its own when name and value allow; else it is in rtheaders."""
    event = Event(topic="a", id="i", headers={name: value})
    ce = event.to_cloudevent()
    if own:
        assert ce[name] == value
        assert "rtheaders" not in ce
    else:
        assert ce.get(name) != value or name in ("id", "type", "subject")
        assert "rtheaders" in ce
    assert Event.from_cloudevent(orjson.loads(orjson.dumps(ce))) == event


def test_rtheaders_is_form_encoded() -> None:
    """rtheaders is name=value pairs, percent-encoded UTF-8, joined by '&'."""
    event = Event(topic="a", headers={"X-Id": "a b&c=d+e%", "Ключ": "\n", "": "empty"})
    assert event.to_cloudevent()["rtheaders"] == (
        "X-Id=a%20b%26c%3Dd%2Be%25&%D0%9A%D0%BB%D1%8E%D1%87=%0A&=empty"
    )


def test_rtheaders_read_as_form_data() -> None:
    """A '+' is a space, empty pairs are skipped: any form encoder can write rtheaders."""
    ce = {**_minimal(), "rtheaders": "X-A=one+two&&X-B=%2B&X-C="}
    assert Event.from_cloudevent(ce).headers == {"X-A": "one two", "X-B": "+", "X-C": ""}


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC), "2026-11-26T15:04:05.000000Z"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00.000000Z"),
        (datetime(2026, 11, 26, 15, 4, 5, 7), "2026-11-26T15:04:05.000007Z"),  # naive: UTC
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "9999-12-31T23:59:59.999999Z"),
        (
            datetime(2026, 11, 26, 17, 4, 5, 1, tzinfo=timezone(timedelta(hours=2))),
            "2026-11-26T15:04:05.000001Z",
        ),
    ],
)
def test_time_is_fixed_width_utc(when: datetime, text: str) -> None:
    """time always has microseconds and ends in Z, whatever the instant."""
    assert Event(topic="a", time=when).to_cloudevent()["time"] == text


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_sequence_sorts_as_text_as_seq_sorts_as_numbers(a: int, b: int) -> None:
    """The Sequence extension compares sequences as strings: ours order as the seqs do."""
    sa = Event(topic="a", seq=a).to_cloudevent()["sequence"]
    sb = Event(topic="a", seq=b).to_cloudevent()["sequence"]
    assert (sa < sb) == (a < b)
    assert (sa == sb) == (a == b)


BAD_EVENTS = [
    (Event(topic="a", source=""), "non-empty source"),
    (Event(topic="a", id=""), "non-empty id"),
    (Event(topic="a", type=""), "non-empty type"),
    (Event(topic="", type="t"), "non-empty subject"),
    (Event(topic="a", type="bad\ntype"), "U+000A"),
    (Event(topic="a", source="svc\x00"), "U+0000"),
    (Event(topic="a", id="\ud800"), "U+D800"),
    (Event(topic="a", seq=-1), "seq -1"),
    (Event(topic="a", seq=10**20), "seq 1000"),
    (Event(topic="a", data="!!", headers={"data_base64": "true"}), "base64"),
    (Event(topic="a", data=None, headers={"data_base64": "true"}), "base64"),
    (Event(topic="a", data={"a": 1}, headers={"data_base64": "true"}), "base64"),
    (Event(topic="a", data="AA==", headers={"data_base64": "yes"}), "'yes'"),
]


@pytest.mark.parametrize(("event", "fragment"), BAD_EVENTS)
def test_to_cloudevent_refuses_what_cloudevents_cannot_carry(event: Event, fragment: str) -> None:
    """An event that would make an invalid CloudEvent is a ValueError saying why."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        event.to_cloudevent()


# ---------------------------------------------------------------------------------------------
# The SDK accepts what we write


@settings(max_examples=100, deadline=None)
@given(all_events())
def test_sdk_reads_ours_in_structured_mode(event: Event) -> None:
    """The SDK reads our JSON with the same attributes and data, and writes it back unchanged."""
    ce = orjson.loads(orjson.dumps(event.to_cloudevent()))
    sdk = sdk_event(ce)
    assert_same_cloudevent(sdk, ce)
    assert Event.from_cloudevent(from_sdk(sdk)) == event
    # The compatibility layer (cloudevents.v1) too; it reads the data "" as no data.
    assume(event.data != "")
    legacy = v1_http.from_http(STRUCTURED, orjson.dumps(ce))
    _, body = v1_conversion.to_structured(legacy)
    assert Event.from_cloudevent(orjson.loads(body)) == event
    assert Event.from_cloudevent(v1_conversion.to_dict(legacy)) == event


def binary_mode_events() -> st.SearchStrategy[Event]:
    """Events whose data the SDK's binary mode carries as it is: JSON objects, none, binary.

    The SDK writes only a dict as a JSON body (a list becomes its Python repr) and reads a
    text body that parses as JSON as JSON (the string "1" comes back as the number 1).
    """
    objects = st.dictionaries(st.text(max_size=8), json_values(max_leaves=8), max_size=4)
    return ce_events(data=st.none() | objects) | binary_events()


@settings(max_examples=100, deadline=None)
@given(binary_mode_events())
def test_sdk_reads_ours_in_binary_mode(event: Event) -> None:
    """Through the SDK's binary mode (ce- headers, data as the body) nothing changes."""
    ce = event.to_cloudevent()
    received = through_binary_mode(sdk_event(ce))
    assert_same_cloudevent(received, ce)
    assert Event.from_cloudevent(from_sdk(received)) == event
    assert Event.from_cloudevent({**received.get_attributes(), "data": received.get_data()}) == (
        event
    )
    # The compatibility layer (cloudevents.v1) too.
    headers, body = v1_conversion.to_binary(v1_http.from_dict(ce))
    assert "ce-headers" not in headers
    assert Event.from_cloudevent(v1_conversion.to_dict(v1_http.from_http(headers, body))) == event


def test_issue_8_binary_mode_writes_no_headers_map() -> None:
    """Issue 8: the SDK's binary mode wrote ``ce-headers: {'trace': …}``, which we then refused."""
    event = Event(topic="orders.created", data={"n": 1}, headers={"trace": "t-1", "X-Span": "s"})
    ce = event.to_cloudevent()
    headers, body = v1_conversion.to_binary(v1_http.from_dict(ce))
    assert headers["ce-trace"] == "t-1"
    assert headers["ce-rtheaders"] == "X-Span=s"
    assert "ce-headers" not in headers
    assert Event.from_cloudevent(v1_conversion.to_dict(v1_http.from_http(headers, body))) == event
    message = to_binary_event(sdk_event(ce))
    assert message.headers["ce-trace"] == "t-1"
    assert Event.from_cloudevent(from_sdk(from_http_event(message))) == event


# ---------------------------------------------------------------------------------------------
# We accept what the SDK writes, with nothing lost

MODES: Final = ["structured", "binary"]


def received(event: BaseCloudEvent, mode: str) -> Event:
    """*event*, made by the SDK, sent in *mode* and read by from_cloudevent."""
    if mode == "binary":
        event = through_binary_mode(event)
        # As the SDK holds it: time a datetime, binary data as bytes.
        return Event.from_cloudevent({**event.get_attributes(), "data": event.get_data()})
    return Event.from_cloudevent(from_sdk(event))


WHEN: Final = datetime(2026, 11, 26, 15, 4, 5, 123456, tzinfo=UTC)


def made(data: dict[str, Any] | str | bytes | None = None, **attributes: Any) -> CloudEvent:
    """An event made by the SDK, with a fixed id and time."""
    return CloudEvent({"id": "e-1", "time": WHEN, **attributes}, data)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_event_with_extensions(mode: str) -> None:
    """Unknown extensions (trace context, vendor ones) become headers and are written back."""
    original = made(
        {"n": 1},
        type="orders.created",
        source="/svc/orders",
        subject="orders.eu.created",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="rojo=00f067aa0ba902b7",
        comexampleext="v",
    )
    event = received(original, mode)
    assert event.topic == "orders.eu.created"
    assert event.type == "orders.created"
    assert event.source == "/svc/orders"
    assert event.id == "e-1"
    assert event.time == WHEN
    assert event.data == {"n": 1}
    assert event.headers == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "rojo=00f067aa0ba902b7",
        "comexampleext": "v",
    }
    assert_nothing_lost(original, event)


def test_sdk_event_with_boolean_and_integer_extensions() -> None:
    """Boolean and Integer extensions are kept in their canonical string form."""
    original = made(type="a", source="s", flag=True, off=False, count=5)
    event = received(original, "structured")
    assert event.headers == {"flag": "true", "off": "false", "count": "5"}
    assert event.to_cloudevent()["count"] == "5"


@pytest.mark.parametrize("mode", MODES)
def test_sdk_event_without_subject_takes_its_type_as_topic(mode: str) -> None:
    """Without a subject, a type that is a valid topic is the topic."""
    original = made({"n": 1}, type="com.example.object.deleted", source="s")
    event = received(original, mode)
    assert event.topic == "com.example.object.deleted"
    assert_nothing_lost(original, event)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("type_", ["com.example/deleted", "order deleted", "$sys.x", "a..b"])
def test_sdk_event_without_subject_or_topic_like_type(mode: str, type_: str) -> None:
    """Without a subject, and with a type that is no (unreserved) topic: the default topic."""
    original = made({"n": 1}, type=type_, source="s")
    event = received(original, mode)
    assert event.topic == "cloudevents"
    assert event.type == type_
    assert_nothing_lost(original, event)
    ce = from_sdk(original)
    assert Event.from_cloudevent(ce, default_topic="imports.other").topic == "imports.other"
    with pytest.raises(InvalidTopic, match=re.escape("'imports.*'")):
        Event.from_cloudevent(ce, default_topic="imports.*")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("subject", ["a b", "a..b", "orders.*", "blob/photo.jpg"])
def test_sdk_event_with_a_subject_that_is_no_topic(mode: str, subject: str) -> None:
    """A subject that is not a valid topic is an InvalidTopic naming it (not a guess)."""
    original = made({"n": 1}, type="a", source="s", subject=subject)
    with pytest.raises(InvalidTopic, match=re.escape(repr(subject))) as caught:
        received(original, mode)
    assert "subject" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png", None])
def test_sdk_event_with_binary_data(mode: str, content_type: str | None) -> None:
    """Binary data (data_base64) becomes base64 text, marked, and goes out as it came in."""
    blob = bytes(range(255, -1, -1))
    extra = {} if content_type is None else {"datacontenttype": content_type}
    original = made(blob, type="files.stored", source="s", **extra)
    event = received(original, mode)
    assert base64.b64decode(event.data) == blob
    assert event.headers == {"data_base64": "true", **extra}
    assert event.to_cloudevent()["data_base64"] == event.data
    if content_type is not None or mode == "structured":
        assert_nothing_lost(original, event)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        ("text/plain", "hello, world"),
        ("text/plain; charset=utf-8", "snow \N{SNOWMAN}"),
        ("application/xml", "<order id='1'/>"),
        ("text/csv", "a,b\n1,2\n"),
    ],
)
def test_sdk_event_with_text_data(mode: str, content_type: str, text: str) -> None:
    """Text of a non-JSON content type stays text, and keeps its datacontenttype."""
    original = made(text, type="a", source="s", datacontenttype=content_type)
    event = received(original, mode)
    assert event.data == text
    assert event.headers == {"datacontenttype": content_type}
    assert event.to_cloudevent()["datacontenttype"] == content_type
    assert_nothing_lost(original, event)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_event_with_json_content_types(mode: str) -> None:
    """application/json (the default) is not kept; any other JSON content type is."""
    plain = made({"n": 1}, type="a", source="s", datacontenttype="application/json")
    event = received(plain, mode)
    assert event.headers == {}
    assert_nothing_lost(plain, event)
    other = made({"n": 1}, type="a", source="s", datacontenttype="application/vnd.x+json")
    event = received(other, mode)
    assert event.data == {"n": 1}
    assert event.headers == {"datacontenttype": "application/vnd.x+json"}
    assert_nothing_lost(other, event)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_event_with_dataschema_and_no_data(mode: str) -> None:
    """dataschema is kept as a header; an event without data has data None."""
    original = made(type="a", source="s", dataschema="https://example.com/a.json")
    event = received(original, mode)
    assert event.data is None
    assert event.headers == {"dataschema": "https://example.com/a.json"}
    assert_nothing_lost(original, event)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("sequence", "seq"),
    [("00000000000000000042", 42), ("42", 42), ("0", 0), (str(2**64 - 1), 2**64 - 1)],
)
def test_sdk_event_with_decimal_sequence(mode: str, sequence: str, seq: int) -> None:
    """A decimal sequence (padded or not) is the event's seq."""
    original = made(type="a", source="s", sequence=sequence)
    event = received(original, mode)
    assert event.seq == seq
    assert event.headers == {}
    assert event.to_cloudevent()["sequence"] == f"{seq:020d}"
    assert_nothing_lost(original, event)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sequence", ["a-17", "-5", "1e3", str(10**20)])
def test_sdk_event_with_another_producers_sequence(mode: str, sequence: str) -> None:
    """A sequence that cannot be a seq is kept as it is and written back as the sequence."""
    original = made(type="a", source="s", sequence=sequence, sequencetype="Integer")
    event = received(original, mode)
    assert event.seq is None
    assert event.headers == {"sequence": sequence, "sequencetype": "Integer"}
    assert event.to_cloudevent()["sequence"] == sequence
    assert_nothing_lost(original, event)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_event_with_our_extensions(mode: str) -> None:
    """replyto and rtheaders written by anyone are read as ours."""
    original = made(type="a", source="s", replyto="_inbox.r1", rtheaders="X-Id=7")
    event = received(original, mode)
    assert event.reply_to == "_inbox.r1"
    assert event.headers == {"X-Id": "7"}
    assert_nothing_lost(original, event)


@pytest.mark.parametrize("mode", MODES)
def test_sdk_event_time_with_offset(mode: str) -> None:
    """A time at another offset is the same instant, in UTC."""
    when = datetime(2026, 11, 26, 17, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    event = received(CloudEvent({"type": "a", "source": "s", "time": when}), mode)
    assert event.time == when
    assert event.time.tzinfo is UTC


#: The attribute names the mapping reads itself (and the old headers map).
MAPPED_NAMES: Final = {"id", "source", "type", "subject", "time", "specversion", "data"} | {
    "datacontenttype",
    "dataschema",
    "sequence",
    "replyto",
    "rtheaders",
    "headers",
}


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9]{0,19}", fullmatch=True).filter(
            lambda name: name not in MAPPED_NAMES
        ),
        st.text(min_size=1, max_size=10).filter(is_ce_string),
        max_size=5,
    ),
    st.sampled_from(MODES),
)
def test_sdk_events_with_any_extensions(extensions: dict[str, str], mode: str) -> None:
    """Any set of string extensions survives the trip into an Event and back out."""
    original = made({"k": 1}, type="a.b", source="s", **extensions)
    event = received(original, mode)
    assert event.headers == extensions
    assert_nothing_lost(original, event)


# ---------------------------------------------------------------------------------------------
# from_cloudevent: optional attributes, old forms, errors


def _minimal() -> dict[str, Any]:
    return {"specversion": "1.0", "id": "i", "source": "s", "type": "t"}


def test_from_cloudevent_optional_attributes() -> None:
    """time, data, subject, sequence, replyto and extensions are optional."""
    event = Event.from_cloudevent({**_minimal(), "subject": "a"})
    assert event.topic == "a"
    assert event.time.utcoffset() == timedelta(0)
    assert event.data is None
    assert event.headers == {}
    assert event.seq is None
    assert event.reply_to is None
    assert Event.from_cloudevent(_minimal()).topic == "t"  # the type, a valid topic


def test_from_cloudevent_null_means_absent() -> None:
    """An attribute whose value is null is absent (the JSON format's rule)."""
    ce = {**_minimal(), "subject": None, "time": None, "data": None, "sequence": None}
    event = Event.from_cloudevent({**ce, "replyto": None, "ext": None, "data_base64": None})
    assert (event.topic, event.data, event.seq, event.reply_to, event.headers) == (
        "t",
        None,
        None,
        None,
        {},
    )


def test_from_cloudevent_reads_what_older_versions_wrote() -> None:
    """An integer sequence and a JSON map of headers, as written before, are still read."""
    ce = {**_minimal(), "subject": "a", "sequence": 12, "headers": {"k": "v", "X-Y": "z"}}
    event = Event.from_cloudevent(ce)
    assert event.seq == 12
    assert event.headers == {"k": "v", "X-Y": "z"}
    assert Event.from_cloudevent(event.to_cloudevent()) == event


def test_from_cloudevent_time_forms() -> None:
    """RFC 3339 times: Z or an offset, lowercase t and z, nanoseconds; naive taken as UTC."""
    expected = datetime(2026, 11, 26, 15, 4, 5, 500000, tzinfo=UTC)
    for text in [
        "2026-11-26T15:04:05.5Z",
        "2026-11-26t15:04:05.5z",
        "2026-11-26T17:04:05.500000+02:00",
        "2026-11-26T15:04:05.500000001Z",
        "2026-11-26T15:04:05.5",
    ]:
        when = Event.from_cloudevent({**_minimal(), "time": text}).time
        assert when == expected, text
        assert when.tzinfo is UTC


def _with(key: str, value: object) -> dict[str, Any]:
    return {**_minimal(), "subject": "a.b", key: value}


def _without(key: str) -> dict[str, Any]:
    ce = {**_minimal(), "subject": "a.b"}
    del ce[key]
    return ce


BAD_CLOUDEVENTS = [
    (_without("specversion"), "specversion"),
    (_with("specversion", "0.3"), "specversion"),
    (_with("specversion", 1.0), "specversion"),
    (_with("specversion", None), "specversion"),
    *[(_without(k), repr(k)) for k in ("id", "source", "type")],
    *[(_with(k, 1), repr(k)) for k in ("id", "source", "type", "subject")],
    *[(_with(k, None), repr(k)) for k in ("id", "source", "type")],
    *[(_with(k, ""), repr(k)) for k in ("id", "source", "type")],
    (_with("time", 5), "'time'"),
    (_with("time", "not a time"), "isoformat"),
    (_with("time", "2026-13-01T00:00:00"), "month"),
    (_with("time", "0001-01-01T00:00:00+01:00"), "'time'"),  # before the first UTC instant
    (_with("sequence", [1]), "'sequence'"),
    (_with("sequence", 1.5), "'sequence'"),
    (_with("sequence", True), "'sequence'"),
    (_with("sequence", -1), "'sequence'"),
    (_with("headers", {"a": 1}), "'headers'"),
    (_with("headers", {1: "a"}), "'headers'"),
    (_with("replyto", 5), "'replyto'"),
    (_with("replyto", "a b"), "'a b'"),
    (_with("datacontenttype", 5), "'datacontenttype'"),
    (_with("ext", 1.5), "'ext'"),
    (_with("ext", {"a": "b"}), "'ext'"),
    (_with("ext", [1]), "'ext'"),
    (_with("rtheaders", 5), "'rtheaders'"),
    (_with("rtheaders", "novalue"), "'novalue' has no '='"),
    (_with("rtheaders", "a=%FF"), "not percent-encoded UTF-8"),
    (_with("rtheaders", "data_base64=true"), "'data_base64'"),
    ({**_with("rtheaders", "ext=1"), "ext": "2"}, "'ext' is given twice"),
    ({**_with("headers", {"ext": "1"}), "ext": "2"}, "'ext' is given twice"),
    ({**_with("data", 1), "data_base64": "AA=="}, "not both"),
    (_with("data_base64", "!!"), "'data_base64'"),
    (_with("data_base64", 5), "'data_base64'"),
    (_with("subject", "a.*"), "wildcard"),
    (_with("subject", ""), "empty"),
    (_with("subject", "a..b"), "'a..b'"),
    ("not a mapping", "mapping"),
]


@pytest.mark.parametrize(("ce", "fragment"), BAD_CLOUDEVENTS)
def test_from_cloudevent_rejects_bad_attributes(ce: Any, fragment: str) -> None:
    """A missing, empty or ill-typed attribute, or another specversion, is a ValueError."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Event.from_cloudevent(ce)
