"""Typed payloads: attrs classes registered with :func:`event_type`, the JSON converter that
turns them into JSON values and back, and the check that ``data`` is JSON-compatible.

An event's ``data`` is a JSON-compatible value, or an instance of a registered class (a *typed
payload*): the registry maps each class to its event type name and topic, and the converter
(un)structures its instances. :mod:`trio_realtime._event` builds events on this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any, Final, TypeVar, cast

import attrs
import orjson
from cattrs import transform_error
from cattrs.preconf.orjson import make_converter

from ._topics import validate_pattern

__all__ = [
    "check_json",
    "converter",
    "event_type",
    "registered_type",
    "registered_types",
    "structure_data",
    "structure_payload",
    "temporary_event_type",
    "type_for_name",
    "unstructure_data",
]

#: The cattrs converter that (un)structures typed payloads; register hooks on it for field
#: types that need them.
converter: Final = make_converter()
# Datetimes and dates as ISO 8601 text (cattrs' preset leaves them to orjson, which check_json
# does not let through); a naive datetime is taken as UTC, as an event's own time is.
converter.register_unstructure_hook(
    datetime, lambda value: (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
)
converter.register_unstructure_hook(date, date.isoformat)

C = TypeVar("C", bound=type)
T = TypeVar("T")

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

    *topic* may be a pattern (``"sensors.*.temperature"``): ``subscribe(cls)`` then receives
    every matching topic, and instances are published with ``publish(topic, instance)`` on a
    topic of your choice.

    Raises:
        TypeError: if the class is not an attrs class, or *name* is already registered to
            another class.
        InvalidTopic: if *topic* (or *name*, when it serves as the topic) is not a valid topic
            or pattern.
    """
    validate_pattern(topic if topic is not None else name)

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


_temporary: dict[type, int] = {}


@contextmanager
def temporary_event_type(cls: type, name: str) -> Iterator[None]:
    """Register *cls* under *name* (as :func:`event_type` does) for the ``with`` block only.

    Nested and concurrent blocks for the same class share one registration, removed when
    the last exits; a class registered for good stays so.
    """
    permanent = registered_type(cls) is not None and cls not in _temporary
    if not permanent:
        event_type(name)(cls)
        _temporary[cls] = _temporary.get(cls, 0) + 1
    try:
        yield
    finally:
        if not permanent:
            _temporary[cls] -= 1
            if not _temporary[cls]:
                del _temporary[cls]
                del _types_by_class[cls]
                del _types_by_name[name]


def registered_type(cls: type) -> tuple[str, str] | None:
    """``(name, topic)`` of a class registered with :func:`event_type`, else None."""
    return _types_by_class.get(cls)


def registered_types() -> dict[type, tuple[str, str]]:
    """Every class registered with :func:`event_type` now: ``{cls: (name, topic)}``."""
    return dict(_types_by_class)


def type_for_name(name: str) -> type | None:
    """The class registered under the event type *name*, if any."""
    return _types_by_name.get(name)


def structure_payload(data: object, cls: type[T]) -> T:
    """*data* (JSON values, or an instance of another class) as an instance of *cls*.

    Raises:
        ValueError: if it does not fit, naming each field that does not by its path in the
            event (``data.items[2].price``) and what is wrong with it.
    """
    plain = unstructure_data(data)
    if not isinstance(plain, dict):
        raise ValueError(
            f"data does not fit {cls.__qualname__}: it must be an object of its fields, not "
            f"{type(plain).__name__}"
        )
    try:
        return converter.structure(plain, cls)
    except Exception as exc:  # noqa: BLE001 - a hook may raise anything; each is a misfit
        problems = "; ".join(transform_error(exc, path="data"))
        raise ValueError(f"data does not fit {cls.__qualname__}: {problems}") from None


def structure_data(type_name: str, data: Any) -> Any:
    """*data* as an instance of the class registered as *type_name*, where one is (and fits)."""
    cls = _types_by_name.get(type_name)
    if cls is None or not isinstance(data, dict):
        return data
    try:
        return converter.structure(data, cls)
    except Exception:  # noqa: BLE001 - a payload that does not fit stays plain JSON
        return data


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
    The path names the fields of a typed payload as attributes (``data.items[2].price``).
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
        path, bad = _find_bad(plain, "data", data)
        if not path:  # a limit that _find_bad does not model, such as orjson's nesting depth
            raise TypeError(
                f"data is not JSON-compatible ({exc}); use JSON values or an instance of a "
                f"class registered with @event_type"
            ) from None
        raise TypeError(
            f"{path} is not JSON-compatible: {bad!r} (of type {type(bad).__name__}); use JSON "
            f"values or an instance of a class registered with @event_type"
        ) from None


def _find_bad(value: object, path: str, source: object = None) -> tuple[str, object]:
    # *value* is already unstructured: a typed payload is allowed only as the whole of ``data``
    # (that is all ``to_dict`` unstructures), so one nested inside is reported as bad.
    # *source* is what *value* was unstructured from, where known: the fields of an attrs
    # instance are named as attributes.
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
        sources = source if isinstance(source, (list, tuple)) else ()
        for i, item in enumerate(value):
            found = _find_bad(item, f"{path}[{i}]", sources[i] if i < len(sources) else None)
            if found[0]:
                return found
        return "", None
    if isinstance(value, dict):
        fields = attrs.has(type(source))
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} key", key
            if fields:
                found = _find_bad(item, f"{path}.{key}", getattr(source, key, None))
            else:
                inner = source.get(key) if isinstance(source, dict) else None
                found = _find_bad(item, f"{path}[{key!r}]", inner)
            if found[0]:
                return found
        return "", None
    return path, value
