"""Events as NATS messages: the CloudEvents NATS binding, in its binary content mode.

One mapping, written once, for everything that puts events on NATS as messages that any NATS
client can read and write (the NATS EventChannel; ``docs/transports.rst`` documents it for
users). An event on topic ``T`` travels on the subject ``<prefix>.T``, and is a NATS message
whose headers are the event's CloudEvents attributes, each as a header ``ce-<attribute>``
(the CloudEvents NATS protocol binding, binary content mode), and whose payload is the
event's ``data``::

    subject  tr.orders.created
    headers  ce-specversion: 1.0
             ce-id: 0192f3a4c5d60000000001a1b2c3d4e5f6a7b8
             ce-source: billing
             ce-type: orders.created
             ce-time: 2026-11-26T15:04:05.123456Z
             ce-datacontenttype: application/json
    payload  {"order": 7}

The attributes are those of the project's CloudEvents mapping (:meth:`Event.to_cloudevent
<trio_realtime.Event.to_cloudevent>`), but for ``subject``, which is the NATS subject's
part after the prefix, and ``replyto``, which is the NATS reply subject: ``sequence`` is the
seq (20 digits) of a stored event; each header with a name of lowercase letters and digits
(at most 20) that the mapping does not use is an attribute of its own, the others travel
together in ``ce-rtheaders`` (form-encoded); a header value is percent-encoded as the
binding says (space, ``"``, ``%`` and everything outside printable ASCII). ``data`` is JSON
(UTF-8, ``ce-datacontenttype: application/json``), absent (an empty payload) when None, or
the raw bytes when the event carries base64 text with the header ``data_base64: true``.

Reading a message is lenient, so that a plain NATS client can publish:

* With ``ce-specversion``, the ``ce-`` headers are read as above (``ce-id``, ``ce-source``,
  ``ce-type`` and ``ce-time`` default to a new id, ``nats``, the topic and now); other
  headers become event headers too. A payload that is not JSON (per ``ce-datacontenttype``)
  arrives as base64 text with ``data_base64: true``.
* With ``Content-Type: application/cloudevents+json`` (the structured mode), the payload is
  the whole event as CloudEvents JSON.
* Otherwise (``nats pub tr.orders.created '{"order": 7}'``) the payload is the data: JSON if
  it parses, else its text, else base64 (``data_base64: true``); the event gets a new id, the
  source ``nats``, the topic as its type, the time it was received, and the message's
  headers as its headers.

Headers NATS itself sets (``Nats-…``, ``Status``) are never event headers.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, unquote_to_bytes

import orjson

from ._errors import InvalidTopic
from ._event import (
    CLOUDEVENT_HEADERS_ATTRIBUTE,
    DATA_BASE64_HEADER,
    Event,
    build_event,
    new_event_id,
    parse_time,
)
from ._payloads import unstructure_data
from ._topics import validate_topic

__all__ = [
    "DEFAULT_PREFIX",
    "INBOX_SUBJECT_PREFIX",
    "PLAIN_SOURCE",
    "decode",
    "encode",
    "reply_topic",
    "subject_of",
]

#: The subject prefix of events, by default: an event on ``T`` travels on ``tr.T``.
DEFAULT_PREFIX: Final = "tr"
#: The source of an event received from a plain NATS message (one without ``ce-`` headers).
PLAIN_SOURCE: Final = "nats"
#: NATS's reply subjects (``_INBOX.…``): a topic under it is published as it is, unprefixed,
#: so that a reply reaches a plain NATS requester.
INBOX_SUBJECT_PREFIX: Final = "_INBOX."

_SPECVERSION: Final = "1.0"
_JSON: Final = "application/json"
_OCTETS: Final = "application/octet-stream"
_SEQUENCE_DIGITS: Final = 20
_SEQUENCE_MAX: Final = 10**_SEQUENCE_DIGITS - 1

#: A header value that needs no percent-encoding: printable ASCII but ``"`` and ``%``.
_PLAIN_VALUE: Final = re.compile(r"[!#$&-~]*")
#: What the binding leaves unencoded (quote()'s *safe*, on top of letters, digits, ``_.-~``).
_SAFE: Final = "!#$&'()*+,/:;<=>?@[\\]^`{|}"
#: A header that may be an attribute of its own: a legal attribute name.
_ATTRIBUTE_NAME: Final = re.compile(r"[a-z0-9]{1,20}")
#: What a CloudEvents string may not hold (control characters, lone surrogates,
#: noncharacters): a header value with one travels in ``ce-rtheaders``, as in the project's
#: CloudEvents mapping.
_NOT_IN_STRING: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)
#: Attribute names the mapping itself gives a meaning: a header so named goes in rtheaders.
_MAPPED: Final = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "data",
        "replyto",
        "sequence",
        CLOUDEVENT_HEADERS_ATTRIBUTE,
    }
)
_STRUCTURED: Final = "application/cloudevents"


# ---------------------------------------------------------------------------------------------
# Subjects


def subject_of(prefix: str, topic: str) -> str:
    """The NATS subject of *topic* under *prefix* (``prefix`` ends with a dot): the topic
    after the prefix, but a NATS inbox (``_INBOX.…``) as it is."""
    if topic.startswith(INBOX_SUBJECT_PREFIX):
        return topic
    return prefix + topic


def reply_topic(prefix: str, reply: str) -> str | None:
    """The topic of the NATS reply subject *reply* (``reply_to`` of the event): the subject
    after *prefix* (which ends with a dot), or a NATS inbox as it is; None for no reply, or
    a subject that is no topic."""
    if not reply:
        return None
    if reply.startswith(prefix):
        reply = reply[len(prefix) :]
    elif not reply.startswith(INBOX_SUBJECT_PREFIX):
        return None
    try:
        return validate_topic(reply)
    except InvalidTopic:
        return None


# ---------------------------------------------------------------------------------------------
# Percent-encoding of header values (section 3.1.3.2 of the binding)


def _encode_value(value: str) -> str:
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return quote(value, safe=_SAFE, errors="surrogatepass")


def _decode_value(value: str) -> str:
    """A header value as the binding encodes it: unquoted, then percent-decoded (UTF-8).

    Raises:
        ValueError: if it holds an invalid UTF-8 sequence.
    """
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    if "%" not in value:
        return value
    try:
        return unquote_to_bytes(value).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError(f"header value {value!r} is not percent-encoded UTF-8") from None


def _form(text: str) -> str:
    return quote(text, safe="", errors="surrogatepass")


def _pack(headers: list[tuple[str, str]]) -> str:
    return "&".join(f"{_form(name)}={_form(text)}" for name, text in headers)


def _unpack(value: str, into: dict[str, str]) -> None:
    for item in value.split("&"):
        if not item:
            continue
        name, equals, text = item.partition("=")
        if not equals:
            raise ValueError(f"ce-{CLOUDEVENT_HEADERS_ATTRIBUTE} item {item!r} has no '='")
        try:
            into[unquote_to_bytes(name).decode("utf-8", "surrogatepass")] = unquote_to_bytes(
                text
            ).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ValueError(
                f"ce-{CLOUDEVENT_HEADERS_ATTRIBUTE} item {item!r} is not percent-encoded UTF-8"
            ) from None


# ---------------------------------------------------------------------------------------------
# Encoding


def _ce_time(when: datetime) -> str:
    if when.tzinfo is not UTC:
        when = when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    # orjson writes RFC 3339 several times faster than isoformat(): "2026-11-26T15:04:05.1Z"
    return orjson.dumps(when, option=orjson.OPT_UTC_Z)[1:-1].decode()


def _is_base64(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        return False
    return True


def _is_seq(text: str) -> bool:
    """Whether *text* reads as a seq (what ``ce-sequence`` holds for a stored event)."""
    return text.isdigit() and text.isascii() and len(text) <= _SEQUENCE_DIGITS


def _own_attribute(name: str, value: str, seq: int | None) -> bool:
    """Whether the event header *name*: *value* travels as an attribute of its own (else in
    ``ce-rtheaders``): the rule of the project's CloudEvents mapping."""
    if not _ATTRIBUTE_NAME.fullmatch(name) or _NOT_IN_STRING.search(value):
        return False
    if name == "dataschema":
        return bool(value)  # (the spec's attribute: non-empty when present)
    if name == "sequence":  # only one that cannot be read back as the seq: another producer's
        return seq is None and bool(value) and not _is_seq(value)
    return name not in _MAPPED


def encode(event: Event) -> tuple[dict[str, str], bytes]:
    """*event* as a NATS message: its headers and its payload (see the module docstring).

    Never raises for an event that ``publish`` built (its data is JSON-compatible).
    """
    headers = {
        "ce-specversion": _SPECVERSION,
        "ce-id": _encode_value(event.id),
        "ce-source": _encode_value(event.source),
        "ce-type": _encode_value(event.type),
        "ce-time": _ce_time(event.time),
    }
    seq = event.seq
    if seq is not None and 0 <= seq <= _SEQUENCE_MAX:
        headers["ce-sequence"] = f"{seq:0{_SEQUENCE_DIGITS}d}"
    binary = False
    content_type: str | None = None
    if event.headers:
        binary = event.headers.get(DATA_BASE64_HEADER) == "true" and _is_base64(event.data)
        packed: list[tuple[str, str]] = []
        for name, value in event.headers.items():
            if name == DATA_BASE64_HEADER and binary:
                continue
            if name == "datacontenttype" and value and not _NOT_IN_STRING.search(value):
                content_type = value
            elif _own_attribute(name, value, seq):
                headers["ce-" + name] = _encode_value(value)
            else:
                packed.append((name, value))
        if packed:
            headers["ce-" + CLOUDEVENT_HEADERS_ATTRIBUTE] = _encode_value(_pack(packed))
    if binary:
        body = base64.b64decode(event.data)
        headers["ce-datacontenttype"] = _encode_value(content_type or _OCTETS)
    elif event.data is None:
        body = b""
        if content_type is not None:
            headers["ce-datacontenttype"] = _encode_value(content_type)
    else:
        body = orjson.dumps(unstructure_data(event.data))
        headers["ce-datacontenttype"] = _encode_value(content_type or _JSON)
    return headers, body


# ---------------------------------------------------------------------------------------------
# Decoding


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == _JSON or media.endswith("+json")


def decode(
    topic: str, headers: Mapping[str, str], payload: bytes, reply_to: str | None = None
) -> Event:
    """The event a NATS message on *topic* carries (see the module docstring).

    *topic* is the subject after the prefix (valid: the caller checks it), *reply_to* the
    topic of its reply subject (:func:`reply_topic`).

    Raises:
        ValueError: if the message says it is an event but is not a valid one (the message
            says what is wrong).
    """
    if headers:
        if "ce-specversion" in headers:
            event = _decode_common(topic, headers, payload, reply_to)
            if event is not None:
                return event
            return _decode_binary(topic, headers, payload, reply_to)
        for name, value in headers.items():
            lower = name.lower()
            if lower == "ce-specversion":
                return _decode_binary(topic, headers, payload, reply_to)
            if lower == "content-type" and value.lower().startswith(_STRUCTURED):
                return _decode_structured(topic, payload, reply_to)
    return _decode_plain(topic, headers, payload, reply_to)


def _decode_common(
    topic: str, headers: Mapping[str, str], payload: bytes, reply_to: str | None
) -> Event | None:
    """The event of a message with the attributes that most have, and no others (as this
    module writes them: lowercase names, nothing percent-encoded, JSON data); None if the
    message is another, for :func:`_decode_binary`."""
    get = headers.get
    id_ = get("ce-id")
    source = get("ce-source")
    type_ = get("ce-type")
    time = get("ce-time")
    sequence = get("ce-sequence")
    content_type = get("ce-datacontenttype")
    if (
        id_ is None
        or source is None
        or type_ is None
        or time is None
        or len(headers) != 5 + (sequence is not None) + (content_type is not None)
        or headers["ce-specversion"] != _SPECVERSION
        or (content_type is not None and content_type != _JSON)
    ):
        return None
    text = id_ + source + type_
    if "%" in text or '"' in text:
        return None
    seq = None
    if sequence is not None:
        if not _is_seq(sequence):
            return None
        seq = int(sequence)
    data = None
    if payload:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the payload is not JSON: {exc}") from None
    return build_event(id_, topic, type_, source, _parse_time(time), data, {}, seq, reply_to)


def _decode_binary(
    topic: str, headers: Mapping[str, str], payload: bytes, reply_to: str | None
) -> Event:
    id_: str | None = None
    source = PLAIN_SOURCE
    type_ = topic
    when: datetime | None = None
    seq: int | None = None
    content_type: str | None = None
    own: dict[str, str] = {}
    for name, raw in headers.items():
        lower = name if name.islower() else name.lower()
        if not lower.startswith("ce-"):
            if not lower.startswith("nats-") and lower != "status":
                own[name] = raw
            continue
        attribute = lower[3:]
        value = _decode_value(raw)
        if attribute == "id":
            id_ = value
        elif attribute == "source":
            source = value
        elif attribute == "type":
            type_ = value
        elif attribute == "time":
            when = _parse_time(value)
        elif attribute == "specversion":
            if value != _SPECVERSION:
                raise ValueError(f"not a CloudEvents 1.0 event: ce-specversion={value!r}")
        elif attribute == "sequence":
            if _is_seq(value):
                seq = int(value)
            else:
                own["sequence"] = value  # another producer's sequence, kept as it is
        elif attribute == "datacontenttype":
            content_type = value
        elif attribute == CLOUDEVENT_HEADERS_ATTRIBUTE:
            _unpack(value, own)
        elif attribute not in ("subject", "replyto"):  # (the subject and the reply say those)
            own[attribute] = value
    data: Any = None
    if payload or (content_type is not None and not _is_json(content_type)):
        if _is_json(content_type):
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"the payload is not JSON: {exc}") from None
            if content_type is not None and content_type != _JSON:
                own["datacontenttype"] = content_type
        else:
            data = base64.b64encode(payload).decode("ascii")
            own[DATA_BASE64_HEADER] = "true"
            own["datacontenttype"] = content_type or _OCTETS
    return build_event(
        new_event_id() if id_ is None else id_,
        topic,
        type_,
        source,
        when if when is not None else datetime.now(UTC),
        data,
        own,
        seq,
        reply_to,
    )


def _parse_time(value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        try:
            when = parse_time(value.upper())  # RFC 3339 allows a lowercase t and z
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"ce-time must be an RFC 3339 time, not {value!r} ({exc})") from None
    if when.tzinfo is UTC:
        return when
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _decode_structured(topic: str, payload: bytes, reply_to: str | None) -> Event:
    try:
        ce = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"a structured CloudEvent that is not JSON: {exc}") from None
    if not isinstance(ce, dict):
        raise ValueError("a structured CloudEvent must be a JSON object")
    ce["subject"] = topic
    ce.pop("replyto", None)
    if reply_to is not None:
        ce["replyto"] = reply_to
    try:
        return Event.from_cloudevent(ce)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def _decode_plain(
    topic: str, headers: Mapping[str, str], payload: bytes, reply_to: str | None
) -> Event:
    own = {
        name: value
        for name, value in (headers or {}).items()
        if not name.lower().startswith("nats-") and name.lower() != "status"
    }
    data: Any = None
    if payload:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            try:
                data = payload.decode("utf-8")
            except UnicodeDecodeError:
                data = base64.b64encode(payload).decode("ascii")
                own[DATA_BASE64_HEADER] = "true"
    return build_event(
        new_event_id(),
        topic,
        topic,
        PLAIN_SOURCE,
        datetime.now(UTC),
        data,
        own,
        None,
        reply_to,
    )
