"""How events become stored rows and back, how big they are, and how a pattern becomes a plan.

Both stores keep events as the same *row* tuples (JSON text for ``data`` and ``headers``, time
as integer microseconds since the Unix epoch), so that what a reader gets back is the same
whichever store it reads from: plain JSON, with registered typed payloads restructured.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, TypeAlias

import attrs
import orjson

from .._event import Event
from .._payloads import check_json, structure_data, unstructure_data
from .._topics import validate_pattern, validate_topic

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "EVENT_SIZE_OVERHEAD",
    "PatternPlan",
    "Row",
    "StoredRow",
    "approximate_size",
    "decode_row",
    "encode_events",
    "from_micros",
    "plan_pattern",
    "row_size",
    "stored_row_size",
    "to_micros",
    "with_seqs",
]

#: An event ready to store, without its seq:
#: ``(id, topic, type, source, time_us, data_json, headers_json_or_None, reply_to)``.
Row: TypeAlias = tuple[str, str, str, str, int, str, str | None, str | None]

#: A stored event: ``(seq, *Row)``, the column order of the SQLite ``events`` table.
StoredRow: TypeAlias = tuple[int, str, str, str, str, int, str, str | None, str | None]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def to_micros(when: datetime) -> int:
    """*when* as integer microseconds since the Unix epoch (a naive time is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MICROSECOND


def _dumps(value: object, what: str, event: Event) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError) as exc:
        if what == "data":
            check_json(event.data)  # raises a TypeError naming the offending value
        raise TypeError(
            f"event {event.id!r} on topic {event.topic!r}: {what} is not JSON-compatible ({exc})"
        ) from None


def _bad_field(event: Event, name: str, what: str) -> TypeError:
    return TypeError(
        f"event on topic {event.topic!r}: {name} must be {what}, not {getattr(event, name)!r}"
    )


def _encode(event: Event) -> Row:
    topic = validate_topic(event.topic)
    id_, type_, source = event.id, event.type, event.source
    if type(id_) is not str or not id_:
        raise _bad_field(event, "id", "a non-empty str")
    if type(type_) is not str or not type_:
        raise _bad_field(event, "type", "a non-empty str")
    if type(source) is not str or not source:
        raise _bad_field(event, "source", "a non-empty str")
    reply_to = event.reply_to
    if reply_to is not None:
        validate_topic(reply_to)
    when = event.time
    if not isinstance(when, datetime):
        raise _bad_field(event, "time", "a datetime")
    data = event.data
    data_json = "null" if data is None else _dumps(unstructure_data(data), "data", event)
    headers = event.headers
    headers_json: str | None = None
    if headers:
        for key, value in headers.items():
            if type(key) is not str or type(value) is not str:
                raise TypeError(
                    f"event {id_!r} on topic {topic!r}: headers must map str to str, "
                    f"found {key!r}: {value!r}"
                )
        headers_json = _dumps(dict(headers), "headers", event)
    return (id_, topic, type_, source, to_micros(when), data_json, headers_json, reply_to)


def encode_events(events: Sequence[Event]) -> list[Row]:
    """Validate *events* and turn them into rows, all or nothing.

    Raises:
        InvalidTopic: if an event's topic (or ``reply_to``) is not a valid topic.
        TypeError: if a field has the wrong type or ``data``/``headers`` are not
            JSON-compatible (the message names the event and the value).
        ValueError: if two events of the batch have the same id.
    """
    rows = [_encode(event) for event in events]
    if len(rows) > 1 and len({row[0] for row in rows}) != len(rows):
        seen: set[str] = set()
        for row in rows:
            if row[0] in seen:
                raise ValueError(f"event id {row[0]!r} appears twice in one append")
            seen.add(row[0])
    return rows


# ---------------------------------------------------------------------------------------------
# Sizes

#: What :func:`approximate_size` adds to every event for what it does not count: about what
#: the field names, ``time`` and ``seq`` add to an event's JSON object on the wire.
EVENT_SIZE_OVERHEAD: Final = 128


def row_size(row: Row) -> int:
    """The :func:`approximate_size` of the event *row* holds (cheap: no encoding)."""
    id_, topic, type_, source, _, data_json, headers_json, reply_to = row
    size = EVENT_SIZE_OVERHEAD + len(id_) + len(topic) + len(type_) + len(source) + len(data_json)
    if headers_json is not None:
        size += len(headers_json)
    if reply_to is not None:
        size += len(reply_to)
    return size


def stored_row_size(row: StoredRow) -> int:
    """The :func:`approximate_size` of the event a stored row holds (cheap: no encoding)."""
    return row_size(row[1:])  # the row as it was stored, after its seq


def _json_length(value: object) -> int:
    encoded = orjson.dumps(value)
    return len(encoded) if encoded.isascii() else len(encoded.decode())


def approximate_size(event: Event) -> int:
    """The approximate size of *event*, as stores measure it for ``max_bytes``.

    It is the number of characters of the JSON text of ``data`` and of ``headers`` (none when
    empty), plus those of ``id``, ``topic``, ``type``, ``source`` and ``reply_to``, plus
    :data:`EVENT_SIZE_OVERHEAD`: close to the length of the event's JSON object on the wire
    (in bytes, for ASCII text). ``seq`` and ``time`` count only in the overhead, so an event
    has the same size before it is stored and when it is read back. Stores compute it from
    the JSON they keep, without encoding anything again; this function encodes ``data``, so
    it costs about what publishing the event does.

    Raises:
        TypeError: if ``data`` or ``headers`` are not JSON-compatible.
    """
    data = event.data
    size = EVENT_SIZE_OVERHEAD + len(event.id) + len(event.topic) + len(event.type)
    size += len(event.source)
    size += 4 if data is None else _json_length(unstructure_data(data))
    if event.headers:
        size += _json_length(dict(event.headers))
    if event.reply_to is not None:
        size += len(event.reply_to)
    return size


# A float number of seconds below 2**32 is within 0.477 microseconds of the exact value, so
# datetime.fromtimestamp(), which rounds to the nearest microsecond, gets it exactly; and it is
# more than twice as fast as adding a timedelta to the epoch.
_FLOAT_EXACT_BELOW: Final = 2**32 * 1_000_000
_fromtimestamp: Final = datetime.fromtimestamp


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime *micros* microseconds after the Unix epoch."""
    if 0 <= micros < _FLOAT_EXACT_BELOW:
        return _fromtimestamp(micros / 1e6, UTC)
    return _EPOCH + timedelta(microseconds=micros)


# Replaying stored events is dominated by building Event objects, so decode_row (and with_seqs)
# fill the slots directly through their descriptors, as the attrs-generated __init__ would
# (without its look-ups), when Event has exactly the fields they know about: the envelope's,
# and perhaps the wire text it keeps once encoded (``_wire``). A changed Event falls back to
# the constructor, or attrs.evolve.
_FIELDS: Final = ("id", "topic", "type", "source", "time", "data", "headers", "seq", "reply_to")
_EVENT_FIELDS: Final = {f.name: f for f in attrs.fields(Event)}
_HAS_WIRE: Final = set(_EVENT_FIELDS) == {*_FIELDS, "_wire"} and not _EVENT_FIELDS["_wire"].init
_FAST_DECODE: Final = (set(_EVENT_FIELDS) == set(_FIELDS) or _HAS_WIRE) and all(
    f.validator is None and f.on_setattr is None for f in _EVENT_FIELDS.values()
)
_new: Final = object.__new__
_loads: Final = orjson.loads
_dumps_bytes: Final = orjson.dumps
_Fragment: Final = orjson.Fragment


def _no_wire(event: Event, wire: tuple[str, int] | None) -> None:
    return None


if _FAST_DECODE:
    (_set_id, _set_topic, _set_type, _set_source, _set_time, _set_data, _set_headers) = (
        Event.__dict__[name].__set__ for name in _FIELDS[:7]
    )
    _set_seq, _set_reply_to = (Event.__dict__[name].__set__ for name in _FIELDS[7:])
    _set_wire: Callable[[Event, tuple[str, int] | None], None] = (
        Event.__dict__["_wire"].__set__ if _HAS_WIRE else _no_wire
    )


def _wire_time(when: datetime) -> datetime | str:
    """*when* (aware UTC) as the wire form writes it: orjson writes an aware UTC time with
    microseconds as ``isoformat`` does; one without, it would shorten."""
    return when if when.microsecond else when.isoformat(timespec="microseconds")


def decode_row(row: StoredRow) -> Event:
    """The event a stored row holds, with ``seq`` set and typed payloads restructured.

    Its wire text (what ``protocol.encode_event`` returns) is made here from the stored JSON,
    without encoding ``data`` again, for a plain JSON payload: a replay sends what it reads.
    """
    seq, id_, topic, type_, source, micros, data_json, headers_json, reply_to = row
    when = (
        _fromtimestamp(micros / 1e6, UTC)
        if 0 <= micros < _FLOAT_EXACT_BELOW
        else _EPOCH + timedelta(microseconds=micros)
    )
    loaded = _loads(data_json)
    data = structure_data(type_, loaded)
    headers = {} if headers_json is None else _loads(headers_json)
    if not _FAST_DECODE:  # pragma: no cover - only if Event changes shape
        return Event(
            id=id_,
            topic=topic,
            type=type_,
            source=source,
            time=when,
            data=data,
            headers=headers,
            seq=seq,
            reply_to=reply_to,
        )
    event: Event = _new(Event)
    _set_id(event, id_)
    _set_topic(event, topic)
    _set_type(event, type_)
    _set_source(event, source)
    _set_time(event, when)
    _set_data(event, data)
    _set_headers(event, headers)
    _set_seq(event, seq)
    _set_reply_to(event, reply_to)
    if _HAS_WIRE:
        wire = None
        if data is loaded:  # (a typed payload is encoded afresh, from its class)
            raw = _dumps_bytes(
                {
                    "id": id_,
                    "topic": topic,
                    "type": type_,
                    "source": source,
                    "time": _wire_time(when),
                    "data": _Fragment(data_json),
                    "headers": _Fragment("{}" if headers_json is None else headers_json),
                    "seq": seq,
                    "reply_to": reply_to,
                }
            )
            wire = (raw.decode(), len(raw))
        _set_wire(event, wire)
    return event


# The end of an event's wire text when it has neither seq nor reply_to (as a publish has).
_NO_SEQ_END: Final = ',"seq":null,"reply_to":null}'


def _wire_with_seq(event: Event, seq: int) -> tuple[str, int] | None:
    """The wire text of *event* with ``seq`` set, made from its own when it has one (else
    None: it is encoded when it is first sent)."""
    wire = event._wire
    if wire is None:
        return None
    text, size = wire
    if not text.endswith(_NO_SEQ_END):
        return None
    end = f',"seq":{seq},"reply_to":null}}'
    return text[: -len(_NO_SEQ_END)] + end, size - len(_NO_SEQ_END) + len(end)


def with_seqs(events: Sequence[Event], seqs: Iterable[int]) -> list[Event]:
    """Copies of *events* with ``seq`` set, as ``attrs.evolve(event, seq=seq)`` makes them.

    An event already encoded (see ``protocol.encode_event``) passes its wire text on to its
    copy, with the seq written in: the event is encoded once, from publish to delivery.
    """
    if not _FAST_DECODE:  # pragma: no cover - only if Event changes shape
        return [attrs.evolve(event, seq=seq) for event, seq in zip(events, seqs, strict=True)]
    copies: list[Event] = []
    append = copies.append
    for event, seq in zip(events, seqs, strict=True):
        if type(event) is not Event:
            append(attrs.evolve(event, seq=seq))
            continue
        copy: Event = _new(Event)
        _set_id(copy, event.id)
        _set_topic(copy, event.topic)
        _set_type(copy, event.type)
        _set_source(copy, event.source)
        _set_time(copy, event.time)
        _set_data(copy, event.data)
        _set_headers(copy, event.headers)
        _set_seq(copy, seq)
        _set_reply_to(copy, event.reply_to)
        _set_wire(copy, _wire_with_seq(event, seq) if _HAS_WIRE else None)
        append(copy)
    return copies


# ---------------------------------------------------------------------------------------------
# Patterns


@attrs.frozen
class PatternPlan:
    """How to find the topics a (validated) pattern matches.

    Attributes:
        pattern: The pattern.
        exact: The topic itself, when the pattern has no wildcard (then ``glob`` is None).
        glob: A SQLite ``GLOB`` pattern that every matching topic matches, or None when there
            is no useful one (an exact topic, or the pattern ``>``).
        glob_is_exact: Whether ``exact``/``glob`` alone decide (no ``*`` in the pattern), so
            that ``matches`` need not be applied to what SQLite returns.
        matches: The exact test, with NATS semantics, for a valid topic.
    """

    pattern: str
    exact: str | None
    glob: str | None
    glob_is_exact: bool
    matches: Callable[[str], bool]


def _always(topic: str) -> bool:
    return True


_plans: dict[str, PatternPlan] = {}
_PLAN_CACHE_SIZE: Final = 1024


def plan_pattern(pattern: str) -> PatternPlan:
    """Validate *pattern* and plan how to match it.

    Topic characters (``A-Z a-z 0-9 _ - $``) are never special in ``GLOB``, so literal tokens
    go into the glob as they are; ``*`` becomes ``*`` (which may also span dots, hence the exact
    ``matches`` test afterwards) and a final ``>`` becomes ``?*`` (one or more characters after
    the dot, which in a valid topic is one or more tokens).

    Raises:
        InvalidTopic: if *pattern* is not a valid pattern.
    """
    plan = _plans.get(pattern)
    if plan is not None:
        return plan
    validate_pattern(pattern)
    tokens = pattern.split(".")
    if "*" not in tokens and ">" not in tokens:
        plan = PatternPlan(pattern, pattern, None, True, pattern.__eq__)
    elif pattern == ">":
        plan = PatternPlan(pattern, None, None, True, _always)
    else:
        regex = re.compile(
            r"\.".join("[^.]+" if t == "*" else ".+" if t == ">" else re.escape(t) for t in tokens)
        )
        fullmatch = regex.fullmatch

        def matches(topic: str) -> bool:
            return fullmatch(topic) is not None

        glob = ".".join("?*" if t == ">" else t for t in tokens)
        plan = PatternPlan(pattern, None, glob, "*" not in tokens, matches)
    if len(_plans) >= _PLAN_CACHE_SIZE:
        _plans.clear()
    _plans[pattern] = plan
    return plan
