"""The payload schemas held to the converter both ways, a round trip through the broker by
the AsyncAPI document alone, typed payloads on a pattern, and misfit payloads named by path.

* Every instance the converter writes validates against its class's JSON Schema.
* JSON drawn from a JSON Schema (:func:`from_schema`, below: it reads nothing but the
  schema) is accepted: it structures into the class.
* An event object drawn from a message's payload in the AsyncAPI document, published as a
  ``publish`` frame by a plain WebSocket client (the `websockets` library) on the topic the
  document gives, reaches a typed subscriber of a trio_realtime client as an instance.

``from_schema`` is written here because hypothesis-jsonschema, the library for it, no longer
runs with current Hypothesis (``'many' object has no attribute 'more'``). It knows the
keywords the payload schemas use and refuses any other, so that no constraint is silently
left out; every value it draws is checked against the schema with ``jsonschema``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

import jsonschema
import orjson
import pytest
import trio
from conftest import TIMEOUT, running_broker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from strategies import aware_datetimes, json_values
from test_asyncapi import (
    Address,
    Currency,
    LineItem,
    LogLine,
    OrderCancelled,
    OrderPlaced,
    Priority,
    Reading,
    TreeNode,
)
from test_interop import in_thread, open_peer

from trio_realtime import Bus, Client, Event, open_bus, open_client
from trio_realtime._payloads import check_json, converter, registered_type, structure_payload
from trio_realtime.integrations import asyncapi_document, payload_schema

#: The registered classes of the round trips.
TYPES: Final = (OrderPlaced, OrderCancelled, Reading, LogLine, TreeNode)

# ---------------------------------------------------------------------------------------------
# JSON drawn from a JSON Schema

#: The keywords from_schema honours (or, for the annotations, may ignore).
KEYWORDS: Final = frozenset(
    {
        "$ref",
        "$schema",
        "additionalProperties",
        "allOf",
        "anyOf",
        "const",
        "default",
        "definitions",
        "description",
        "enum",
        "format",
        "items",
        "maxItems",
        "maximum",
        "minItems",
        "minimum",
        "pattern",
        "properties",
        "propertyNames",
        "required",
        "title",
        "type",
        "uniqueItems",
        "maxLength",
    }
)


@st.composite
def rfc3339_times(draw: st.DrawFn) -> str:
    """Any RFC 3339 date-time, in all its spellings (a lowercase ``t`` or ``z``, a leap
    second, the year 0, any number of fraction digits, any offset)."""
    day = draw(st.dates())
    year = draw(st.sampled_from([day.year, 0]))
    text = f"{year:04d}-{day.month:02d}-{day.day:02d}{draw(st.sampled_from('Tt'))}"
    text += f"{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}"
    text += f":{draw(st.integers(0, 60)):02d}"
    if draw(st.booleans()):
        text += "." + draw(st.text("0123456789", min_size=1, max_size=9))
    if draw(st.booleans()):
        return text + draw(st.sampled_from("Zz"))
    sign = draw(st.sampled_from("+-"))
    return text + f"{sign}{draw(st.integers(0, 23)):02d}:{draw(st.integers(0, 59)):02d}"


@st.composite
def rfc3339_dates(draw: st.DrawFn) -> str:
    day = draw(st.dates())
    return f"{draw(st.sampled_from([day.year, 0])):04d}-{day.month:02d}-{day.day:02d}"


def _unique_key(value: Any) -> str:
    """Equal JSON values (1 and 1.0 among them) give equal keys."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return json.dumps(value, sort_keys=True)


def from_schema(schema: dict[str, Any], root: dict[str, Any]) -> SearchStrategy[Any]:
    """JSON values valid against *schema*, whose ``$ref`` point into *root*."""
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"from_schema does not know {sorted(unknown)} in {schema}")
    if "$ref" in schema:
        assert set(schema) <= {"$ref", "default", "description"}, schema
        ref = schema["$ref"]
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return st.deferred(lambda: from_schema(target, root))
    if "allOf" in schema:
        (only,) = schema["allOf"]
        return from_schema(only, root)
    if "anyOf" in schema:
        return st.one_of([from_schema(option, root) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema.get("type", ["null", "boolean", "integer", "number", "string"])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not schema.get("type") and not set(schema) - {"title", "description", "default"}:
        return json_values(max_leaves=5)  # anything
    return st.one_of([_typed(kind, schema, root) for kind in kinds])


def _typed(kind: str, schema: dict[str, Any], root: dict[str, Any]) -> SearchStrategy[Any]:
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        floats = st.floats(allow_nan=False, allow_infinity=False)
        return floats | st.integers(-(2**63), 2**63 - 1)
    if kind == "string":
        pattern = schema.get("pattern")
        if schema.get("format") == "date-time":
            text = rfc3339_times()
        elif schema.get("format") == "date":
            text = rfc3339_dates()
        elif pattern is not None:
            text = st.from_regex(pattern, fullmatch=True)
        else:
            text = st.text(max_size=12)
        if pattern is not None:
            text = text.filter(lambda t: re.search(pattern, t) is not None)
        if "maxLength" in schema:
            text = text.filter(lambda t: len(t) <= schema["maxLength"])
        return text
    if kind == "array":
        items = schema.get("items", {})
        if isinstance(items, list):
            return st.tuples(*(from_schema(item, root) for item in items)).map(list)
        return st.lists(
            from_schema(items, root),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 3), 3),
            unique_by=_unique_key if schema.get("uniqueItems") else None,
        )
    if kind == "object":
        return _objects(schema, root)
    raise ValueError(f"from_schema does not know the type {kind!r}")


@st.composite
def _objects(draw: st.DrawFn, schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    value = {
        name: draw(from_schema(sub, root))
        for name, sub in properties.items()
        if name in required or draw(st.booleans())
    }
    extra = schema.get("additionalProperties", True)
    if extra is False:
        return value
    names = schema.get("propertyNames", {})
    if names:
        keys = st.from_regex(names["pattern"], fullmatch=True)
    elif properties:  # members a class does not have, and no class could ("extra-…")
        keys = st.text(max_size=6).map(lambda k: f"extra-{k}")
    else:
        keys = st.text(max_size=8)
    others = {} if extra is True else extra
    more = draw(
        st.dictionaries(
            keys,
            from_schema(others, root) if others else json_values(max_leaves=3),
            max_size=2 if properties else 4,  # (unknown members of a class are ignored)
        )
    )
    return {**more, **value}


# ---------------------------------------------------------------------------------------------
# Instances

floats: Final = st.floats(allow_nan=False, allow_infinity=False)
line_items: Final = st.builds(
    LineItem, sku=st.text(max_size=8), price=floats, quantity=st.integers(-(2**63), 2**63 - 1)
)
addresses: Final = st.builds(
    Address, street=st.text(max_size=8), city=st.text(max_size=8), postcode=st.none() | st.text()
)
orders: Final = st.builds(
    OrderPlaced,
    order_id=st.integers(-(2**63), 2**64 - 1),
    items=st.lists(line_items, max_size=3),
    currency=st.sampled_from(Currency),
    placed_at=aware_datetimes(),
    ship_to=st.none() | addresses,
    priority=st.sampled_from(Priority),
    channel=st.sampled_from(["web", "shop"]),
    tags=st.frozensets(st.text(max_size=4), max_size=3),
    notes=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
    dimensions=st.none() | st.tuples(floats, floats, floats),
    due=st.none() | st.dates(),
    counts=st.dictionaries(st.integers(-(2**63), 2**63 - 1), st.integers(0, 9), max_size=3),
    history=st.lists(st.integers(0, 2**64 - 1), max_size=3).map(tuple),
)
trees: Final = st.recursive(
    st.builds(TreeNode, value=st.integers(0, 9)),
    lambda children: st.builds(
        TreeNode, value=st.integers(0, 9), children=st.lists(children, max_size=3)
    ),
    max_leaves=8,
)
instances: Final = st.one_of(
    orders,
    st.builds(OrderCancelled, order_id=st.integers(0, 9), reason=st.text() | st.integers(0, 9)),
    st.builds(Reading, celsius=floats, at=aware_datetimes()),
    st.builds(LogLine, text=st.text(), level=st.sampled_from([10, 20, 30])),
    trees,
)


def wire_data(instance: object) -> Any:
    """*instance* as the converter writes it in an event's data, through JSON."""
    return orjson.loads(orjson.dumps(converter.unstructure(instance)))


def validate(value: Any, schema: dict[str, Any]) -> None:
    """Raise unless *value* is valid against *schema*, as JSON Schema draft-07 (the dialect of
    the payload schemas and of AsyncAPI 3.0), formats checked too."""
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    jsonschema.Draft7Validator(schema, format_checker=checker).validate(value)


@settings(max_examples=150, deadline=None)
@given(instances)
def test_what_the_converter_writes_validates(instance: Any) -> None:
    """Every instance, as the event's wire form writes its data, validates against its
    class's schema."""
    check_json(instance)
    written = orjson.loads(orjson.dumps(Event(topic="t", data=instance).to_dict()["data"]))
    assert written == wire_data(instance)
    validate(written, payload_schema(type(instance)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
@pytest.mark.parametrize("cls", [*TYPES, LineItem, Address])
def test_json_drawn_from_the_schema_structures(cls: type, data: st.DataObject) -> None:
    """JSON drawn from a class's schema (and so valid against it) structures into the
    class, and the converter writes the instance back as valid JSON."""
    schema = payload_schema(cls)
    value = data.draw(from_schema(schema, schema))
    validate(value, schema)  # (from_schema is honest)
    instance: object = structure_payload(value, cls)
    assert isinstance(instance, cls)
    validate(wire_data(instance), schema)


def test_the_datetime_pattern_leaves_out_what_python_refuses() -> None:
    """The spellings of RFC 3339 that Python does not read are outside the schema."""
    schema = payload_schema(Reading)
    at = schema["definitions"]["Reading"]["properties"]["at"]
    for refused in (
        "2026-01-02t03:04:05Z",
        "2026-01-02T03:04:05z",
        "2026-01-02T03:04:60Z",
        "0000-01-02T03:04:05Z",
        "2026-01-02T03:04:05",  # (RFC 3339 needs an offset too)
    ):
        assert not re.search(at["pattern"], refused), refused
    assert re.search(at["pattern"], "2026-01-02T03:04:05.123456789+05:30")


def test_a_naive_datetime_is_written_as_utc() -> None:
    """A naive datetime in a typed payload is taken as UTC, as an event's own time is."""
    written = converter.unstructure(Reading(celsius=1.0, at=datetime(2026, 1, 2, 3, 4, 5)))
    assert written["at"] == "2026-01-02T03:04:05+00:00"
    assert structure_payload(written, Reading).at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# The round trip through a broker, by the document alone


def _message_strategy(doc: dict[str, Any]) -> SearchStrategy[tuple[str, dict[str, Any]]]:
    """``(the channel's pattern, an event object)`` drawn from one of the document's messages."""
    options = []
    for channel in doc["channels"].values():
        for ref in channel["messages"].values():
            message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
            options.append(
                st.tuples(
                    st.just(channel["x-trio-realtime-pattern"]),
                    from_schema(message["payload"], doc),
                )
            )
    return st.one_of(options)


DOCUMENT: Final = asyncapi_document(TYPES)


def _payload_schema_of(name: str) -> dict[str, Any]:
    """The payload of the document's message *name*, with the document's components."""
    (message,) = [m for m in DOCUMENT["components"]["messages"].values() if m["name"] == name]
    return {"allOf": [message["payload"]], "components": DOCUMENT["components"]}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(st.lists(_message_strategy(DOCUMENT), min_size=1, max_size=6))
async def test_a_message_drawn_from_the_document_reaches_a_typed_subscriber(
    drawn: list[tuple[str, dict[str, Any]]],
) -> None:
    """A client that knows only the document publishes event objects drawn from its messages
    in ``publish`` frames (over the `websockets` library); a trio_realtime client's typed
    subscription to each class receives them, in order, as instances."""
    by_name = {registered_type(cls)[0]: cls for cls in TYPES}  # type: ignore[index]
    for _, event in drawn:
        validate(event, _payload_schema_of(event["type"]))

    def publish_all(url: str) -> None:
        with open_peer(url) as peer:
            for ref, (_, event) in enumerate(drawn, start=1):
                assert peer.publish(ref, **event)["ref"] == ref

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as client,
            AsyncExitStack() as stack,
        ):
            subs = {cls: await stack.enter_async_context(client.subscribe(cls)) for cls in TYPES}
            await in_thread(lambda: publish_all(served.url))
            for cls, sub in subs.items():
                for _, event in drawn:
                    if by_name[event["type"]] is not cls:
                        continue
                    got = await sub.receive()
                    assert (got.topic, got.type) == (event["topic"], event["type"])
                    assert got.data == structure_payload(event["data"], cls)
                    assert isinstance(got.data, cls)


# ---------------------------------------------------------------------------------------------
# A payload that does not fit, named by its path; typed payloads on a pattern


@asynccontextmanager
async def bus_and_client() -> AsyncIterator[tuple[Bus, Client]]:
    """A bus, served by a broker, and a client of that broker."""
    async with (
        open_bus() as bus,
        running_broker(bus=bus) as served,
        open_client(served.url) as client,
    ):
        yield bus, client


def _order(**changes: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "order_id": 7,
        "items": [{"sku": "a", "price": 1.5}, {"sku": "b", "price": 2}, {"sku": "c", "price": 3}],
        "currency": "EUR",
        "placed_at": "2026-01-02T03:04:05+00:00",
    }
    return {**order, **changes}


def test_structure_payload_names_each_misfit_by_path() -> None:
    """Each field that does not fit is named by its path in the event, with what is wrong."""
    bad = _order(currency="GBP")
    bad["items"][2]["price"] = "cheap"
    del bad["placed_at"]
    with pytest.raises(ValueError) as caught:
        structure_payload(bad, OrderPlaced)
    message = str(caught.value)
    assert message.startswith("data does not fit OrderPlaced: ")
    assert "expected float @ data.items[2].price" in message
    assert "expected Currency @ data.currency" in message
    assert "required field missing @ data.placed_at" in message
    with pytest.raises(ValueError, match="it must be an object of its fields, not list"):
        structure_payload([1, 2], OrderPlaced)
    assert structure_payload(_order(), OrderPlaced).items[1] == LineItem(sku="b", price=2.0)


async def test_a_misfit_is_rejected_with_the_same_message_on_the_bus_and_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A typed subscription on a bus and one on a client of its broker reject the same misfit
    payload with the same message, naming ``data.items[2].price``, and count it."""
    misfit = _order()
    misfit["items"][2]["price"] = "cheap"
    with trio.fail_after(TIMEOUT):
        async with (
            bus_and_client() as (bus, client),
            bus.subscribe(OrderPlaced) as local,
            client.subscribe(OrderPlaced) as remote,
        ):
            sent = await bus.publish("test_asyncapi.orders", misfit)
            await bus.publish("test_asyncapi.orders", _order(order_id=8))
            for sub in (local, remote):
                assert (await sub.receive()).data.order_id == 8  # (the misfit came first)
                assert sub.statistics().rejected == 1
    logged = sorted(
        r.getMessage() for r in caplog.records if r.getMessage().startswith(f"event {sent.id}")
    )
    assert len(logged) == 2
    assert logged[0] == logged[1]
    assert logged[0].endswith(
        "not delivered to subscription 'test_asyncapi.orders': data does not fit OrderPlaced: "
        "invalid value for type, expected float @ data.items[2].price"
    )


async def test_a_typed_payload_that_is_not_json_is_named_by_path() -> None:
    """publish() of a typed payload holding a value that is not JSON raises the same
    TypeError on a bus and on a client, naming the field by its attribute path."""
    order = OrderPlaced(
        order_id=1,
        items=[LineItem("a", 1.0), LineItem("b", 2.0), LineItem("c", object())],  # type: ignore[arg-type]
        currency=Currency.EUR,
        placed_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    messages = []
    with trio.fail_after(TIMEOUT):
        async with bus_and_client() as channels:
            for channel in channels:
                with pytest.raises(TypeError) as caught:
                    await channel.publish(order)
                messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("data.items[2].price is not JSON-compatible: <object object")


async def test_a_type_registered_on_a_pattern() -> None:
    """subscribe(cls) of a class registered on a pattern receives every matching topic as
    instances, on a bus and on a client; publish(obj) needs a topic then."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with trio.fail_after(TIMEOUT):
        async with bus_and_client() as channels:
            for channel in channels:
                async with channel.subscribe(Reading) as sub:
                    assert sub.pattern == "test_asyncapi.sensors.*.temperature"
                    with pytest.raises(TypeError, match=r"registered on the pattern .*publish\("):
                        await channel.publish(Reading(celsius=1.0, at=at))
                    await channel.publish(
                        "test_asyncapi.sensors.kitchen.temperature", Reading(celsius=21.5, at=at)
                    )
                    await channel.publish(
                        "test_asyncapi.sensors.hall.temperature",
                        {"celsius": 19, "at": "2026-01-02T03:04:05Z"},
                    )
                    first, second = await sub.receive(), await sub.receive()
                assert (first.topic, first.type) == (
                    "test_asyncapi.sensors.kitchen.temperature",
                    "test_asyncapi.reading",
                )
                assert first.data == Reading(celsius=21.5, at=at)
                assert second.topic == "test_asyncapi.sensors.hall.temperature"
                assert second.data == Reading(celsius=19.0, at=at)
