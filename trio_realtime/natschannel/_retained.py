"""Retained values over NATS: a JetStream stream that keeps the last message of each topic.

The stream is the one a cluster's brokers share their retained values through: named
``TR_RETAINED_<PREFIX>`` (the prefix in upper case, ``.`` as ``_``), with the subjects
``<prefix>r.>`` and one message per subject. A retained publish is a JetStream publish of the
event (as :mod:`trio_realtime._nats_wire` maps it) to ``<prefix>r.<topic>``, acknowledged
before ``publish`` returns; a new subscription reads the last message of each subject its
pattern matches, with an ephemeral consumer (``deliver_policy=last_per_subject``).

Without JetStream (a server run without ``-js``, or an account without it) the channel has
no retained values: ``publish(retain=True)`` raises :exc:`~trio_realtime.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from .._errors import InvalidTopic, StoreError, StoreUnavailable
from .._nats import NatsConnection, _import_nats
from .._nats_wire import decode, encode
from .._topics import validate_topic

if TYPE_CHECKING:
    from nats.aio.client import Client as _NatsClient
    from nats.aio.msg import Msg as _NatsMsg

    from .._event import Event

__all__ = ["MSG_ID_HEADER", "RetainedStream", "retained_stream_name"]

logger = logging.getLogger("trio_realtime.natschannel")

#: The header JetStream deduplicates by (the event's id).
MSG_ID_HEADER: Final = "Nats-Msg-Id"
#: Seconds a JetStream call (a retained publish, reading the values) may take.
JETSTREAM_TIMEOUT: Final = 5.0
#: Seconds an unused ephemeral consumer lives on the server after its reader went away.
_INACTIVE: Final = 10.0


def retained_stream_name(prefix: str) -> str:
    """The name of the stream of retained values under *prefix*."""
    return "TR_RETAINED_" + prefix.upper().replace(".", "_")


class RetainedStream:
    """A channel's link to the stream of retained values (see the module's docstring)."""

    def __init__(self, connection: NatsConnection, prefix: str) -> None:
        self._connection = connection
        self.stream: Final = retained_stream_name(prefix)
        self.subject_prefix: Final = prefix + "r."
        #: Whether the stream is there to use (False: no JetStream).
        self.available = False
        #: Messages of the stream that were not retained events (skipped).
        self.bad = 0

    async def open(self) -> None:
        """Find the stream, or create it; without JetStream, note that it is unavailable."""
        nats, _ = _import_nats()
        try:
            await self._connection.run(
                _find_or_add_stream, self._connection.client, self.stream, self.subject_prefix
            )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            logger.info("no retained values over NATS: JetStream is unavailable (%s)", exc)
            self.available = False
        else:
            self.available = True

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailable(
                "retained values over NATS need JetStream: run nats-server with -js"
            )

    async def publish(self, event: Event) -> None:
        """Keep *event* as its topic's retained value (once JetStream acknowledged it).

        Raises:
            StoreUnavailable: without JetStream.
            StoreError: if JetStream did not store it.
        """
        self._check()
        nats, _ = _import_nats()
        headers, body = encode(event)
        headers[MSG_ID_HEADER] = event.id
        js = self._connection.client.jetstream(timeout=JETSTREAM_TIMEOUT)
        try:
            await self._connection.run(
                js.publish, self.subject_prefix + event.topic, body, headers=headers
            )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise StoreError(f"JetStream did not keep the retained value: {exc!r}") from exc

    async def values(self, pattern: str) -> list[Event]:
        """The retained values of the topics *pattern* matches, in stream order (none
        without JetStream).

        Raises:
            StoreError: if JetStream did not answer.
        """
        if not self.available:
            return []
        nats, _ = _import_nats()
        try:
            messages = await self._connection.run(
                _last_per_subject,
                self._connection.client,
                self.stream,
                self.subject_prefix + pattern,
                JETSTREAM_TIMEOUT,
            )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise StoreError(f"JetStream did not give the retained values: {exc!r}") from exc
        events = []
        skip = len(self.subject_prefix)
        for message in messages:
            headers = message.headers or {}
            if "ce-specversion" not in headers:
                self.bad += 1  # not one of ours (a value cleared, or another writer's)
                continue
            try:
                topic = validate_topic(message.subject[skip:])
                events.append(decode(topic, headers, message.data))
            except (InvalidTopic, ValueError) as exc:
                self.bad += 1
                logger.debug("a retained value on %r is not an event: %s", message.subject, exc)
        return events


# ---------------------------------------------------------------------------------------------
# The asyncio side (run on the connection's loop through NatsConnection.run)


async def _find_or_add_stream(nc: _NatsClient, name: str, subject_prefix: str) -> None:
    nats, _ = _import_nats()
    js = nc.jetstream(timeout=JETSTREAM_TIMEOUT)
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(name=name, subjects=[f"{subject_prefix}>"], max_msgs_per_subject=1)
        except nats.js.errors.BadRequestError:
            await js.stream_info(name)  # created meanwhile by someone else: use theirs


async def _last_per_subject(
    nc: _NatsClient, stream: str, subject: str, timeout: float
) -> list[_NatsMsg]:
    """The last message of each subject of *stream* that *subject* matches, with an
    ephemeral push consumer that is gone when this returns."""
    nats, _ = _import_nats()
    api = nats.js.api
    loop = asyncio.get_running_loop()
    received: dict[str, _NatsMsg] = {}
    count = 0
    wanted: int | None = None
    done = loop.create_future()

    async def collect(msg: _NatsMsg) -> None:
        nonlocal count
        received.pop(msg.subject, None)
        received[msg.subject] = msg  # (a newer value for a subject replaces the older)
        count += 1
        if wanted is not None and count >= wanted and not done.done():
            done.set_result(None)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    jsm = nc.jsm(timeout=timeout)
    consumer: Any = None
    try:
        info = await jsm.add_consumer(
            stream,
            api.ConsumerConfig(
                deliver_subject=inbox,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                filter_subject=subject,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=_INACTIVE,
                mem_storage=True,
            ),
        )
        consumer = info.name
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        wanted = int(info.num_pending or 0) + int(delivered or 0)
        if count >= wanted:
            return list(received.values())
        await asyncio.wait_for(done, timeout)
        return list(received.values())
    finally:
        await sub.unsubscribe()
        if consumer is not None:
            try:
                await jsm.delete_consumer(stream, consumer)
            except Exception:  # noqa: BLE001 - it expires by itself (inactive_threshold)
                pass
