"""The AsyncAPI 3.0 document of the typed events (issue 13): its shape, its validity against
the official AsyncAPI 3.0 JSON Schema, the JSON Schemas of the payloads, the
``trio-realtime asyncapi`` command and ``/asyncapi.json`` on the HTTP side port.

The official schema is ``tests/data/asyncapi-3.0.0.schema.json`` (vendored from the npm
package ``@asyncapi/specs``, see ``tests/data/asyncapi-README.txt``), checked with the
``jsonschema`` library: neither is the code under test.
"""

from __future__ import annotations

import copy
import enum
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NewType

import attrs
import jsonschema
import pytest
import trio
from conftest import TIMEOUT, running_broker
from test_http import get
from test_interop import in_thread

from trio_realtime import event_type
from trio_realtime._payloads import registered_type, temporary_event_type
from trio_realtime.integrations import ASYNCAPI_VERSION, asyncapi_document, payload_schema

DATA: Final = Path(__file__).parent / "data"
#: The official AsyncAPI 3.0.0 JSON Schema (draft-07, its definitions bundled by ``$id``).
ASYNCAPI_SCHEMA: Final = json.loads(
    (DATA / "asyncapi-3.0.0.schema.json").read_text(encoding="utf-8")
)
VALIDATOR: Final = jsonschema.Draft7Validator(ASYNCAPI_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Typed payloads of every kind the walker describes (the round-trip tests use them too)


class Currency(enum.Enum):
    """A currency, by its ISO 4217 code."""

    EUR = "EUR"
    USD = "USD"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class LineItem:
    """One line of an order."""

    sku: str
    price: float = attrs.field(metadata={"description": "The unit price."})
    quantity: int = 1


@attrs.frozen
class Address:
    street: str
    city: str
    postcode: str | None = None


@event_type("test_asyncapi.order.placed", topic="test_asyncapi.orders")
@attrs.frozen
class OrderPlaced:
    """An order was placed.

    Published once per order, when it is paid.
    """

    order_id: int
    items: list[LineItem]
    currency: Currency
    placed_at: datetime
    ship_to: Address | None = None
    priority: Priority = Priority.LOW
    channel: Literal["web", "shop"] = "web"
    tags: frozenset[str] = frozenset()
    notes: dict[str, str] = attrs.Factory(dict)
    dimensions: tuple[float, float, float] | None = None
    due: date | None = None
    counts: dict[int, int] = attrs.Factory(dict)
    history: tuple[int, ...] = ()


@event_type("test_asyncapi.order.cancelled", topic="test_asyncapi.orders")
@attrs.frozen
class OrderCancelled:
    """An order was cancelled."""

    order_id: int
    reason: str | int


@event_type("test_asyncapi.reading", topic="test_asyncapi.sensors.*.temperature")
@attrs.frozen
class Reading:
    """A temperature reading."""

    celsius: float
    at: datetime


@event_type("test_asyncapi.log", topic="test_asyncapi.logs.>")
@attrs.frozen
class LogLine:
    text: str
    level: Literal[10, 20, 30] = 20


@event_type("test_asyncapi.tree")
@attrs.frozen
class TreeNode:
    """A tree: a payload whose class refers to itself."""

    value: int
    children: list[TreeNode] = attrs.Factory(list)


Cents = NewType("Cents", int)


@attrs.define
class Odd:
    _secret: str
    amount: Cents
    label: Annotated[str, "a label"]
    derived: int = attrs.field(init=False, default=0)
    marker: Any = attrs.field(factory=object)


class Mixed(enum.Enum):
    A = (1, 2)


@attrs.frozen
class WithMixed:
    m: Mixed


#: The classes above that are registered, in the order the tests describe them.
TYPES: Final = (OrderPlaced, OrderCancelled, Reading, LogLine, TreeNode)


def document(**options: Any) -> dict[str, Any]:
    """The document of :data:`TYPES`, through JSON (as a consumer reads it)."""
    made = asyncapi_document(TYPES, **options)
    parsed: dict[str, Any] = json.loads(json.dumps(made))
    assert parsed == made  # nothing in it that JSON changes (tuples, non-str keys)
    return parsed


def errors(doc: dict[str, Any]) -> list[str]:
    """What the official AsyncAPI 3.0 schema finds wrong with *doc*."""
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in VALIDATOR.iter_errors(doc)]


def refs(value: Any) -> Iterator[str]:
    """Every ``$ref`` in *value*."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """The value a local ``$ref`` (a JSON pointer) points to in *doc*."""
    assert ref.startswith("#/"), ref
    found: Any = doc
    for part in ref[2:].split("/"):
        found = found[part.replace("~1", "/").replace("~0", "~")]
    return found


# ---------------------------------------------------------------------------------------------
# The document


def test_the_document_is_valid_asyncapi_3() -> None:
    """The document of every kind of payload validates against the official AsyncAPI 3.0.0
    JSON Schema (which checks the payloads' JSON Schemas against draft-07 too)."""
    doc = document(server="ws://127.0.0.1:8765", description="The shop's events.")
    assert doc["asyncapi"] == ASYNCAPI_VERSION == "3.0.0"
    assert errors(doc) == []


def _bad_action(doc: dict[str, Any]) -> None:
    next(iter(doc["operations"].values()))["action"] = "publish"  # (AsyncAPI 2's word)


def _bad_payload_schema(doc: dict[str, Any]) -> None:
    doc["components"]["schemas"]["LineItem"]["type"] = "objekt"


def _no_host(doc: dict[str, Any]) -> None:
    del doc["servers"]["broker"]["host"]


def _bad_parameter(doc: dict[str, Any]) -> None:
    channel = doc["channels"]["test_asyncapi.sensors._.temperature"]
    channel["parameters"]["token3"]["schema"] = {"type": "string"}  # (AsyncAPI 2's form)


@pytest.mark.parametrize("change", [_bad_action, _bad_payload_schema, _no_host, _bad_parameter])
def test_the_official_schema_finds_a_broken_document(change: Any) -> None:
    """The validation is not vacuous: breaking the document in one place is an error."""
    doc = copy.deepcopy(document(server="ws://127.0.0.1:8765"))
    assert errors(doc) == []
    change(doc)
    assert errors(doc)


def test_every_reference_resolves_and_operations_use_their_channel_s_messages() -> None:
    """Each ``$ref`` points into the document; an operation's messages are its channel's."""
    doc = document()
    for ref in refs(doc):
        resolve(doc, ref)
    for operation in doc["operations"].values():
        channel = resolve(doc, operation["channel"]["$ref"])
        for message in operation["messages"]:
            assert message["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
            assert resolve(doc, message["$ref"]) in channel["messages"].values()


def test_topics_are_channels_and_types_their_messages() -> None:
    """One channel per topic (two types on one topic share it), with a send and a receive
    operation; each message's payload is the event object with the type's name and schema."""
    doc = document()
    orders = doc["channels"]["test_asyncapi.orders"]
    assert orders["address"] == "test_asyncapi.orders"
    assert orders["x-trio-realtime-pattern"] == "test_asyncapi.orders"
    assert "parameters" not in orders
    assert sorted(orders["messages"]) == [
        "test_asyncapi.order.cancelled",
        "test_asyncapi.order.placed",
    ]
    placed = resolve(doc, orders["messages"]["test_asyncapi.order.placed"]["$ref"])
    assert placed["name"] == "test_asyncapi.order.placed"
    assert placed["title"] == "OrderPlaced"
    assert placed["summary"] == "An order was placed."
    assert placed["description"].endswith("Published once per order, when it is paid.")
    envelope = placed["payload"]
    assert envelope["required"] == ["topic", "type", "data"]
    assert envelope["properties"]["type"]["const"] == "test_asyncapi.order.placed"
    assert envelope["properties"]["topic"]["const"] == "test_asyncapi.orders"
    assert envelope["properties"]["data"] == {"$ref": "#/components/schemas/OrderPlaced"}
    actions = {
        (op["action"], op["channel"]["$ref"])
        for op in doc["operations"].values()
        if op["channel"]["$ref"] == "#/channels/test_asyncapi.orders"
    }
    assert actions == {
        ("send", "#/channels/test_asyncapi.orders"),
        ("receive", "#/channels/test_asyncapi.orders"),
    }
    assert len(doc["operations"]) == 2 * len(doc["channels"]) == 2 * 4


def test_wildcards_are_address_parameters() -> None:
    """A pattern's ``*`` is a parameter named by its token's position and a final ``>`` is
    ``{rest}``; the payload's topic is a regular expression of the matching topics."""
    doc = document()
    sensors = doc["channels"]["test_asyncapi.sensors._.temperature"]
    assert sensors["address"] == "test_asyncapi.sensors.{token3}.temperature"
    assert list(sensors["parameters"]) == ["token3"]
    assert sensors["x-trio-realtime-pattern"] == "test_asyncapi.sensors.*.temperature"
    logs = doc["channels"]["test_asyncapi.logs._"]
    assert logs["address"] == "test_asyncapi.logs.{rest}"
    assert list(logs["parameters"]) == ["rest"]
    message = resolve(doc, sensors["messages"]["test_asyncapi.reading"]["$ref"])
    topic = jsonschema.Draft7Validator(message["payload"]["properties"]["topic"])
    assert topic.is_valid("test_asyncapi.sensors.kitchen-2.temperature")
    assert not topic.is_valid("test_asyncapi.sensors.a.b.temperature")
    assert not topic.is_valid("test_asyncapi.sensors.*.temperature")
    tail = jsonschema.Draft7Validator(
        resolve(doc, logs["messages"]["test_asyncapi.log"]["$ref"])["payload"]["properties"][
            "topic"
        ]
    )
    assert tail.is_valid("test_asyncapi.logs.a.b_c.d")
    assert not tail.is_valid("test_asyncapi.logs")
    assert not tail.is_valid("test_asyncapi.logs.")


def test_the_server_is_the_broker_s_url() -> None:
    """``server`` becomes the one server (host, ws or wss, path); without it there is none."""
    assert document(server="wss://events.example.com:443/rt")["servers"]["broker"] == {
        "host": "events.example.com:443",
        "protocol": "wss",
        "pathname": "/rt",
        "title": "trio_realtime broker",
        "description": "A trio_realtime broker: JSON frames over a WebSocket, wire protocol "
        "version 1 (see the document's description).",
    }
    assert "pathname" not in document(server="ws://[::1]:8765/")["servers"]["broker"]
    assert "servers" not in document()
    for bad in ("http://example.com", "ws://", "example.com:8765"):
        with pytest.raises(ValueError, match="ws:// or wss:// URL"):
            asyncapi_document(TYPES, server=bad)


def test_title_version_and_description() -> None:
    """info carries the title, the version, and the caller's description before the text
    that explains the protocol's frames."""
    info = document(title="Shop", version="2.1.0", description="What the shop says.")["info"]
    assert (info["title"], info["version"]) == ("Shop", "2.1.0")
    assert info["description"].startswith("What the shop says.\n\n")
    assert '{"type": "publish", "event": MESSAGE, "ref": 2}' in info["description"]


def test_every_registered_type_by_default_and_only_registered_ones() -> None:
    """Without *types*, every class registered now is described; an unregistered class
    among *types* is a TypeError."""
    doc = asyncapi_document()
    names = {message["name"] for message in doc["components"]["messages"].values()}
    assert {registered_type(cls)[0] for cls in TYPES} <= names  # type: ignore[index]
    assert errors(doc) == []

    @attrs.frozen
    class Unregistered:
        x: int

    with pytest.raises(TypeError, match="is not registered with @event_type"):
        asyncapi_document([Unregistered])


# ---------------------------------------------------------------------------------------------
# The payloads' JSON Schemas


def test_payload_schema_of_each_kind_of_field() -> None:
    """Each field type is described as the converter writes it."""
    schema = payload_schema(OrderPlaced)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["allOf"] == [{"$ref": "#/definitions/OrderPlaced"}]
    defs = schema["definitions"]
    assert sorted(defs) == ["Address", "Currency", "LineItem", "OrderPlaced", "Priority"]
    order = defs["OrderPlaced"]
    assert order["title"] == "OrderPlaced"
    assert order["required"] == ["order_id", "items", "currency", "placed_at"]
    props = order["properties"]
    integer = {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1}
    assert props["order_id"] == integer
    assert props["items"] == {"type": "array", "items": {"$ref": "#/definitions/LineItem"}}
    assert props["currency"] == {"$ref": "#/definitions/Currency"}
    assert props["placed_at"]["type"] == "string"
    assert props["placed_at"]["format"] == "date-time"
    assert props["ship_to"] == {
        "anyOf": [{"$ref": "#/definitions/Address"}, {"type": "null"}],
        "default": None,
    }
    assert props["priority"] == {"$ref": "#/definitions/Priority", "default": 1}
    assert props["channel"] == {"enum": ["web", "shop"], "default": "web"}
    assert props["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
        "default": [],
    }
    assert props["notes"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    }
    number = {"type": "number"}
    assert props["dimensions"]["anyOf"][0] == {
        "type": "array",
        "minItems": 3,
        "maxItems": 3,
        "items": [number, number, number],
    }
    assert props["due"]["anyOf"][0]["format"] == "date"
    assert props["counts"]["propertyNames"] == {"pattern": "^-?[0-9]+$"}
    assert props["history"] == {"type": "array", "items": integer, "default": []}
    assert defs["Currency"] == {
        "title": "Currency",
        "description": "A currency, by its ISO 4217 code.",
        "type": "string",
        "enum": ["EUR", "USD"],
    }
    assert defs["Priority"] == {"title": "Priority", "type": "integer", "enum": [1, 2]}
    assert defs["LineItem"]["properties"]["price"] == {
        "type": "number",
        "description": "The unit price.",
    }
    assert defs["LineItem"]["description"] == "One line of an order."
    assert "description" not in defs["Address"]  # (no docstring: none inherited either)


def test_a_class_that_refers_to_itself() -> None:
    """A recursive class is one definition that refers to itself."""
    defs = payload_schema(TreeNode)["definitions"]
    assert defs["TreeNode"]["properties"]["children"] == {
        "type": "array",
        "items": {"$ref": "#/definitions/TreeNode"},
        "default": [],
    }


def test_fields_the_converter_skips_or_renames() -> None:
    """A field outside ``__init__`` is neither written nor read: it is left out; a private
    attribute's key keeps its underscore (cattrs uses the attribute's name); Annotated and
    NewType are their underlying type; a default that is not JSON is not given."""
    props = payload_schema(Odd)["definitions"]["Odd"]["properties"]
    assert list(props) == ["_secret", "amount", "label", "marker"]
    assert props["amount"]["type"] == "integer"
    assert props["label"] == {"type": "string"}
    assert props["marker"] == {}


def test_types_the_converter_cannot_write_raise_naming_the_field() -> None:
    """A field type the converter does not write as JSON by itself is a TypeError naming the
    field, unless *schemas* describes it."""

    @attrs.frozen
    class Blob:
        name: str
        raw: bytes

    with pytest.raises(TypeError, match=r"Blob\.raw \(<class 'bytes'>\).*schemas="):
        payload_schema(Blob)
    given = {"type": "string", "description": "Base85 text."}
    schema = payload_schema(Blob, schemas={bytes: given})
    assert schema["definitions"]["Blob"]["properties"]["raw"] == given

    @attrs.frozen
    class BadKeys:
        by_day: dict[date, int]

    with pytest.raises(TypeError, match=r"BadKeys\.by_day .*keys of a mapping"):
        payload_schema(BadKeys)

    with pytest.raises(TypeError, match=r"the enum .*Mixed"):
        payload_schema(WithMixed)
    with pytest.raises(TypeError, match="takes an attrs class"):
        payload_schema(int)


def test_a_type_that_cannot_be_described_fails_the_document() -> None:
    """The document of a registered class with such a field raises the same TypeError."""

    @attrs.frozen
    class Upload:
        raw: bytes

    with (
        temporary_event_type(Upload, "test_asyncapi.upload"),
        pytest.raises(TypeError, match=r"Upload\.raw"),
    ):
        asyncapi_document([Upload])


# ---------------------------------------------------------------------------------------------
# The command and the HTTP side port

APP: Final = '''
import attrs
from trio_realtime import event_type


@event_type("shop.orders.created")
@attrs.frozen
class OrderCreated:
    """An order was placed."""

    order_id: int
    total: float
'''


def run_command(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """``trio-realtime ARGV`` as a process, in *cwd*."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "trio_realtime", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_the_command_prints_the_document_of_the_app_s_types(tmp_path: Path) -> None:
    """``asyncapi --app MODULE`` imports the module and prints its types' document; the
    server is ``--server``, else ``$TRIO_REALTIME_URL``."""
    (tmp_path / "shop_events.py").write_text(APP, encoding="utf-8")
    done = run_command(
        "asyncapi",
        "--app",
        "shop_events",
        "--title",
        "Shop",
        "--api-version",
        "3.0.1",
        cwd=tmp_path,
        env={"TRIO_REALTIME_URL": "wss://events.example.com"},
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert errors(doc) == []
    assert doc["info"]["title"] == "Shop"
    assert doc["info"]["version"] == "3.0.1"
    assert doc["servers"]["broker"]["host"] == "events.example.com"
    assert list(doc["channels"]) == ["shop.orders.created"]
    assert doc["components"]["schemas"]["OrderCreated"]["required"] == ["order_id", "total"]
    done = run_command(
        "asyncapi", "--app", "shop_events", "--server", "ws://10.0.0.1:9000", cwd=tmp_path
    )
    assert json.loads(done.stdout)["servers"]["broker"]["host"] == "10.0.0.1:9000"


def test_the_command_fails_in_one_line(tmp_path: Path) -> None:
    """A module that is not there, a server that is not a WebSocket URL, or a field that
    cannot be described: exit 1 with one line on stderr."""
    (tmp_path / "blobs.py").write_text(
        "import attrs\nfrom trio_realtime import event_type\n\n\n"
        '@event_type("blobs.raw")\n@attrs.frozen\nclass Blob:\n    raw: bytes\n',
        encoding="utf-8",
    )
    for argv, message in [
        (("--app", "no_such_module"), "no module named 'no_such_module'"),
        (("--server", "http://x"), "the server must be a ws:// or wss:// URL"),
        (("--app", "blobs"), "cannot describe Blob.raw"),
    ]:
        done = run_command("asyncapi", *argv, cwd=tmp_path)
        assert done.returncode == 1, done
        assert done.stdout == ""
        assert done.stderr.startswith(f"trio-realtime asyncapi: error: {message}"), done.stderr
        assert done.stderr.count("\n") == 1, done.stderr


def test_the_command_finds_modules_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The current directory is searched first, as ``python -m`` does, even when the
    command's own script directory is first on the path (as for the installed command)."""
    from trio_realtime.cli._asyncapi import import_apps

    (tmp_path / "cwd_events_for_asyncapi.py").write_text("LOADED = True\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_events_for_asyncapi", raising=False)
    import_apps(["cwd_events_for_asyncapi"])
    assert sys.modules["cwd_events_for_asyncapi"].LOADED is True
    monkeypatch.delitem(sys.modules, "cwd_events_for_asyncapi")


def test_serve_app_describes_the_app_s_types_at_asyncapi_json(tmp_path: Path) -> None:
    """``serve --app MODULE`` (or ``app = [...]`` in ``[server]``) imports the module before
    serving, so that the side port's ``/asyncapi.json`` describes its types."""
    from test_cli import ServeProcess
    from test_cli_operations import http_url

    (tmp_path / "serve_shop_events.py").write_text(
        APP.replace("shop.orders.created", "serve.shop.orders"), encoding="utf-8"
    )
    config = tmp_path / "broker.toml"
    config.write_text('[server]\napp = ["serve_shop_events"]\n', encoding="utf-8")
    for options in (("--app", "serve_shop_events"), ("--config", str(config))):
        server = ServeProcess("--store", "none", "--http-port", "0", *options, cwd=tmp_path)
        try:
            status, _, body = get(f"{http_url(server)}/asyncapi.json")
            assert status == 200
            doc = json.loads(body)
            assert errors(doc) == []
            assert list(doc["channels"]) == ["serve.shop.orders"]
        finally:
            assert server.stop()[0] == 0
    done = run_command("serve", "--port", "0", "--app", "no_such_module", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("trio-realtime serve: error: no module named"), done.stderr


async def test_the_http_side_port_serves_the_document() -> None:
    """``/asyncapi.json`` is the document of the process's types, with the broker's URL
    as its server; a type registered later is in the next answer."""

    @attrs.frozen
    class LateComer:
        n: int

    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, trio.open_nursery() as nursery:
            http = await nursery.start(
                lambda task_status: served.broker.serve_http(
                    "127.0.0.1", 0, ws_url=served.url, task_status=task_status
                )
            )
            status, kind, body = await in_thread(lambda: get(f"{http.url}/asyncapi.json"))
            assert (status, kind) == (200, "application/json")
            doc = json.loads(body)
            assert errors(doc) == []
            assert doc == json.loads(json.dumps(asyncapi_document(server=served.url)))
            assert doc["servers"]["broker"]["host"] == served.url.removeprefix("ws://")
            assert "test_asyncapi.orders" in doc["channels"]
            assert "test_asyncapi.late" not in doc["channels"]
            with temporary_event_type(LateComer, "test_asyncapi.late"):
                status, _, body = await in_thread(lambda: get(f"{http.url}/asyncapi.json"))
            assert status == 200
            assert "test_asyncapi.late" in json.loads(body)["channels"]
            nursery.cancel_scope.cancel()


async def test_the_http_side_port_answers_500_for_a_type_it_cannot_describe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A registered type that cannot be described: 500 naming the field, one log line, and
    the side port goes on serving."""

    @attrs.frozen
    class Upload:
        raw: bytes

    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, trio.open_nursery() as nursery:
            http = await nursery.start(served.broker.serve_http, "127.0.0.1", 0)
            with temporary_event_type(Upload, "test_asyncapi.upload"):
                status, kind, body = await in_thread(lambda: get(f"{http.url}/asyncapi.json"))
            assert status == 500
            assert kind.startswith("text/plain")
            assert "cannot describe" in body
            assert "Upload.raw" in body
            assert (await in_thread(lambda: get(f"{http.url}/asyncapi.json")))[0] == 200
            assert (await in_thread(lambda: get(f"{http.url}/healthz")))[0] == 200
            nursery.cancel_scope.cancel()
    logged = [r for r in caplog.records if "/asyncapi.json" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is None
