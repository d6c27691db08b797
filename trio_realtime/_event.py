"""The event envelope, event ids, typed payloads and the JSON converter.

An :class:`Event` is what travels on a topic. Its ``data`` is a JSON-compatible value, or an
instance of an attrs class registered with :func:`event_type` (a *typed payload*), which the
converter turns into JSON and back.
"""

from __future__ import annotations

import itertools
import os
import time as _time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar, cast

import attrs
import orjson
from cattrs.preconf.orjson import make_converter

from ._topics import validate_topic

__all__ = [
    "Event",
    "converter",
    "event_type",
    "new_event_id",
    "registered_type",
    "type_for_name",
]

#: The header a reply carries when the responder's handler failed; its value is the message.
REPLY_ERROR_HEADER: Final = "error"

#: The cattrs converter that (un)structures typed payloads; register hooks on it for field
#: types that need them.
converter: Final = make_converter()

C = TypeVar("C", bound=type)

# ---------------------------------------------------------------------------------------------
# Event ids: <12 hex digits of ms since the epoch><10 hex digits of a counter><16 hex digits of
# randomness>. Within a process they sort strictly in creation order; across processes, by
# millisecond. The 64 random bits make an id unguessable, so that no peer can claim the id of
# an event another is about to publish.

_counter = itertools.count(1)
_last_ms = 0
#: Hex digits of randomness drawn from the OS at a time (16 per id).
_RANDOM_BATCH: Final = 16 * 512
_random = ""
_random_at = _RANDOM_BATCH


def _forget_random() -> None:
    global _random, _random_at
    _random, _random_at = "", _RANDOM_BATCH  # a forked child must not repeat its parent's


os.register_at_fork(after_in_child=_forget_random)


def new_event_id() -> str:
    """A new event id: a 38-character string, unique, that sorts in creation order.

    It holds 64 random bits (from the operating system's secure source), so it cannot be
    predicted from earlier ids.
    """
    global _last_ms, _random, _random_at
    ms = _time.time_ns() // 1_000_000
    if ms < _last_ms:  # the wall clock stepped back: keep ids increasing
        ms = _last_ms
    else:
        _last_ms = ms
    at = _random_at
    if at >= _RANDOM_BATCH:
        _random = os.urandom(_RANDOM_BATCH // 2).hex()
        at = 0
    _random_at = at + 16
    return f"{ms:012x}{next(_counter) & 0xFFFFFFFFFF:010x}{_random[at : at + 16]}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Typed payloads

_types_by_class: dict[type, tuple[str, str]] = {}
_types_by_name: dict[str, type] = {}


def event_type(name: str, *, topic: str | None = None) -> Callable[[C], C]:
    """Register an attrs class as a typed payload, as a class decorator.

    *name* becomes the ``type`` of events that carry an instance, and *topic* (by default the
    same as *name*) is where ``publish(instance)`` publishes and what ``subscribe(cls)``
    subscribes to::

        @event_type("orders.created")
        @attrs.frozen
        class OrderCreated:
            order_id: int
            total: float

    Raises:
        TypeError: if the class is not an attrs class, or *name* is already registered to
            another class.
        InvalidTopic: if *topic* (or *name*, when it serves as the topic) is not a valid topic.
    """
    validate_topic(topic if topic is not None else name)

    def register(cls: C) -> C:
        if not attrs.has(cast("type", cls)):  # (a cast: has() would narrow cls)
            raise TypeError(f"@event_type({name!r}) needs an attrs class, got {cls!r}")
        existing = _types_by_name.get(name)
        if existing is not None and existing is not cls:
            raise TypeError(f"event type {name!r} is already registered to {existing!r}")
        _types_by_class[cls] = (name, topic if topic is not None else name)
        _types_by_name[name] = cls
        return cls

    return register


def registered_type(cls: type) -> tuple[str, str] | None:
    """``(name, topic)`` of a class registered with :func:`event_type`, else None."""
    return _types_by_class.get(cls)


def type_for_name(name: str) -> type | None:
    """The class registered under the event type *name*, if any."""
    return _types_by_name.get(name)


# ---------------------------------------------------------------------------------------------
# JSON compatibility


def _reject(value: object) -> Any:
    raise TypeError


_STRICT: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def unstructure_data(data: object) -> Any:
    """*data* as JSON-compatible values (typed payloads become dicts)."""
    if type(data) in _types_by_class:
        return converter.unstructure(data)
    return data


#: The integers orjson can encode: 64-bit signed or unsigned.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def check_json(data: object) -> None:
    """Raise TypeError naming the first value in *data* that is not JSON-compatible.

    JSON-compatible means ``None``, ``bool``, ``int``, ``float``, ``str``, lists and tuples of
    them, dicts with ``str`` keys, and (as the whole of *data*) an instance of a class registered
    with :func:`event_type`. Integers must fit in 64 bits and strings must be valid Unicode.
    """
    # Fast path for the common scalars; a str may hold lone surrogates and an int may be too
    # big for orjson, so those two go through orjson below.
    if data is None or type(data) in (float, bool):
        return
    if type(data) is int and _INT_MIN <= data <= _INT_MAX:
        return
    plain = unstructure_data(data)
    try:
        orjson.dumps(plain, default=_reject, option=_STRICT)
    except (TypeError, orjson.JSONEncodeError) as exc:
        path, bad = _find_bad(plain, "data")
        if not path:  # a limit that _find_bad does not model, such as orjson's nesting depth
            raise TypeError(
                f"data is not JSON-compatible ({exc}); use JSON values or an instance of a "
                f"class registered with @event_type"
            ) from None
        raise TypeError(
            f"{path} is not JSON-compatible: {bad!r} (of type {type(bad).__name__}); use JSON "
            f"values or an instance of a class registered with @event_type"
        ) from None


def _find_bad(value: object, path: str) -> tuple[str, object]:
    # *value* is already unstructured: a typed payload is allowed only as the whole of ``data``
    # (that is all ``to_dict`` unstructures), so one nested inside is reported as bad.
    if value is None or isinstance(value, (bool, float)):
        return "", None
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            return path, value  # orjson encodes 64-bit integers only
        return "", None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, value  # lone surrogates are not valid UTF-8
        return "", None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_bad(item, f"{path}[{i}]")
            if found[0]:
                return found
        return "", None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} key", key
            found = _find_bad(item, f"{path}[{key!r}]")
            if found[0]:
                return found
        return "", None
    return path, value


# ---------------------------------------------------------------------------------------------
# The envelope


@attrs.frozen(kw_only=True, eq=True)
class Event:
    """One event on a topic: an immutable envelope around ``data``.

    Build events with ``publish``; construct one directly only for tests or for
    :meth:`from_cloudevent`-style import. Every field but ``topic`` has a default.

    Attributes:
        id: Unique, and sorts in creation order (see :func:`new_event_id`).
        topic: Where the event was published (no wildcards).
        type: What kind of event it is; by default the topic, or the registered name of a typed
            payload.
        source: Who published it (a free-form name, such as a service name).
        time: When it was published (aware, UTC).
        data: A JSON-compatible value, or an instance of a class registered with
            :func:`event_type`.
        headers: Free-form string metadata.
        seq: The position in the store when the event was stored, else None.
        reply_to: The topic a reply goes to (set by ``request``), else None.
    """

    topic: str
    data: Any = None
    id: str = attrs.field(factory=new_event_id)
    type: str = attrs.field()
    source: str = "trio-realtime"
    time: datetime = attrs.field(factory=_utcnow)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    seq: int | None = None
    reply_to: str | None = None

    @type.default  # noqa: A003 - CloudEvents and the wire protocol call the field type
    def _type_default(self) -> str:
        registered = _types_by_class.get(self.data.__class__)
        return registered[0] if registered is not None else self.topic

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-compatible dict, in the wire protocol's event object form."""
        return {
            "id": self.id,
            "topic": self.topic,
            "type": self.type,
            "source": self.source,
            "time": self.time.isoformat(),
            "data": unstructure_data(self.data),
            "headers": dict(self.headers),
            "seq": self.seq,
            "reply_to": self.reply_to,
        }

    def to_cloudevent(self) -> dict[str, Any]:
        """The event as a CloudEvents 1.0 structured-mode JSON object (a dict).

        ``subject`` is the topic; ``sequence`` (when stored), ``replyto`` and ``headers``
        (when set) are extension attributes.
        """
        ce: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.topic,
            "time": self.time.isoformat(),
            "datacontenttype": "application/json",
            "data": unstructure_data(self.data),
        }
        if self.seq is not None:
            ce["sequence"] = self.seq
        if self.reply_to is not None:
            ce["replyto"] = self.reply_to
        if self.headers:
            ce["headers"] = dict(self.headers)
        return ce

    @classmethod
    def from_cloudevent(cls, ce: Mapping[str, Any]) -> Event:
        """Build an event from a CloudEvents 1.0 structured-mode JSON object.

        ``data`` of a registered event ``type`` becomes an instance of its class.

        Raises:
            ValueError: if a required attribute is missing, an attribute is of the wrong type,
                or the ``specversion`` is not 1.0.
            InvalidTopic: if ``subject`` or ``replyto`` is not a valid topic.
        """
        if ce.get("specversion") != "1.0":
            raise ValueError(f"not a CloudEvents 1.0 event: specversion={ce.get('specversion')!r}")
        for name in ("id", "source", "type", "subject"):
            if not isinstance(ce.get(name), str):
                raise ValueError(f"CloudEvent attribute {name!r} must be a string")
        raw_time = ce.get("time")
        when = parse_time(raw_time) if raw_time is not None else _utcnow()
        seq = ce.get("sequence")
        if isinstance(seq, str) and seq.isdecimal():  # the CloudEvents extension is a string
            seq = int(seq)
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise ValueError(f"CloudEvent attribute 'sequence' must be an integer, not {seq!r}")
        headers = ce.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError(f"CloudEvent attribute 'headers' must map str to str, not {headers!r}")
        reply_to = ce.get("replyto")
        if reply_to is not None:
            if not isinstance(reply_to, str):
                raise ValueError(
                    f"CloudEvent attribute 'replyto' must be a string, not {reply_to!r}"
                )
            validate_topic(reply_to)
        return cls(
            id=ce["id"],
            topic=validate_topic(ce["subject"]),
            type=ce["type"],
            source=ce["source"],
            time=when,
            data=structure_data(ce["type"], ce.get("data")),
            headers=dict(headers),
            seq=seq,
            reply_to=reply_to,
        )


def check_headers(headers: object) -> None:
    """Raise TypeError unless *headers* is a dict of str to str."""
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise TypeError(f"headers must map str to str, got {headers!r}")


def make_event(
    topic: str | object,
    data: Any,
    *,
    headers: dict[str, str] | None,
    source: str,
    type: str | None,  # noqa: A002 - the envelope's field
    reply_to: str | None = None,
) -> Event:
    """Build (and check) the event ``publish(topic, data, …)`` describes."""
    if not isinstance(topic, str):
        registered = registered_type(topic.__class__)
        if registered is None:
            raise TypeError(
                f"publish() takes a topic, or an instance of a class registered with "
                f"@event_type; {topic.__class__.__qualname__} is not registered"
            )
        if data is not None:
            raise TypeError("publish(obj) takes no data: the object is the data")
        topic, data = registered[1], topic
    validate_topic(topic)
    check_json(data)
    if headers is not None:
        check_headers(headers)
    if type is None:
        return Event(
            topic=topic, data=data, source=source, headers=headers or {}, reply_to=reply_to
        )
    return Event(
        topic=topic, data=data, source=source, type=type, headers=headers or {}, reply_to=reply_to
    )


def parse_time(value: object) -> datetime:
    """Parse an ISO 8601 time; a time without an offset is taken as UTC.

    Raises:
        ValueError: if *value* is not an ISO 8601 string.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        parsed = datetime.fromisoformat(value)
    else:
        raise ValueError(f"time must be an ISO 8601 string, not {type(value).__name__}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def structure_data(type_name: str, data: Any) -> Any:
    """*data* as an instance of the class registered as *type_name*, where one is (and fits)."""
    cls = _types_by_name.get(type_name)
    if cls is None or not isinstance(data, dict):
        return data
    try:
        return converter.structure(data, cls)
    except Exception:  # noqa: BLE001 - a payload that does not fit stays plain JSON
        return data
