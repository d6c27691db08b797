"""Events as NATS messages (trio_realtime._nats_wire): the CloudEvents NATS binding.

The binding's binary content mode puts each attribute in a header ``ce-<name>``, its value
percent-encoded as the HTTP binding's binary mode does; only ``datacontenttype`` differs (a
header ``ce-datacontenttype`` rather than ``Content-Type``). So the official CloudEvents SDK's
HTTP binding, with that one header renamed, is the oracle: it must read what we write as the
CloudEvent :meth:`Event.to_cloudevent` makes, and we must read what it writes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event, to_binary_event
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import events, json_values, topics

from trio_realtime import Event
from trio_realtime._event import parse_time
from trio_realtime._nats_wire import PLAIN_SOURCE, decode, encode, reply_topic, subject_of

#: What NATS carries as a header name (a token without ':') and value (printable ASCII).
HEADER_NAME: Final = re.compile(r"[!-9;-~]+")
HEADER_VALUE: Final = re.compile(r"[ -~]*")


def as_http(headers: dict[str, str], topic: str) -> dict[str, str]:
    """Our NATS headers as the HTTP binding's binary mode has them (and the topic as the
    subject, which the NATS subject carries)."""
    http = {("content-type" if k == "ce-datacontenttype" else k): v for k, v in headers.items()}
    http["ce-subject"] = topic
    return http


def as_nats(headers: dict[str, str]) -> dict[str, str]:
    """The SDK's HTTP binary-mode headers as NATS headers of the binding."""
    return {
        ("ce-datacontenttype" if k.lower() == "content-type" else k.lower()): v
        for k, v in headers.items()
        if k.lower() != "ce-subject"
    }


@given(events())
def test_an_event_comes_back_as_it_went(event: Event) -> None:
    """Any event survives encode then decode unchanged, in headers NATS can carry."""
    headers, body = encode(event)
    for name, value in headers.items():
        assert HEADER_NAME.fullmatch(name), name
        assert HEADER_VALUE.fullmatch(value), (name, value)
        assert value == value.strip(), (name, value)
    assert decode(event.topic, headers, body, event.reply_to) == event


@given(events())
def test_the_sdk_reads_what_we_write(event: Event) -> None:
    """The SDK reads our headers and payload as the CloudEvent to_cloudevent makes."""
    try:
        ce = event.to_cloudevent()
    except ValueError:
        assume(False)  # (what a CloudEvent cannot carry: checked in test_cloudevents)
        raise
    headers, body = encode(event)
    sdk = from_http_event(HTTPMessage(headers=as_http(headers, event.topic), body=body))
    attributes = dict(sdk.get_attributes())
    expected = {k: v for k, v in ce.items() if k not in ("data", "data_base64", "replyto")}
    assert parse_time(attributes.pop("time")) == parse_time(expected.pop("time"))
    if event.data is None:
        expected.pop("datacontenttype", None)
    assert attributes == expected
    if "data_base64" in ce:
        assert sdk.get_data() == body
    elif event.data is not None:
        assert orjson.loads(body) == ce["data"]


@given(events(st.dictionaries(st.text(max_size=8), json_values(max_leaves=5), max_size=3)))
def test_we_read_what_the_sdk_writes(event: Event) -> None:
    """What the SDK writes in binary mode (as NATS headers) reads as the event it carries.

    (Objects only: the SDK writes other JSON data in binary mode as Python's str() of it.)
    """
    try:
        ce = event.to_cloudevent()
    except ValueError:
        assume(False)
        raise
    sdk = from_http_event(
        HTTPMessage(headers={"content-type": "application/cloudevents+json"}, body=orjson.dumps(ce))
    )
    message = to_binary_event(sdk)
    headers = as_nats(dict(message.headers))
    got = decode(event.topic, headers, message.body, event.reply_to)
    assert got == Event.from_cloudevent(ce)


@given(json_values())
def test_a_plain_json_payload_is_the_data(data: Any) -> None:
    """A message without ce- headers (nats pub) is an event whose data is its JSON."""
    event = decode("orders.new", {}, orjson.dumps(data))
    assert event.data == data
    assert event.topic == event.type == "orders.new"
    assert event.source == PLAIN_SOURCE
    assert event.headers == {}
    assert event.seq is None


def test_a_plain_message_gets_what_it_lacks() -> None:
    """Text that is not JSON is a string, bytes that are not UTF-8 base64, an empty payload
    no data; the message's headers are the event's, but NATS's own."""
    before = datetime.now(UTC)
    text = decode("a.b", {"X-Trace": "t1", "Nats-Msg-Id": "m1"}, b"hello world")
    assert text.data == "hello world"
    assert text.headers == {"X-Trace": "t1"}
    assert text.time >= before
    assert text.id != decode("a.b", {}, b"").id
    binary = decode("a.b", {}, b"\xff\x00")
    assert binary.data == "/wA="
    assert binary.headers == {"data_base64": "true"}
    assert decode("a.b", {}, b"").data is None
    assert decode("a.b", {}, b"42").data == 42


def test_a_structured_cloudevent_is_read_whole() -> None:
    """A message in the structured mode (Content-Type: application/cloudevents+json)."""
    ce = Event(topic="x.y", data={"n": 1}, source="s", type="t", headers={"k": "v"}).to_cloudevent()
    event = decode(
        "a.b", {"Content-Type": "application/cloudevents+json"}, orjson.dumps(ce), "_INBOX.r.1"
    )
    assert event.topic == "a.b"
    assert (event.id, event.source, event.type, event.data) == (ce["id"], "s", "t", {"n": 1})
    assert event.headers == {"k": "v"}
    assert event.reply_to == "_INBOX.r.1"


def test_header_names_and_quoting_are_read_leniently() -> None:
    """Header names in any case, values quoted or needlessly percent-encoded."""
    event = decode(
        "a.b",
        {
            "CE-SpecVersion": "1.0",
            "Ce-Id": '"id%2D1"',
            "ce-source": "%73rc",
            "ce-type": "t%C3%A9",
            "ce-time": "2026-01-02t03:04:05.5z",
            "ce-custom": "a%20b",
        },
        b'"x"',
    )
    assert (event.id, event.source, event.type) == ("id-1", "src", "té")
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert event.headers == {"custom": "a b"}
    assert event.data == "x"


@pytest.mark.parametrize(
    ("headers", "body", "fragment"),
    [
        ({"ce-specversion": "0.3"}, b"", "CloudEvents 1.0"),
        ({"ce-specversion": "1.0", "ce-id": "%C0%A0"}, b"", "UTF-8"),
        ({"ce-specversion": "1.0", "ce-time": "yesterday"}, b"", "RFC 3339"),
        ({"ce-specversion": "1.0", "ce-datacontenttype": "application/json"}, b"{", "not JSON"),
        ({"ce-specversion": "1.0", "ce-rtheaders": "novalue"}, b"", "no '='"),
        ({"content-type": "application/cloudevents+json"}, b"[1]", "JSON object"),
        ({"content-type": "application/cloudevents+json"}, b"{}", "specversion"),
    ],
)
def test_a_broken_event_is_refused(headers: dict[str, str], body: bytes, fragment: str) -> None:
    """A message that says it is a CloudEvent but is not a valid one: ValueError saying why."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        decode("a.b", headers, body)


def test_binary_data_travels_as_bytes() -> None:
    """An event with base64 data (data_base64: true) travels as the raw bytes."""
    event = Event(
        topic="a.b", data="/wA=", headers={"data_base64": "true", "datacontenttype": "image/png"}
    )
    headers, body = encode(event)
    assert body == b"\xff\x00"
    assert headers["ce-datacontenttype"] == "image/png"
    assert decode("a.b", headers, body) == event


@given(topics())
def test_subjects_and_reply_topics(topic: str) -> None:
    """A topic travels under the prefix, an inbox as it is; a reply subject maps back."""
    assert subject_of("tr.", topic) == "tr." + topic
    assert reply_topic("tr.", "tr." + topic) == topic
    assert subject_of("tr.", "_INBOX.abc.1") == "_INBOX.abc.1"
    assert reply_topic("tr.", "_INBOX.abc.1") == "_INBOX.abc.1"
    assert reply_topic("tr.", "other.x") is None
    assert reply_topic("tr.", "") is None
    assert reply_topic("tr.", "tr.a..b") is None
