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

from .._event import Event, check_json, structure_data, unstructure_data
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
# fill the slots directly, as the attrs-generated __init__ would, when Event has exactly the
# fields they know about (a changed Event falls back to the constructor, or attrs.evolve).
_FIELDS: Final = {"id", "topic", "type", "source", "time", "data", "headers", "seq", "reply_to"}
_FAST_DECODE: Final = {f.name for f in attrs.fields(Event)} == _FIELDS and all(
    f.validator is None and f.on_setattr is None for f in attrs.fields(Event)
)
_new: Final = object.__new__
_set: Final = object.__setattr__
_loads: Final = orjson.loads


def decode_row(row: StoredRow) -> Event:
    """The event a stored row holds, with ``seq`` set and typed payloads restructured."""
    seq, id_, topic, type_, source, micros, data_json, headers_json, reply_to = row
    when = (
        _fromtimestamp(micros / 1e6, UTC)
        if 0 <= micros < _FLOAT_EXACT_BELOW
        else _EPOCH + timedelta(microseconds=micros)
    )
    data = structure_data(type_, _loads(data_json))
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
    _set(event, "id", id_)
    _set(event, "topic", topic)
    _set(event, "type", type_)
    _set(event, "source", source)
    _set(event, "time", when)
    _set(event, "data", data)
    _set(event, "headers", headers)
    _set(event, "seq", seq)
    _set(event, "reply_to", reply_to)
    return event


def with_seqs(events: Sequence[Event], seqs: Iterable[int]) -> list[Event]:
    """Copies of *events* with ``seq`` set, as ``attrs.evolve(event, seq=seq)`` makes them."""
    if not _FAST_DECODE:  # pragma: no cover - only if Event changes shape
        return [attrs.evolve(event, seq=seq) for event, seq in zip(events, seqs, strict=True)]
    copies: list[Event] = []
    for event, seq in zip(events, seqs, strict=True):
        if type(event) is not Event:
            copies.append(attrs.evolve(event, seq=seq))
            continue
        copy: Event = _new(Event)
        _set(copy, "id", event.id)
        _set(copy, "topic", event.topic)
        _set(copy, "type", event.type)
        _set(copy, "source", event.source)
        _set(copy, "time", event.time)
        _set(copy, "data", event.data)
        _set(copy, "headers", event.headers)
        _set(copy, "seq", seq)
        _set(copy, "reply_to", event.reply_to)
        copies.append(copy)
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
