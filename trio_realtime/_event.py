"""The event envelope, event ids and the CloudEvents mapping.

An :class:`Event` is what travels on a topic. Its ``data`` is a JSON-compatible value, or an
instance of an attrs class registered with :func:`~trio_realtime.event_type` (a *typed
payload*), which the converter turns into JSON and back (see :mod:`trio_realtime._payloads`).
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import time as _time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, unquote_plus

import attrs

from ._errors import InvalidTopic
from ._payloads import check_json, registered_type, structure_data, unstructure_data
from ._topics import is_reserved, validate_topic

__all__ = ["Event", "new_event_id"]

#: The header a reply carries when the responder's handler failed; its value is the message.
REPLY_ERROR_HEADER: Final = "error"


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
# CloudEvents names (the mapping itself is at the end of the module)

#: The topic of an imported CloudEvent that has no ``subject`` and whose ``type`` is not a
#: valid topic (unless :meth:`Event.from_cloudevent` is given another).
CLOUDEVENT_DEFAULT_TOPIC: Final = "cloudevents"

#: The extension attribute that carries the headers that cannot be attributes of their own,
#: as ``application/x-www-form-urlencoded`` text.
CLOUDEVENT_HEADERS_ATTRIBUTE: Final = "rtheaders"

#: The header that says ``data`` is base64 text (a CloudEvent's ``data_base64``); its value is
#: ``"true"``. Its name is not a legal attribute name, so no extension attribute can clash.
DATA_BASE64_HEADER: Final = "data_base64"


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
    #: The event's wire text and its size in bytes (UTF-8), once encoded (see
    #: ``protocol.encode_event``): events are immutable, so one encoding serves every
    #: connection it is sent to, and the store.
    _wire: tuple[str, int] | None = attrs.field(
        default=None, init=False, eq=False, repr=False, hash=False
    )

    @type.default  # noqa: A003 - CloudEvents and the wire protocol call the field type
    def _type_default(self) -> str:
        registered = registered_type(self.data.__class__)
        return registered[0] if registered is not None else self.topic

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-compatible dict, in the wire protocol's event object form.

        This is the one mapping to the wire: the protocol encodes exactly this dict. ``time``
        always has microseconds (a fixed width). The dict shares ``headers`` with the event
        when that is a dict already (events are immutable: do not change it).
        """
        headers = self.headers
        return {
            "id": self.id,
            "topic": self.topic,
            "type": self.type,
            "source": self.source,
            "time": self.time.isoformat(timespec="microseconds"),
            "data": unstructure_data(self.data),
            "headers": headers if type(headers) is dict else dict(headers),
            "seq": self.seq,
            "reply_to": self.reply_to,
        }

    def to_cloudevent(self) -> dict[str, Any]:
        """The event as a CloudEvents 1.0 structured-mode JSON object (a dict).

        ``subject`` is the topic, ``time`` always has microseconds and ends in ``Z``,
        ``sequence`` (when stored) is the seq as 20 decimal digits, ``replyto`` (when set) the
        reply topic, and each header becomes an extension attribute of its own where its name
        and value allow, the others travelling together in ``rtheaders``.
        :ref:`cloudevents-mapping` has the whole table.

        Raises:
            ValueError: if the event cannot be a valid CloudEvent: ``id``, ``source``, ``type``
                or ``topic`` is empty or holds a character CloudEvents strings may not hold
                (a control character, a noncharacter or a lone surrogate), ``seq`` is negative
                or over 20 digits, or the ``data_base64`` header is set but is not ``"true"``
                or ``data`` is not base64 text.
        """
        return _to_cloudevent(self)

    @classmethod
    def from_cloudevent(
        cls, ce: Mapping[str, Any], *, default_topic: str = CLOUDEVENT_DEFAULT_TOPIC
    ) -> Event:
        """Build an event from a CloudEvents 1.0 structured-mode JSON object (a mapping).

        The inverse of :meth:`to_cloudevent`. The topic is ``subject``; without one it is the
        ``type`` when that is a valid, unreserved topic, else *default_topic*. Extension
        attributes the mapping does not use (``traceparent``, say) are kept as headers, and
        so are ``datacontenttype`` (unless it is ``application/json``, the default) and
        ``dataschema``. ``data_base64`` (or ``data`` given as bytes, as the official SDK's
        events hold it) becomes base64 text in ``data`` with the header ``data_base64:
        true``. ``data`` of a registered event ``type`` becomes an instance of its class.

        Raises:
            ValueError: if a required attribute is missing, empty or not a string, an
                attribute is of the wrong type, the ``specversion`` is not 1.0, ``data`` and
                ``data_base64`` are both given, or a header is given twice.
            InvalidTopic: if ``subject``, ``replyto`` or *default_topic* is not a valid topic.
        """
        return cls(**_from_cloudevent(ce, default_topic))


_SLOTS: Final = tuple(
    Event.__dict__[name].__set__
    for name in ("id", "topic", "type", "source", "time", "data", "headers", "seq", "reply_to")
)
_set_wire: Final = Event.__dict__["_wire"].__set__
_new_object: Final = object.__new__


def build_event(
    id: str,  # noqa: A002 - the envelope's field
    topic: str,
    type: str,  # noqa: A002 - the envelope's field
    source: str,
    time: datetime,
    data: Any,
    headers: Mapping[str, str],
    seq: int | None,
    reply_to: str | None,
) -> Event:
    """``Event(...)`` with every field given and already checked, without the generated
    ``__init__`` (a frozen class's sets each field through a look-up): for the codec and
    :func:`make_event`, which build one per event on the hot path."""
    event = _new_object(Event)
    set_id, set_topic, set_type, set_source, set_time, set_data, set_headers, set_seq, set_reply = (
        _SLOTS
    )
    set_id(event, id)
    set_topic(event, topic)
    set_type(event, type)
    set_source(event, source)
    set_time(event, time)
    set_data(event, data)
    set_headers(event, headers)
    set_seq(event, seq)
    set_reply(event, reply_to)
    _set_wire(event, None)
    return event


def wire_dict(event: Event) -> dict[str, Any]:
    """:meth:`Event.to_dict`, but with ``time`` left a datetime where orjson writes it exactly
    as ``to_dict`` would (aware UTC, with microseconds): for the codec, which hands it to
    orjson (several times faster than ``isoformat``)."""
    when = event.time
    headers = event.headers
    return {
        "id": event.id,
        "topic": event.topic,
        "type": event.type,
        "source": event.source,
        "time": (
            when
            if when.tzinfo is UTC and when.microsecond
            else when.isoformat(timespec="microseconds")
        ),
        "data": unstructure_data(event.data),
        "headers": headers if type(headers) is dict else dict(headers),
        "seq": event.seq,
        "reply_to": event.reply_to,
    }


def set_wire(event: Event, wire: tuple[str, int]) -> None:
    """Keep *event*'s wire text and size on it (see ``protocol.encode_event``)."""
    _set_wire(event, wire)


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
        if {"*", ">"} & set(registered[1].split(".")):
            raise TypeError(
                f"{topic.__class__.__qualname__} is registered on the pattern "
                f"{registered[1]!r}: publish it with publish(topic, obj) on a topic that matches"
            )
        topic, data = registered[1], topic
    validate_topic(topic)
    check_json(data)
    if headers is not None:
        check_headers(headers)
    if type is None:
        registered = registered_type(data.__class__)
        type = registered[0] if registered is not None else topic  # noqa: A001
    return build_event(
        new_event_id(), topic, type, source, _utcnow(), data, headers or {}, None, reply_to
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


# ---------------------------------------------------------------------------------------------
# CloudEvents 1.0: the mapping to and from a structured-mode JSON object
#
# Event field          CloudEvent attribute
# id, source, type     id, source, type
# topic                subject (on import without one: type if a valid topic, else a default)
# time                 time, fixed width: 2026-11-26T15:04:05.123456Z
# data                 data; or data_base64, when the header data_base64 is "true"
# seq                  sequence (the Sequence extension), 20 decimal digits so it sorts as text
# reply_to             replyto (extension)
# headers              datacontenttype and dataschema by those names; any other header with a
#                      legal attribute name that the mapping does not use, and a legal value,
#                      as an extension attribute of that name; the rest in rtheaders, as
#                      form-encoded text. On import, every extension attribute the mapping
#                      does not use becomes a header.
#
# The reference page ("CloudEvents mapping") documents the same table for users.

_SPECVERSION: Final = "1.0"
_JSON: Final = "application/json"
#: seq as 20 digits: any 64-bit unsigned integer (a JetStream stream sequence, say) fits.
_SEQUENCE_DIGITS: Final = 20
_SEQUENCE_MAX: Final = 10**_SEQUENCE_DIGITS - 1

#: A legal extension attribute name: lowercase ASCII letters and digits, at most 20 (the spec
#: says SHOULD; some SDKs refuse longer names).
_ATTRIBUTE_NAME: Final = re.compile(r"[a-z0-9]{1,20}")
#: What a CloudEvents String may not hold: control characters, lone surrogates, noncharacters.
_NOT_IN_STRING: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)
_DECIMAL: Final = re.compile(r"[0-9]+")
#: Attribute names the mapping gives a meaning of its own: a header so named goes in rtheaders.
#: (datacontenttype, dataschema and sequence have rules of their own in _own_attribute.)
_MAPPED: Final = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "data", "replyto"}
    | {CLOUDEVENT_HEADERS_ATTRIBUTE}
)


def _check_ce_string(name: str, value: str) -> None:
    if not value:
        raise ValueError(f"a CloudEvent needs a non-empty {name}; this event's is empty")
    bad = _NOT_IN_STRING.search(value)
    if bad is not None:
        raise ValueError(
            f"the event's {name} {value!r} cannot be a CloudEvents string: it holds "
            f"U+{ord(bad.group()):04X} (control characters, noncharacters and lone "
            f"surrogates are not allowed)"
        )


def _ce_time(when: datetime) -> str:
    """*when* in UTC, always with microseconds: ``2026-11-26T15:04:05.123456Z``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def _is_base64(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        return False
    return True


def _own_attribute(name: str, value: str, seq: int | None) -> bool:
    """Whether the header *name*: *value* goes out as an extension attribute of its own."""
    if not _ATTRIBUTE_NAME.fullmatch(name) or _NOT_IN_STRING.search(value):
        return False
    if name in ("datacontenttype", "dataschema"):
        return bool(value)  # the spec's attributes: non-empty when present
    if name == "sequence":
        # Only a sequence that cannot be read back as seq: one from another producer.
        return seq is None and bool(value) and _as_seq(value) is None
    return name not in _MAPPED


def _as_seq(sequence: str) -> int | None:
    """The seq a CloudEvents sequence stands for: decimal digits in seq's range, else None."""
    if _DECIMAL.fullmatch(sequence) and int(sequence) <= _SEQUENCE_MAX:
        return int(sequence)
    return None


def _quote(text: str) -> str:
    return quote(text, safe="", errors="surrogatepass")


def _to_cloudevent(event: Event) -> dict[str, Any]:
    for name, value in (
        ("id", event.id),
        ("source", event.source),
        ("type", event.type),
        ("subject (the topic)", event.topic),
    ):
        _check_ce_string(name, value)
    ce: dict[str, Any] = {
        "specversion": _SPECVERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.topic,
        "time": _ce_time(event.time),
    }
    headers = dict(event.headers)
    binary = headers.pop(DATA_BASE64_HEADER, None)
    if binary not in (None, "true"):
        raise ValueError(
            f"the header {DATA_BASE64_HEADER!r} says data is base64 text when it is 'true'; "
            f"it is {binary!r}: set it to 'true' or remove it"
        )
    if event.seq is not None:
        if not 0 <= event.seq <= _SEQUENCE_MAX:
            raise ValueError(
                f"seq {event.seq} cannot be a CloudEvents sequence: it must be 0 to {_SEQUENCE_MAX}"
            )
        ce["sequence"] = f"{event.seq:0{_SEQUENCE_DIGITS}d}"
    if event.reply_to is not None:
        ce["replyto"] = event.reply_to
    packed: list[str] = []
    for name, value in headers.items():
        if _own_attribute(name, value, event.seq):
            ce[name] = value
        else:
            packed.append(f"{_quote(name)}={_quote(value)}")
    if packed:
        ce[CLOUDEVENT_HEADERS_ATTRIBUTE] = "&".join(packed)
    if binary is not None:
        if not _is_base64(event.data):
            raise ValueError(
                f"the header {DATA_BASE64_HEADER!r} says data is base64 text, but data is "
                f"{event.data!r}: encode the bytes with base64.b64encode(...).decode()"
            )
        ce["data_base64"] = event.data
    elif event.data is not None:
        ce.setdefault("datacontenttype", _JSON)
        ce["data"] = unstructure_data(event.data)
    return ce


def _ce_attribute_error(name: str, expected: str, value: object) -> ValueError:
    return ValueError(f"CloudEvent attribute {name!r} must be {expected}, not {value!r}")


def _parse_ce_time(value: object) -> datetime:
    try:
        try:
            return parse_time(value)
        except ValueError:
            if not isinstance(value, str) or value == value.upper():
                raise
            return parse_time(value.upper())  # RFC 3339 allows a lowercase t and z
    except (ValueError, OverflowError) as exc:
        raise ValueError(
            f"CloudEvent attribute 'time' must be an RFC 3339 time, not {value!r} ({exc})"
        ) from None


def _unpack_headers(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, str):
        raise _ce_attribute_error(CLOUDEVENT_HEADERS_ATTRIBUTE, "a string", value)
    pairs = []
    for item in value.split("&"):
        if not item:
            continue
        name, equals, text = item.partition("=")
        if not equals:
            raise ValueError(
                f"CloudEvent attribute {CLOUDEVENT_HEADERS_ATTRIBUTE!r} must be form-encoded "
                f"name=value pairs joined by '&'; {item!r} has no '='"
            )
        try:
            pairs.append(
                (
                    unquote_plus(name, errors="surrogatepass"),
                    unquote_plus(text, errors="surrogatepass"),
                )
            )
        except UnicodeDecodeError:
            raise ValueError(
                f"CloudEvent attribute {CLOUDEVENT_HEADERS_ATTRIBUTE!r} holds {item!r}, which "
                f"is not percent-encoded UTF-8"
            ) from None
    return pairs


def _extension_text(name: str, value: object) -> str:
    """An extension attribute's value as text (its canonical string form, for a bool or int)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise _ce_attribute_error(name, "a string, boolean or integer (an extension)", value)


#: The members _from_cloudevent reads itself; every other one is an extension (a header).
_READ: Final = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "data", "data_base64"}
)


def _from_cloudevent(ce: Mapping[str, Any], default_topic: str) -> dict[str, Any]:
    """The keyword arguments of the :class:`Event` that the CloudEvent *ce* describes."""
    if not isinstance(ce, Mapping):
        raise ValueError(f"a CloudEvent must be a JSON object (a mapping), not {ce!r}")
    if ce.get("specversion") != _SPECVERSION:
        raise ValueError(f"not a CloudEvents 1.0 event: specversion={ce.get('specversion')!r}")
    for name in ("id", "source", "type"):
        if not isinstance(ce.get(name), str) or not ce[name]:
            raise _ce_attribute_error(name, "a non-empty string", ce.get(name))
    type_: str = ce["type"]

    subject = ce.get("subject")
    if subject is None:
        topic = type_ if _is_topic(type_) else validate_topic(default_topic)
    elif not isinstance(subject, str):
        raise _ce_attribute_error("subject", "a string (the topic)", subject)
    else:
        try:
            topic = validate_topic(subject)
        except InvalidTopic as exc:
            raise InvalidTopic(
                subject,
                f"a CloudEvent's subject is its topic, so it must be a valid one ({exc.rule}); "
                f"leave subject out to use the type or a default topic",
            ) from None

    raw_time = ce.get("time")
    when = _parse_ce_time(raw_time) if raw_time is not None else _utcnow()

    headers: dict[str, str] = {}

    def add(name: str, value: str, where: str) -> None:
        if name == DATA_BASE64_HEADER:
            raise ValueError(
                f"the header {DATA_BASE64_HEADER!r} ({where}) is set by the mapping itself, "
                f"from data_base64"
            )
        if name in headers:
            raise ValueError(f"the header {name!r} is given twice (once {where})")
        headers[name] = value

    data = ce.get("data")
    data_base64 = ce.get("data_base64")
    binary = True
    if data_base64 is not None:
        if data is not None:
            raise ValueError("a CloudEvent has data or data_base64, not both")
        if not _is_base64(data_base64):
            raise _ce_attribute_error("data_base64", "base64 text", data_base64)
        data = data_base64
    elif isinstance(data, (bytes, bytearray, memoryview)):  # an SDK event's binary data
        data = base64.b64encode(data).decode("ascii")
    else:
        binary = False
        data = structure_data(type_, data)

    seq: int | None = None
    reply_to: str | None = None
    for name, value in ce.items():
        if name in _READ or value is None:  # null means absent
            continue
        if name == "sequence":
            if isinstance(value, str):
                seq = _as_seq(value)
                if seq is None:  # another producer's sequence: kept as it is
                    add(name, value, "as the sequence attribute")
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                seq = value  # as trio_realtime wrote it before the Sequence extension's string
            else:
                raise _ce_attribute_error(name, "a string (the Sequence extension)", value)
        elif name == "replyto":
            if not isinstance(value, str):
                raise _ce_attribute_error(name, "a string (a topic)", value)
            reply_to = validate_topic(value)
        elif name == CLOUDEVENT_HEADERS_ATTRIBUTE:
            for header, text in _unpack_headers(value):
                add(header, text, f"in {CLOUDEVENT_HEADERS_ATTRIBUTE}")
        elif name == "headers" and isinstance(value, Mapping):
            # A JSON map, as trio_realtime wrote headers before they became attributes.
            for header, text in value.items():
                if not isinstance(header, str) or not isinstance(text, str):
                    raise _ce_attribute_error(name, "a map of str to str", value)
                add(header, text, "in the headers map")
        elif name == "datacontenttype":
            if not isinstance(value, str):
                raise _ce_attribute_error(name, "a string", value)
            if value != _JSON or binary:
                add(name, value, "as the datacontenttype attribute")
        else:
            add(name, _extension_text(name, value), f"as the {name} attribute")
    if binary:
        headers[DATA_BASE64_HEADER] = "true"

    return {
        "id": ce["id"],
        "topic": topic,
        "type": type_,
        "source": ce["source"],
        "time": when,
        "data": data,
        "headers": headers,
        "seq": seq,
        "reply_to": reply_to,
    }


def _is_topic(text: str) -> bool:
    """Whether *text* is a valid topic that is not reserved for the broker."""
    try:
        validate_topic(text)
    except InvalidTopic:
        return False
    return not is_reserved(text)
