"""An AsyncAPI 3.0 document of the typed events: the catalogue other teams read and generate
clients from.

:func:`asyncapi_document` describes, from the point of view of a client of the broker:

* the broker as a server (``ws`` or ``wss``, its host and path) speaking the trio_realtime
  wire protocol, whose JSON frames the document's description explains;
* one *channel* per topic that classes are registered on with
  :func:`~trio_realtime.event_type`. A topic is the channel's address; a pattern's wildcards
  become the address's parameters (``sensors.*.temperature`` is ``sensors.{token2}.temperature``,
  a final ``>`` is ``{rest}``), and the pattern itself is the channel's
  ``x-trio-realtime-pattern``, what a client subscribes to;
* one *message* per registered class: its payload is the wire protocol's event object, whose
  ``type`` is the registered name and whose ``data`` is the class's JSON Schema (see
  :mod:`._schema`);
* two *operations* per channel: ``send`` (publish) and ``receive`` (subscribe).

``trio-realtime asyncapi`` prints it, and the broker's HTTP side port serves it at
``/asyncapi.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from .._payloads import registered_type, registered_types
from .._topics import MAX_TOPIC_LENGTH
from ..protocol import PROTOCOL_VERSION
from ._schema import DATETIME_PATTERN, SchemaBuilder, _doc

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document", "asyncapi_json"]

#: The version of the AsyncAPI specification the documents follow.
ASYNCAPI_VERSION: Final = "3.0.0"
#: The WebSocket subprotocol a client may offer (see the wire protocol's Transport section).
SUBPROTOCOL: Final = f"trio-realtime.v{PROTOCOL_VERSION}"
#: The JSON Schema of one token of a topic.
_TOKEN: Final = "[A-Za-z0-9_-]+"
#: What a key of ``channels``, ``operations`` or ``components`` may hold.
_KEY_CHARS: Final = re.compile(r"[^\w.\-]")

_PROTOCOL_TEXT: Final = f"""\
Each channel is a topic of a trio_realtime broker, and each message an event on it.

**Protocol.** Open a WebSocket to the server (you may offer the subprotocol `{SUBPROTOCOL}`).
Every WebSocket message is a text message holding one JSON frame, an object with a `"type"`,
or a JSON array of frames. Send `{{"type": "hello", "protocol": {PROTOCOL_VERSION}}}` first
(with `"token"` when the broker asks for one); the broker answers `welcome`.

* To *receive* a channel's messages, send
  `{{"type": "subscribe", "id": 1, "pattern": PATTERN}}`, where PATTERN is the channel's
  `x-trio-realtime-pattern` (its address with `*` for a parameter and `>` for `{{rest}}`).
  Each message comes as `{{"type": "event", "subs": [1], "event": MESSAGE}}`.
* To *send* one, send `{{"type": "publish", "event": MESSAGE, "ref": 2}}`; the broker answers
  `{{"type": "ack", "ref": 2, ...}}`, or an `error` frame with that `ref`.

MESSAGE is the event object described by each message's payload: `type` names the event
type, `topic` is the channel's address with its parameters filled in, and `data` is the
typed payload. A publisher may leave out `id`, `time`, `source` and `headers`: the broker
fills them in. The broker pings a quiet connection with `{{"type": "ping"}}`: answer
`{{"type": "pong"}}`.
"""


def _key(text: str) -> str:
    """*text* as a key of a map of the document (``^[\\w\\d.\\-_]+$``)."""
    return _KEY_CHARS.sub("_", text) or "_"


def _unique(key: str, taken: Mapping[str, object]) -> str:
    while key in taken:
        key += "_"
    return key


def _address(pattern: str) -> tuple[str, dict[str, Any], str]:
    """A topic or pattern as a channel address, its parameters, and a regular expression of
    the topics it stands for."""
    tokens = pattern.split(".")
    parts: list[str] = []
    regex: list[str] = []
    parameters: dict[str, Any] = {}
    for i, token in enumerate(tokens, start=1):
        if token == "*":
            name = f"token{i}"
            parameters[name] = {
                "description": f"Token {i} of the topic: one or more of A-Z a-z 0-9 _ -, "
                "where the pattern has *."
            }
            parts.append(f"{{{name}}}")
            regex.append(_TOKEN)
        elif token == ">":
            parameters["rest"] = {
                "description": f"The rest of the topic, from token {i}: one or more tokens "
                "separated by dots, where the pattern has >."
            }
            parts.append("{rest}")
            regex.append(rf"{_TOKEN}(\.{_TOKEN})*")
        else:
            parts.append(token)
            regex.append(re.escape(token))
    return ".".join(parts), parameters, "^" + r"\.".join(regex) + "$"


def _server(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"the server must be a ws:// or wss:// URL, not {url!r}")
    server: dict[str, Any] = {"host": parts.netloc, "protocol": parts.scheme}
    if parts.path not in ("", "/"):
        server["pathname"] = parts.path
    server["title"] = "trio_realtime broker"
    server["description"] = (
        f"A trio_realtime broker: JSON frames over a WebSocket, wire protocol version "
        f"{PROTOCOL_VERSION} (see the document's description)."
    )
    return server


def _event_object(topic: dict[str, Any], name: str, data_ref: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of the wire protocol's event object carrying a typed payload."""
    return {
        "type": "object",
        "description": "An event object of the trio_realtime wire protocol. Members this "
        "schema does not list are ignored.",
        "required": ["topic", "type", "data"],
        "properties": {
            "id": {
                "type": "string",
                "description": "Unique; the broker makes one when a publisher leaves it out.",
            },
            "topic": topic,
            "type": {"const": name, "description": "The event type: what the payload is."},
            "source": {"type": "string", "description": "Who published it, free-form."},
            "time": {
                "type": "string",
                "format": "date-time",
                "pattern": DATETIME_PATTERN,
                "description": "When it was published; the broker puts now when left out.",
            },
            "data": data_ref,
            "headers": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Free-form metadata. The broker sets rtuser to the publisher's "
                "user when it authenticates its clients.",
            },
            "seq": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": 2**63 - 1,
                "description": "Its position in the broker's store, or null if it was not "
                "stored. Only the broker sets it.",
            },
            "reply_to": {
                "type": ["string", "null"],
                "pattern": f"^{_TOKEN}(\\.{_TOKEN})*$",
                "maxLength": MAX_TOPIC_LENGTH,
                "description": "For a request, the topic the reply goes to.",
            },
        },
    }


def asyncapi_document(
    types: Iterable[type] | None = None,
    *,
    title: str = "trio_realtime events",
    version: str = "1.0.0",
    description: str | None = None,
    server: str | None = None,
    schemas: Mapping[Any, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """An AsyncAPI 3.0 document of typed events, as a JSON-compatible dict.

    Each topic (or pattern) that the classes are registered on is a channel, each class a
    message of its channel whose payload is the event object with the class's JSON Schema as
    ``data``, and each channel has a ``send`` and a ``receive`` operation. The document's
    description explains the protocol's frames around the messages.

    Args:
        types: The classes registered with :func:`~trio_realtime.event_type` to describe;
            by default every class registered in this process now.
        title: The document's ``info.title``.
        version: The document's ``info.version``: the version of your event catalogue.
        description: Text put before the description of the protocol, in ``info``.
        server: The broker's URL (``ws://host:port`` or ``wss://…``) as the document's one
            server; without it, the document has no ``servers``.
        schemas: JSON Schemas for field types the converter does not write as JSON by
            itself (those you registered hooks for on ``trio_realtime.converter``), by type.

    Raises:
        TypeError: if one of *types* is not registered, or a field's type cannot be
            described (the message names the field).
        ValueError: if *server* is not a ``ws://`` or ``wss://`` URL.
    """
    registered = registered_types()
    if types is not None:
        chosen = {}
        for cls in types:
            found = registered_type(cls)
            if found is None:
                raise TypeError(f"{cls!r} is not registered with @event_type")
            chosen[cls] = found
        registered = chosen
    builder = SchemaBuilder(ref_template="#/components/schemas/{name}", schemas=schemas)
    by_topic: dict[str, list[tuple[str, type]]] = {}
    for cls, (name, topic) in sorted(registered.items(), key=lambda item: item[1][::-1]):
        by_topic.setdefault(topic, []).append((name, cls))

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for pattern, members in by_topic.items():
        address, parameters, regex = _address(pattern)
        channel_key = _unique(_key(pattern), channels)
        if parameters:
            topic_schema: dict[str, Any] = {
                "type": "string",
                "pattern": regex,
                "maxLength": MAX_TOPIC_LENGTH,
            }
            topic_schema["description"] = f"A topic that matches the pattern {pattern}."
        else:
            topic_schema = {"const": pattern, "description": "The topic."}
        channel_messages: dict[str, Any] = {}
        for name, cls in members:
            message_key = _unique(_key(name), messages)
            message: dict[str, Any] = {"name": name, "title": cls.__name__}
            doc = _doc(cls)
            if doc is not None:
                message["summary"] = doc.splitlines()[0]
                message["description"] = doc
            message["contentType"] = "application/json"
            message["payload"] = _event_object(topic_schema, name, builder.ref(cls))
            messages[message_key] = message
            channel_messages[message_key] = {"$ref": f"#/components/messages/{message_key}"}
        channel: dict[str, Any] = {"address": address, "title": pattern}
        channel["description"] = (
            f"The events on the topics that match {pattern}."
            if parameters
            else f"The events on the topic {pattern}."
        )
        channel["messages"] = channel_messages
        if parameters:
            channel["parameters"] = parameters
        channel["x-trio-realtime-pattern"] = pattern
        channels[channel_key] = channel
        refs = [{"$ref": f"#/channels/{channel_key}/messages/{key}"} for key in channel_messages]
        operations[_unique(f"publish.{channel_key}", operations)] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_key}"},
            "title": f"Publish on {pattern}",
            "description": 'Sent as {"type": "publish", "event": MESSAGE, "ref": N}; the broker '
            'answers {"type": "ack", "ref": N} once it routed (and stored) the event.',
            "messages": refs,
        }
        operations[_unique(f"subscribe.{channel_key}", operations)] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{channel_key}"},
            "title": f"Subscribe to {pattern}",
            "description": f'After {{"type": "subscribe", "id": N, "pattern": "{pattern}"}}, '
            'each event comes as {"type": "event", "subs": [N], "event": MESSAGE}.',
            "messages": refs,
        }

    info: dict[str, Any] = {"title": title, "version": version}
    info["description"] = (
        _PROTOCOL_TEXT if description is None else f"{description}\n\n{_PROTOCOL_TEXT}"
    )
    document: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION, "info": info}
    if server is not None:
        document["servers"] = {"broker": _server(server)}
    document["defaultContentType"] = "application/json"
    document["channels"] = channels
    document["operations"] = operations
    document["components"] = {"schemas": builder.definitions, "messages": messages}
    return document


def asyncapi_json(server: str | None = None) -> bytes:
    """:func:`asyncapi_document` of every registered class, as indented JSON (UTF-8).

    Raises:
        TypeError: if a field's type cannot be described (the message names the field).
        ValueError: if *server* is not a ``ws://`` or ``wss://`` URL.
    """
    return orjson.dumps(asyncapi_document(server=server), option=orjson.OPT_INDENT_2) + b"\n"
