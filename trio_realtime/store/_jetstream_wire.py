"""What :class:`~trio_realtime.store.JetStreamStore` sends to NATS and gets back.

Two parts: how an event becomes a stream message and back (the payload, the subject, the
``Nats-Msg-Id`` header), and :class:`Exchange`, the store's asyncio side: it runs on the NATS
connection's loop (through :meth:`~trio_realtime._nats.NatsConnection.run`, one crossing per
call), publishes a group of appends at once and collects their acknowledgements, and asks for
pages of stored messages (JetStream's batched *direct get*), all through one subscription to
the store's own reply subjects.

A stored message's payload is one line of JSON, a newline, and the event's ``data`` as JSON
text::

    [1, id, type, source, time_us, headers_json_or_null, reply_to_or_null, origin_or_null]
    {"the": "data"}

so that ``data`` is kept byte for byte as the other stores keep it (its size counts the same
for ``max_bytes``) and never encoded twice. JSON from orjson has no raw newline, so the first
newline ends the line. The topic is the subject after the store's prefix; the seq is the
stream sequence.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import TYPE_CHECKING, Any, Final

import orjson

from .._topics import validate_topic
from ._codec import decode_row, row_size

if TYPE_CHECKING:
    from nats.aio.client import Client as _NatsClient
    from nats.aio.msg import Msg as _NatsMsg

    from .._event import Event
    from ._codec import Row

__all__ = [
    "ACK_NOT_SENT",
    "ACK_NO_REPLY",
    "FORMAT",
    "Exchange",
    "Page",
    "decode_message",
    "encode_message",
    "msg_id",
]

#: The version of the payload's format (its first item).
FORMAT: Final = 1
#: The longest event id used as it is for ``Nats-Msg-Id``; a longer one (or one with
#: characters a header cannot carry) is replaced by a digest of it.
MAX_PLAIN_MSG_ID: Final = 128
_DIGEST_MARK: Final = "sha256:"
#: Seconds between two looks at the connection while answers are awaited.
_LOST_CHECK: Final = 0.1

MSG_ID: Final = "Nats-Msg-Id"
BATCH_ID: Final = "Nats-Batch-Id"
BATCH_SEQUENCE: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"

#: An append's acknowledgement, when none came in time (it may or may not be stored).
ACK_NO_REPLY: Final = b"\x00no reply"
#: An append's acknowledgement, when it could not even be sent (it is not stored).
ACK_NOT_SENT: Final = b"\x00not sent"


def msg_id(event_id: str) -> str:
    """The ``Nats-Msg-Id`` of the event *event_id*: the id itself when a header can carry it
    as it is (printable ASCII, no space, at most :data:`MAX_PLAIN_MSG_ID` characters), else
    ``sha256:`` and its digest (an id beginning so is digested too, so no two ids share one)."""
    if (
        len(event_id) <= MAX_PLAIN_MSG_ID
        and event_id.isascii()
        and event_id.isprintable()
        and " " not in event_id
        and not event_id.startswith(_DIGEST_MARK)
    ):
        return event_id
    return _DIGEST_MARK + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()


def encode_message(row: Row, origin: str | None) -> bytes:
    """The payload of the stream message that stores *row* (see the module docstring)."""
    id_, _topic, type_, source, micros, data_json, headers_json, reply_to = row
    line = orjson.dumps([FORMAT, id_, type_, source, micros, headers_json, reply_to, origin])
    return line + b"\n" + data_json.encode()


def decode_message(topic: str, seq: int, payload: bytes) -> tuple[Event, str | None, int]:
    """The event a stream message stores, its origin (None if it has none), and its
    :func:`~trio_realtime.store.approximate_size`.

    Raises:
        ValueError: if the message is not one a store wrote (the error says why).
    """
    end = payload.find(b"\n")
    if end < 0:
        raise ValueError("no newline after the envelope")
    try:
        meta = orjson.loads(payload[:end])
        data_json = payload[end + 1 :].decode()
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if type(meta) is not list or len(meta) < 8 or meta[0] != FORMAT:
        raise ValueError("not an envelope of format 1")
    _, id_, type_, source, micros, headers_json, reply_to, origin = meta[:8]
    if not (
        type(id_) is str
        and type(type_) is str
        and type(source) is str
        and type(micros) is int
        and (headers_json is None or type(headers_json) is str)
        and (reply_to is None or type(reply_to) is str)
        and (origin is None or type(origin) is str)
    ):
        raise ValueError("an envelope field has the wrong type")
    validate_topic(topic)  # (InvalidTopic is a ValueError)
    row: Row = (id_, topic, type_, source, micros, data_json, headers_json, reply_to)
    try:
        event = decode_row((seq, *row))
    except (orjson.JSONDecodeError, TypeError, OverflowError) as exc:
        raise ValueError(f"undecodable event: {exc}") from None
    if type(event.headers) is not dict:
        raise ValueError("headers are not an object")
    return event, origin, row_size(row)


# ---------------------------------------------------------------------------------------------
# The asyncio side


class Page:
    """(asyncio side) The messages of one direct get, up to its end-of-batch status."""

    __slots__ = ("done", "messages", "status")

    def __init__(self) -> None:
        self.messages: list[_NatsMsg] = []
        #: The status message that ended the page (None while it goes on).
        self.status: _NatsMsg | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, msg: _NatsMsg) -> None:
        headers = msg.headers
        if headers and "Status" in headers:
            self.status = msg
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.messages.append(msg)


class _Ack:
    """(asyncio side) The acknowledgement of one append."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.reply: _NatsMsg | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, msg: _NatsMsg) -> None:
        if self.reply is None:
            self.reply = msg
            self.done.set_result(None)


class Exchange:
    """(asyncio side) The store's requests and their replies, on one subscription.

    Every method runs on the NATS connection's asyncio loop (call it through
    :meth:`~trio_realtime._nats.NatsConnection.run`).
    """

    def __init__(self, nc: _NatsClient) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._next = 0
        self._waiting: dict[str, _Ack | Page] = {}
        self._sub: Any = None

    async def start(self) -> None:
        """Subscribe to the replies (nats-py subscribes again after a reconnect)."""
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_reply)

    async def stop(self) -> None:
        """Unsubscribe (idempotent)."""
        sub, self._sub = self._sub, None
        self._waiting.clear()
        if sub is not None and not self._nc.is_closed:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - closing: nothing to do about it
                pass

    async def _on_reply(self, msg: _NatsMsg) -> None:
        waiting = self._waiting.get(msg.subject)
        if waiting is not None:
            waiting.add(msg)

    async def _wait(self, futures: list[asyncio.Future[None]], timeout: float) -> None:
        """Wait until *futures* are done, *timeout* seconds at most, or the connection is lost
        (then what was sent may never be answered: the caller sends it again once NATS is
        back, which the ``Nats-Msg-Id`` makes harmless)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = {future for future in futures if not future.done()}
        while pending and self._nc.is_connected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            _, pending = await asyncio.wait(pending, timeout=min(remaining, _LOST_CHECK))

    def _reply_to(self, waiting: _Ack | Page) -> str:
        self._next += 1
        subject = f"{self._prefix}.{self._next}"
        self._waiting[subject] = waiting
        return subject

    async def publish(
        self, appends: list[list[tuple[str, bytes, str]]], timeout: float
    ) -> list[bytes | tuple[bytes, dict[str, str]]]:
        """Publish each append of *appends* (its messages as ``(subject, payload, msg id)``)
        and wait for their acknowledgements, at most *timeout* seconds.

        An append of one event is one JetStream publish; one of several is an atomic batch
        (stored all together or not at all). They are published in order, on one connection,
        so they get seqs in that order. Returns, for each append, its acknowledgement
        ``(data, headers)``, or :data:`ACK_NOT_SENT` (it was not sent: nothing is stored), or
        :data:`ACK_NO_REPLY` (sent, but no acknowledgement came in time: it may be stored).
        """
        publish = self._nc.publish
        acks: list[_Ack] = []
        subjects: list[str] = []
        try:
            for messages in appends:
                ack = _Ack()
                reply = self._reply_to(ack)
                subjects.append(reply)
                try:
                    if len(messages) == 1:
                        subject, payload, mid = messages[0]
                        await publish(subject, payload, reply=reply, headers={MSG_ID: mid})
                    else:
                        batch = secrets.token_hex(16)
                        last = len(messages)
                        for i, (subject, payload, mid) in enumerate(messages, 1):
                            headers = {MSG_ID: mid, BATCH_ID: batch, BATCH_SEQUENCE: str(i)}
                            if i == last:
                                headers[BATCH_COMMIT] = "1"
                                await publish(subject, payload, reply=reply, headers=headers)
                            else:
                                await publish(subject, payload, headers=headers)
                except Exception:  # noqa: BLE001 - closed, buffer full, too large: not sent
                    # (a batch without its commit is abandoned by the server: not stored)
                    break
                acks.append(ack)
            await self._wait([ack.done for ack in acks], timeout)
            results: list[bytes | tuple[bytes, dict[str, str]]] = []
            for ack in acks:
                msg = ack.reply
                results.append(ACK_NO_REPLY if msg is None else (msg.data, msg.headers or {}))
            results += [ACK_NOT_SENT] * (len(appends) - len(acks))
            return results
        finally:
            for subject in subjects:
                self._waiting.pop(subject, None)

    async def get_page(self, subject: str, request: bytes, timeout: float) -> Page | None:
        """Send a direct get *request* to *subject* and collect its messages up to the
        end-of-batch status; None if it did not end within *timeout* seconds."""
        page = Page()
        reply = self._reply_to(page)
        try:
            try:
                await self._nc.publish(subject, request, reply=reply)
            except Exception:  # noqa: BLE001 - not sent: as no answer
                return None
            await self._wait([page.done], timeout)
            return page if page.done.done() else None
        finally:
            self._waiting.pop(reply, None)
