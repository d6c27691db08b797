"""JSON Schemas of typed payloads: what the event converter writes and reads for an attrs class.

:class:`SchemaBuilder` walks an attrs class's fields and their types, and describes each the
way ``trio_realtime.converter`` (cattrs' orjson preset, with datetimes as text) unstructures
it: a nested attrs class becomes an object schema of its own, referred to by name; an enum the
list of its values; ``X | None`` an ``anyOf`` with null; a field with a default an optional
property. The schemas are JSON Schema draft-07, the dialect AsyncAPI 3.0's Schema Object
extends (so a fixed-length tuple is ``items`` as an array, not ``prefixItems``).

Why a walker of our own: no maintained library describes attrs classes as *this converter*
writes them. pydantic does not take attrs classes; msgspec's ``json.schema`` does, but for
msgspec's own encoding (2020-12 ``prefixItems`` and ``$defs``, bytes in base64, unions of
classes refused), which is not what cattrs sends or accepts. The walker follows the same
type dispatch as cattrs, and the tests hold it to the converter both ways: every unstructured
instance validates, and JSON drawn from a schema structures.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections import abc
from datetime import date, datetime
from typing import Any, Final

import attrs
import orjson

from .._payloads import converter

__all__ = ["JSON_SCHEMA_DIALECT", "SchemaBuilder", "payload_schema"]

#: The JSON Schema dialect of the schemas (the one AsyncAPI 3.0's Schema Object extends).
JSON_SCHEMA_DIALECT: Final = "http://json-schema.org/draft-07/schema#"

#: The integers an event's data may hold (what the broker's JSON library keeps exact).
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**64 - 1

#: An aware datetime as the converter writes it (``datetime.isoformat``) and as Python reads
#: it: RFC 3339 (``format: date-time``) less what ``datetime.fromisoformat`` refuses, a
#: lowercase ``t`` or ``z``, a leap second and the year 0.
DATETIME_PATTERN: Final = (
    r"^(?!0000)[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
DATE_PATTERN: Final = r"^(?!0000)[0-9]{4}-[0-9]{2}-[0-9]{2}$"

_SIMPLE: Final[dict[Any, dict[str, Any]]] = {
    str: {"type": "string"},
    bool: {"type": "boolean"},
    int: {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX},
    float: {"type": "number"},
    types.NoneType: {"type": "null"},
    None: {"type": "null"},
    typing.Any: {},
    datetime: {"type": "string", "format": "date-time", "pattern": DATETIME_PATTERN},
    date: {"type": "string", "format": "date", "pattern": DATE_PATTERN},
}
_UNIONS: Final = (typing.Union, types.UnionType)
_ARRAYS: Final = (list, abc.Sequence, abc.MutableSequence)
_SETS: Final = (set, frozenset, abc.Set, abc.MutableSet)
_MAPPINGS: Final = (dict, abc.Mapping, abc.MutableMapping)
#: Default factories whose value is known without calling user code.
_EMPTY: Final[dict[Any, Any]] = {list: [], dict: {}, set: [], frozenset: [], tuple: []}
#: What a name in ``components.schemas`` (or ``definitions``) may hold.
_NAME_CHARS: Final = re.compile(r"[^\w.\-]")


def _doc(cls: type) -> str | None:
    """The class's own docstring (not one inherited, such as Enum's), cleaned."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _json_value(value: object) -> tuple[bool, Any]:
    """``(True, value as JSON)`` if the converter writes *value* as JSON, else ``(False, None)``."""
    plain = converter.unstructure(value)
    try:
        return True, orjson.loads(orjson.dumps(plain))
    except (TypeError, orjson.JSONEncodeError):
        return False, None


class SchemaBuilder:
    """Builds JSON Schemas of types, collecting the named ones (attrs classes, enums).

    Args:
        ref_template: How a named schema is referred to: ``{name}`` is its name
            (``"#/components/schemas/{name}"`` in an AsyncAPI document).
        schemas: Schemas for types the walker does not know, by type: for the types you
            registered hooks for on ``trio_realtime.converter``. They are used as they are.

    Attributes:
        definitions: The named schemas built so far, by name.
    """

    def __init__(
        self,
        *,
        ref_template: str = "#/definitions/{name}",
        schemas: typing.Mapping[Any, typing.Mapping[str, Any]] | None = None,
    ) -> None:
        self.definitions: dict[str, dict[str, Any]] = {}
        self._ref_template = ref_template
        self._given = dict(schemas or {})
        self._names: dict[Any, str] = {}

    def name_of(self, cls: type) -> str:
        """The name of *cls*'s schema among the definitions (its class name, made unique)."""
        name = self._names.get(cls)
        if name is None:
            taken = set(self._names.values())
            name = cls.__name__
            if name in taken:
                name = _NAME_CHARS.sub("_", f"{cls.__module__}.{cls.__qualname__}")
            while name in taken:
                name += "_"
            self._names[cls] = name
        return name

    def ref(self, cls: type) -> dict[str, Any]:
        """A reference to *cls*'s schema, built (with the schemas it refers to) if need be."""
        name = self.name_of(cls)
        if name not in self.definitions:
            self.definitions[name] = {}  # (a placeholder, for classes that refer to themselves)
            self.definitions[name] = (
                self._attrs_schema(cls) if attrs.has(cls) else self._enum_schema(cls)
            )
        return {"$ref": self._ref_template.format(name=name)}

    def schema(self, tp: Any, where: str) -> dict[str, Any]:
        """The JSON Schema of the type *tp*; *where* names it in errors (``Order.items``).

        Raises:
            TypeError: if the converter does not write *tp* as JSON by itself (a ``bytes``
                field, or a type of your own), and *schemas* does not describe it.
        """
        if tp in self._given:
            return dict(self._given[tp])
        if tp in _SIMPLE:
            return dict(_SIMPLE[tp])
        if isinstance(tp, typing.NewType):
            return self.schema(tp.__supertype__, where)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.schema(args[0], where)
        if isinstance(tp, type) and (attrs.has(tp) or issubclass(tp, enum.Enum)):
            return self.ref(tp)
        if origin is typing.Literal:
            return self._literal_schema(args, where)
        if origin in _UNIONS:
            return {"anyOf": [self.schema(arg, where) for arg in args]}
        if tp in (list, tuple) or origin in _ARRAYS or tp in _ARRAYS:
            return {"type": "array", "items": self.schema(args[0] if args else Any, f"{where}[]")}
        if tp in _SETS or origin in _SETS:
            items = self.schema(args[0] if args else Any, f"{where}[]")
            return {"type": "array", "items": items, "uniqueItems": True}
        if origin is tuple:
            return self._tuple_schema(args, where)
        if tp in _MAPPINGS or origin in _MAPPINGS:
            return self._mapping_schema(args, where)
        raise TypeError(
            f"cannot describe {where} ({tp!r}) in JSON Schema: the event converter does not "
            f"write it as JSON by itself; if you registered hooks for it on "
            f"trio_realtime.converter, pass its schema in schemas={{type: schema}}"
        )

    def _attrs_schema(self, cls: type) -> dict[str, Any]:
        try:
            attrs.resolve_types(cls)
        except NameError as exc:
            raise TypeError(
                f"cannot describe {cls.__qualname__}: an annotation does not resolve ({exc}); "
                f"define the types it names at module level"
            ) from None
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if not field.init:  # the converter neither writes nor reads it
                continue
            where = f"{cls.__qualname__}.{field.name}"
            prop = self.schema(field.type if field.type is not None else Any, where)
            description = field.metadata.get("description")
            if isinstance(description, str):
                prop = {**prop, "description": description}
            default = field.default
            if default is attrs.NOTHING:
                required.append(field.name)
            elif isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                factory = default.factory
                if not default.takes_self and factory in _EMPTY:
                    prop = {**prop, "default": _EMPTY[factory]}
            else:
                ok, value = _json_value(default)
                if ok:
                    prop = {**prop, "default": value}
            properties[field.name] = prop
        schema: dict[str, Any] = {"title": cls.__name__, "type": "object"}
        if (doc := _doc(cls)) is not None:
            schema["description"] = doc
        schema["properties"] = properties
        if required:
            schema["required"] = required
        return schema

    def _enum_schema(self, cls: type[enum.Enum]) -> dict[str, Any]:
        values = [member.value for member in cls]
        schema: dict[str, Any] = {"title": cls.__name__}
        if (doc := _doc(cls)) is not None:
            schema["description"] = doc
        kinds = {_json_type(value) for value in values}
        if None in kinds or not values:
            raise TypeError(
                f"cannot describe the enum {cls.__qualname__}: its values must be strings, "
                f"numbers or booleans, not {values!r}"
            )
        if len(kinds) == 1:
            schema["type"] = kinds.pop()
        schema["enum"] = values
        return schema

    def _literal_schema(self, args: tuple[Any, ...], where: str) -> dict[str, Any]:
        values = [arg.value if isinstance(arg, enum.Enum) else arg for arg in args]
        if any(_json_type(value) is None for value in values):
            raise TypeError(f"cannot describe {where}: its Literal values are not JSON {values!r}")
        return {"const": values[0]} if len(values) == 1 else {"enum": values}

    def _tuple_schema(self, args: tuple[Any, ...], where: str) -> dict[str, Any]:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": self.schema(args[0], f"{where}[]")}
        if args == ((),):  # tuple[()]
            args = ()
        items = [self.schema(arg, f"{where}[{i}]") for i, arg in enumerate(args)]
        schema: dict[str, Any] = {"type": "array", "minItems": len(items)}
        schema["maxItems"] = len(items)
        if items:
            schema["items"] = items
        return schema

    def _mapping_schema(self, args: tuple[Any, ...], where: str) -> dict[str, Any]:
        key, value = args if args else (str, Any)
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": self.schema(value, f"{where}[]"),
        }
        if key is str or key is typing.Any:
            return schema
        if key is int:  # written as decimal text, read back with int()
            schema["propertyNames"] = {"pattern": r"^-?[0-9]+$"}
            return schema
        if isinstance(key, type) and issubclass(key, str) and issubclass(key, enum.Enum):
            schema["propertyNames"] = {"enum": [member.value for member in key]}
            return schema
        raise TypeError(
            f"cannot describe {where} ({key!r} keys) in JSON Schema: the keys of a mapping "
            f"must be str, int or a str enum"
        )


def _json_type(value: object) -> str | None:
    """The JSON type of a Python scalar, or None if it is not one."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def payload_schema(
    cls: type, *, schemas: typing.Mapping[Any, typing.Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """A standalone JSON Schema (draft-07) of the ``data`` of events that carry *cls*.

    The schema describes the JSON that the event converter writes for an instance of the
    attrs class *cls*, and that a typed subscription accepts: one property per field
    (``attrs.field(metadata={"description": ...})`` describes it), required unless it has
    a default, and the nested attrs classes and enums among ``definitions``.

    Args:
        cls: An attrs class (registered with :func:`~trio_realtime.event_type` or not).
        schemas: Schemas for field types the converter does not write as JSON by itself
            (those you registered hooks for), by type.

    Raises:
        TypeError: if *cls* is not an attrs class, or a field's type cannot be described
            (the message names the field).
    """
    if not attrs.has(cls):
        raise TypeError(f"payload_schema() takes an attrs class, not {cls!r}")
    builder = SchemaBuilder(schemas=schemas)
    root = builder.ref(cls)
    return {"$schema": JSON_SCHEMA_DIALECT, "allOf": [root], "definitions": builder.definitions}
