"""Retained values cluster-wide: a JetStream stream with one message per topic.

A node publishes each retained value to ``<prefix>r.<topic>`` (with its node name and the
event's id, the stream's ``Nats-Msg-Id``) and clears one with an empty message marked
:data:`~._options.CLEAR_HEADER`. The stream (created by the first node that needs it) keeps
the last message of each subject. Each node follows it with an ordered consumer that starts
with the last message per subject (the values there are) and goes on with each update, and
applies them to its bus, bounded by the bus's ``max_retained``. After an outage the node
loads them again: what changed meanwhile is caught up.

The stream's order decides. A node sets its own retained value at once when it publishes it
(so that a subscriber on the same node sees it next), and asks JetStream to acknowledge it
with its stream sequence. Until the acknowledgement comes, messages of that topic from the
stream are held back; then the newest of those is applied if it is newer than the node's own
value, and older ones are ignored from then on. So every node ends with the value that is
last in the stream, although the stream (keeping one message per topic) may drop a value
before a node is given it.

Without JetStream (a server run without ``-js``, an account without it) the node says so in
its log and statistics, keeps its retained values to itself, and tries again after NATS
reconnects, or every :data:`JETSTREAM_RETRY` seconds.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import orjson
import trio

from .._event import Event, new_event_id
from .._nats import NatsConnection, NatsMessage, NatsSubscription, _import_nats
from ._options import CLEAR_HEADER, NODE_HEADER, ClusterOptions

if TYPE_CHECKING:
    from ..bus._bus import Bus

__all__ = ["JETSTREAM_RETRY", "RetainedShare"]

logger = logging.getLogger("trio_realtime.cluster")

#: Seconds between attempts to reach JetStream while it is unavailable.
JETSTREAM_RETRY: Final = 30.0
#: Seconds between the ordered consumer's heartbeats (two missed ones make nats-py recreate
#: it).
HEARTBEAT: Final = 1.0
#: The most retained values a node waits for JetStream to acknowledge; beyond, it forgets
#: the oldest waits (their topics' values may flip back until the stream's last arrives).
MAX_IN_FLIGHT: Final = 100_000
#: Seconds a node waits for JetStream to acknowledge one of its values before it stops
#: holding other nodes' values of that topic back.
ACK_TIMEOUT: Final = 10.0
#: Updates received from the stream and not applied yet before the node loads them all again.
MAX_UPDATES: Final = 65_536
#: The header JetStream deduplicates by.
MSG_ID_HEADER: Final = "Nats-Msg-Id"


def stream_sequence(reply: str) -> int | None:
    """The stream sequence of a JetStream message, from its reply (ack) subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        sequence = tokens[5]
    elif len(tokens) >= 11:  # with a domain and an account hash in front
        sequence = tokens[7]
    else:
        return None
    return int(sequence) if sequence.isdigit() else None


class _Own:
    """A retained value of this node's, waiting for JetStream's acknowledgement."""

    __slots__ = ("deadline", "topic")

    def __init__(self, topic: str, deadline: float) -> None:
        self.topic = topic
        self.deadline = deadline


class RetainedShare:
    """Shares a bus's retained values with the other nodes through a stream (see the
    module's docstring)."""

    def __init__(
        self,
        bus: Bus,
        connection: NatsConnection,
        options: ClusterOptions,
        decode: Callable[[str, bytes], Event | None],
        encode: Callable[[Event], bytes],
        changed: Callable[[], None],
    ) -> None:
        self._bus = bus
        self._connection = connection
        self._node = options.node
        self._stream = options.retained_stream
        self._prefix = f"{options.prefix}r."
        self._decode = decode
        self._encode = encode
        self._changed = changed
        #: Whether the stream is followed now (None: not tried yet).
        self.available: bool | None = None
        #: Whether what the stream held when it was last (re)loaded has been applied.
        self.loaded = False
        #: Updates applied from the stream.
        self.updates = 0
        #: Values that could not be shared (the publish queue was full).
        self.not_shared = 0
        #: Messages of the stream that were not a valid retained value.
        self.bad = 0
        self._acks_prefix = f"_INBOX.{secrets.token_hex(11)}."
        self._numbers = itertools.count(1)
        self._waiting: dict[int, _Own] = {}  # by number, oldest first
        self._latest: dict[str, int] = {}  # topic -> the number of this node's latest value
        self._held: dict[str, tuple[int, NatsMessage]] = {}  # topic -> newest held back
        self._own_seq: dict[str, int] = {}  # topic -> the stream seq of this node's value

    @property
    def pending(self) -> int:
        """This node's values waiting for JetStream's acknowledgement."""
        return len(self._waiting)

    # -- this node's values ----------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Share *event*, retained on this node."""
        self._send(event.topic, self._encode(event), event.id, {})

    def clear(self, topic: str) -> None:
        """Share that the retained value of *topic* was cleared on this node."""
        self._send(topic, b"", new_event_id(), {CLEAR_HEADER: "1"})

    def _send(self, topic: str, data: bytes, message_id: str, headers: dict[str, str]) -> None:
        if self.available is False:
            return  # no JetStream: retained values stay on each node
        headers[MSG_ID_HEADER] = message_id
        headers[NODE_HEADER] = self._node
        number = next(self._numbers)
        try:
            self._connection.publish_nowait(
                self._prefix + topic, data, headers=headers, reply=f"{self._acks_prefix}{number}"
            )
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.not_shared += 1
            return
        if len(self._waiting) >= MAX_IN_FLIGHT:
            self._settle(next(iter(self._waiting)), 0)
        self._waiting[number] = _Own(topic, trio.current_time() + ACK_TIMEOUT)
        self._latest[topic] = number

    def _settle(self, number: int, sequence: int) -> None:
        """This node's value *number* is in the stream at *sequence* (0: it is not known to
        be): stop holding the topic back, unless a later value of this node's is waited for."""
        own = self._waiting.pop(number, None)
        if own is None:
            return
        topic = own.topic
        if self._latest.get(topic) != number:
            return
        del self._latest[topic]
        held = self._held.pop(topic, None)
        if held is not None and held[0] > sequence:
            self._set(topic, held[1])  # another node's value came after this node's
        elif sequence:
            self._own_seq[topic] = sequence  # older messages of the topic are older values
            if len(self._own_seq) > MAX_IN_FLIGHT:
                self._own_seq.clear()

    async def _acknowledgements(self, subscription: NatsSubscription) -> None:
        """Take JetStream's acknowledgements of this node's values (and time them out)."""
        while True:
            with trio.move_on_after(ACK_TIMEOUT):
                try:
                    batch = await subscription.receive_batch()
                except trio.ClosedResourceError:
                    return
                for message in batch:
                    token = message.subject[len(self._acks_prefix) :]
                    if token.isdigit():
                        self._settle(int(token), _acked_sequence(message))
                self._changed()
            now = trio.current_time()
            while self._waiting:
                number, own = next(iter(self._waiting.items()))
                if own.deadline > now:
                    break
                self._settle(number, 0)

    # -- the stream ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the stream while NATS is reachable; load it again after each outage."""
        nats, _ = _import_nats()
        errors = (nats.errors.Error, TimeoutError)
        connection = self._connection
        acks = connection.subscribe_nowait(f"{self._acks_prefix}*")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._acknowledgements, acks)
            task_status.started()
            while True:
                await connection.wait_connected()
                try:
                    subscription, last = await self._follow()
                except errors as exc:
                    if self.available is not False:
                        logger.warning(
                            "JetStream is unavailable (%s): retained values stay on this node "
                            "until it is",
                            exc,
                        )
                    self.available = False
                    self._changed()
                    with trio.move_on_after(JETSTREAM_RETRY):
                        while connection.connected:
                            await connection.wait_changed()
                    continue
                if self.available is False:
                    logger.info("JetStream is available: retained values are shared again")
                self.available = True
                self.loaded = last == 0
                self._changed()
                await self._follow_until_reconnected(subscription, last)

    async def _follow_until_reconnected(self, subscription: NatsSubscription, last: int) -> None:
        connection = self._connection
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._apply_all, subscription, last, nursery.cancel_scope)
                while connection.connected:
                    await connection.wait_changed()
                await connection.wait_connected()
                nursery.cancel_scope.cancel()  # back: load again what changed meanwhile
        finally:
            with trio.CancelScope(shield=True):
                await subscription.unsubscribe()

    async def _follow(self) -> tuple[NatsSubscription, int]:
        """Make sure the stream exists (made with one message per subject if it does not);
        subscribe from the last value of each topic. Returns the subscription and the
        stream's last sequence then."""
        nats, _ = _import_nats()
        connection = self._connection
        js = connection.client.jetstream()
        try:  # as it is, if it exists: an operator may have given it replicas, say
            info = await connection.run(js.stream_info, self._stream)
        except nats.js.errors.NotFoundError:
            info = await connection.run(
                js.add_stream,
                name=self._stream,
                subjects=[f"{self._prefix}>"],
                max_msgs_per_subject=1,
            )
        subscription = await connection.subscribe_through(
            js.subscribe,
            f"{self._prefix}>",
            max_pending=MAX_UPDATES,
            stream=self._stream,
            ordered_consumer=True,
            idle_heartbeat=HEARTBEAT,
            deliver_policy=nats.js.api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        return subscription, int(info.state.last_seq)

    async def _apply_all(
        self, subscription: NatsSubscription, last: int, reload: trio.CancelScope
    ) -> None:
        while True:
            try:
                batch = await subscription.receive_batch()
            except trio.ClosedResourceError:
                return
            for message in batch:
                sequence = stream_sequence(message.reply)
                if sequence is None:
                    self.bad += 1
                    continue
                self._apply(sequence, message)
                if sequence >= last:
                    self.loaded = True
            self._changed()
            if subscription.dropped:  # updates were lost: load everything again
                logger.warning("retained values came faster than applied: loading them again")
                reload.cancel()
                return

    def _apply(self, sequence: int, message: NatsMessage) -> None:
        topic = message.subject[len(self._prefix) :]
        if topic in self._latest:  # this node's own value waits for its acknowledgement
            held = self._held.get(topic)
            if held is None or held[0] < sequence:
                self._held[topic] = (sequence, message)
            return
        own = self._own_seq.get(topic)
        if own is not None:
            if sequence < own:
                return  # older than this node's value
            del self._own_seq[topic]
        self._set(topic, message)

    def _set(self, topic: str, message: NatsMessage) -> None:
        if message.headers.get(CLEAR_HEADER):
            self._bus.set_remote_retained(None, topic)
        else:
            event = self._decode(topic, message.data)
            if event is None:
                self.bad += 1
                return
            self._bus.set_remote_retained(event, topic)
        self.updates += 1


def _acked_sequence(message: NatsMessage) -> int:
    """The stream sequence in a JetStream publish acknowledgement (0 for an error)."""
    try:
        answer = orjson.loads(message.data) if message.data else None
    except orjson.JSONDecodeError:
        return 0
    sequence = answer.get("seq") if isinstance(answer, dict) else None
    return sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else 0
