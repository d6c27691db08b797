"""The ``cancel`` frame (an extension): its wire form, its checks, and both directions.

A client sends it for a request it gave up on; a broker sends it to the client that was
delivered that request. Two sans-IO connections, no network.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_realtime import Event
from trio_realtime.protocol import (
    BAD_FRAME,
    CLIENT_FRAME_TYPES,
    SERVER_FRAME_TYPES,
    Cancel,
    Connection,
    ConnectionState,
    FrameError,
    Hello,
    Publish,
    Role,
    Welcome,
    decode,
    encode,
)

CANCEL = Cancel(id="0192f0a1b2c3", topic="orders.quote", reply_to="_inbox.4f0c.7")
WIRE = {
    "type": "cancel",
    "id": "0192f0a1b2c3",
    "topic": "orders.quote",
    "reply_to": "_inbox.4f0c.7",
}


def open_pair() -> tuple[Connection[Any, Any], Connection[Any, Any]]:
    client: Connection[Any, Any] = Connection(Role.CLIENT)
    server: Connection[Any, Any] = Connection(Role.SERVER)
    server.receive_text(client.send(Hello()))
    assert list(server.frames()) == [Hello()]
    client.receive_text(server.send(Welcome(session="s", broker="b", heartbeat=30.0)))
    assert [type(frame) for frame in client.frames()] == [Welcome]
    return client, server


def test_the_wire_form_has_the_three_fields() -> None:
    """``cancel`` is ``{type, id, topic, reply_to}``, all strings, and decodes back."""
    assert orjson.loads(encode(CANCEL)) == WIRE
    assert decode(orjson.dumps(WIRE)) == [CANCEL]


def test_it_travels_both_ways() -> None:
    """A client sends it to the broker, and the broker to a client: like ping, it is a frame
    of both directions, in the open state."""
    assert Cancel in CLIENT_FRAME_TYPES
    assert Cancel in SERVER_FRAME_TYPES
    client, server = open_pair()
    server.receive_text(client.send(CANCEL))
    assert list(server.frames()) == [CANCEL]
    client.receive_text(server.send([CANCEL, CANCEL]))
    assert list(client.frames()) == [CANCEL, CANCEL]
    assert client.state is server.state is ConnectionState.OPEN


def test_a_client_may_pipeline_it_before_welcome() -> None:
    """Sent after hello, before the welcome came (as any client frame), it is handled once
    the broker answered hello."""
    client: Connection[Any, Any] = Connection(Role.CLIENT)
    server: Connection[Any, Any] = Connection(Role.SERVER)
    server.receive_text(client.send(Hello()))
    server.receive_text(client.send(CANCEL))
    assert list(server.frames()) == [Hello()]
    server.send(Welcome(session="s", broker="b", heartbeat=30.0))
    assert list(server.frames()) == [CANCEL]


def test_before_hello_it_breaks_the_protocol() -> None:
    """As any frame but hello, a cancel first is fatal."""
    server: Connection[Any, Any] = Connection(Role.SERVER)
    server.receive_text(encode(CANCEL))
    [error] = list(server.frames())
    assert isinstance(error, FrameError)
    assert error.fatal
    assert server.state is ConnectionState.ERROR


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({**WIRE, "id": 7}, "id"),
        ({**WIRE, "topic": None}, "topic"),
        ({**WIRE, "reply_to": ["_inbox.a.1"]}, "reply_to"),
        ({"type": "cancel", "id": "x", "topic": "a.b"}, "reply_to"),
    ],
)
def test_a_bad_field_is_bad_frame_and_not_fatal(frame: dict[str, Any], field: str) -> None:
    """A missing or mistyped field: ``bad_frame`` naming it (and the integer ``id``, if the
    frame had one, as its ``ref``); the connection stays open."""
    client, server = open_pair()
    server.receive_text(orjson.dumps(frame).decode())
    [error] = list(server.frames())
    assert isinstance(error, FrameError)
    assert (error.code, error.fatal) == (BAD_FRAME, False)
    assert f"'{field}'" in error.message
    assert error.ref == (7 if frame["id"] == 7 else None)
    assert server.state is ConnectionState.OPEN
    server.receive_text(client.send(CANCEL))
    assert list(server.frames()) == [CANCEL]


@given(
    st.fixed_dictionaries(
        {"type": st.just("cancel")},
        optional={
            "id": st.one_of(st.text(), st.integers(), st.none()),
            "topic": st.one_of(st.text(), st.integers(), st.none()),
            "reply_to": st.one_of(st.text(), st.booleans(), st.none()),
            "ref": st.integers(),
        },
    )
)
def test_any_cancel_object_decodes_or_is_refused(frame: dict[str, Any]) -> None:
    """Whatever a peer puts in a cancel, the broker's side gets a Cancel of three strings or
    a non-fatal error, never an exception, and stays open."""
    _, server = open_pair()
    server.receive_text(json.dumps(frame))  # (integers of any size, as JSON allows)
    [item] = list(server.frames())
    fields = ("id", "topic", "reply_to")
    in_range = all(
        -(2**63) <= value < 2**64 for value in frame.values() if type(value) is int
    )  # past i64 and u64 the whole message is refused: the docs say to send such a number as text
    if in_range and all(type(frame.get(name)) is str for name in fields):
        assert item == Cancel(id=frame["id"], topic=frame["topic"], reply_to=frame["reply_to"])
    else:
        assert isinstance(item, FrameError)
        assert (item.code, item.fatal) == (BAD_FRAME, False)
    assert server.state is ConnectionState.OPEN


def test_a_cancel_does_not_take_a_ref() -> None:
    """It expects no answer: sending it leaves no ref open, and a publish may follow with
    any ref."""
    client, server = open_pair()
    request = Event(topic="orders.quote", reply_to="_inbox.4f0c.8")
    text = client.send([CANCEL, Publish(event=request, ref=1)])
    server.receive_text(text)
    assert [type(frame) for frame in server.frames()] == [Cancel, Publish]
    assert client.pending_refs == frozenset({1})
