"""The frame classes, codes and constants of trio_realtime.protocol."""

from __future__ import annotations

import attrs
import pytest

from trio_realtime import Event, RemoteProtocolError
from trio_realtime.protocol import (
    CLIENT_FRAME_TYPES,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG,
    ERROR_CODES,
    FRAME_TYPES,
    PROTOCOL_VERSION,
    SERVER_FRAME_TYPES,
    Ack,
    Cancel,
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
    close_code_for,
)

WIRE_TYPES = {
    "hello": Hello,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "publish": Publish,
    "history": History,
    "refresh": Refresh,
    "cancel": Cancel,
    "ping": Ping,
    "pong": Pong,
    "welcome": Welcome,
    "event": EventFrame,
    "subscribed": Subscribed,
    "unsubscribed": Unsubscribed,
    "ack": Ack,
    "gap": Gap,
    "error": Error,
    "history_result": HistoryResult,
    "refreshed": Refreshed,
}


def test_frame_types_map_wire_names_to_classes() -> None:
    """FRAME_TYPES maps every wire type string to its class, and each class's TYPE back."""
    assert dict(FRAME_TYPES) == WIRE_TYPES
    for name, cls in FRAME_TYPES.items():
        assert name == cls.TYPE


def test_directions_cover_every_frame() -> None:
    """Every frame is sent by the client or the broker; only ping, pong and cancel by both."""
    assert set(FRAME_TYPES.values()) == CLIENT_FRAME_TYPES | SERVER_FRAME_TYPES
    assert {Ping, Pong, Cancel} == CLIENT_FRAME_TYPES & SERVER_FRAME_TYPES


EVENT = Event(topic="orders.created", data={"id": 1})
SAMPLES = [
    Hello(),
    Subscribe(id=1, pattern="orders.>"),
    Unsubscribe(id=1),
    Publish(event=EVENT),
    History(ref=2, pattern="orders.>"),
    Ping(),
    Pong(),
    Welcome(session="s", broker="b", heartbeat=30.0),
    EventFrame(subs=(1,), event=EVENT),
    Subscribed(id=1),
    Unsubscribed(id=1),
    Ack(ref=2, id="x", seq=None),
    Gap(sub=1, missed=2),
    Error(code="internal", message="m"),
    HistoryResult(ref=2, events=(EVENT,)),
    Refresh(ref=3, token="t"),
    Refreshed(ref=3, user="u"),
    Cancel(id="x", topic="orders.get", reply_to="_inbox.a.1"),
]


def test_samples_cover_every_frame_type() -> None:
    """The samples below hold one frame of every type."""
    assert {type(frame) for frame in SAMPLES} == set(FRAME_TYPES.values())


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda frame: frame.TYPE)
def test_frames_are_frozen_and_keyword_only(frame: Frame) -> None:
    """Every frame class is a frozen attrs class whose fields are keyword-only."""
    cls = type(frame)
    assert attrs.has(cls)
    for field in attrs.fields(cls):
        assert field.kw_only, field.name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        frame.extra = 1  # type: ignore[union-attr]
    for field in attrs.fields(cls):
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(frame, field.name, None)


def test_frame_defaults() -> None:
    """Optional fields default as the protocol says (protocol 1, nulls, retain false, limit)."""
    assert Hello() == Hello(protocol=PROTOCOL_VERSION, token=None, client=None)
    assert Subscribe(id=1, pattern="a").group is None
    assert History(ref=1, pattern="a").limit == 100
    assert Welcome(session="s", broker="b", heartbeat=1.0).epoch is None
    assert Error(code="internal", message="m").ref is None
    assert Ack(ref=1, id="x").seq is None


def test_error_codes_are_the_protocol_list() -> None:
    """ERROR_CODES holds the twelve codes of protocol version 1 and the extensions ``limit``,
    ``no_store``, ``duplicate_id``, ``store_failed`` and ``auth_expired``."""
    assert {
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
        "limit",
        "no_store",
        "duplicate_id",
        "store_failed",
        "auth_expired",
    } == ERROR_CODES


def test_close_codes() -> None:
    """The close codes have the values of the protocol."""
    assert (CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_INTERNAL) == (
        1000,
        1001,
        1008,
        1009,
        1011,
    )
    assert (CLOSE_PROTOCOL, CLOSE_SLOW_CONSUMER) == (4000, 4001)


@pytest.mark.parametrize(
    ("code", "close"),
    [
        ("protocol", 4000),
        ("unsupported_protocol", 4000),
        ("bad_frame", 4000),
        ("auth_failed", 1008),
        ("forbidden", 1008),
        ("too_large", 1009),
        ("internal", 1011),
        ("slow_consumer", 4001),
    ],
)
def test_close_code_for(code: str, close: int) -> None:
    """close_code_for picks the close code that goes with a fatal error code."""
    assert close_code_for(code) == close


def test_error_from_exception_carries_ref_code_and_message() -> None:
    """Error.from_exception reports a RemoteProtocolError's ref, code and message."""
    exc = RemoteProtocolError("field 'id' is required", code="bad_frame", ref=7)
    assert Error.from_exception(exc) == Error(
        ref=7, code="bad_frame", message="field 'id' is required"
    )
    assert Error.from_exception(RemoteProtocolError("x")).ref is None
