"""Following a JetStreamStore's stream: :meth:`JetStreamStore.tail
<trio_realtime.store.JetStreamStore.tail>`.

An ordered push consumer of our own, over :meth:`NatsConnection.subscribe
<trio_realtime._nats.NatsConnection.subscribe>` (so the messages cross into Trio in batches):
ephemeral, in memory, no acknowledgements, with flow control and idle heartbeats. Each
message's reply subject carries its stream and consumer sequences. A consumer sequence that
skips one (a message dropped on the way), a heartbeat that says more was delivered than came,
a status other than a heartbeat or flow control (the consumer was deleted), or three
heartbeats missed (NATS lost, or restarted) end the consumer: a new one starts after the last
stream sequence yielded, on a new subject, so that nothing of the old one can mix in. The
flow control requests are answered after the batch before them was handled, so a slow reader
holds the stream back rather than filling memory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from .._errors import StoreError
from ._jetstream_link import Stale

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from .._event import Event
    from .._nats import NatsSubscription
    from ._jetstream_link import StreamLink

__all__ = ["Followed", "follow", "stream_sequences"]

logger = logging.getLogger("trio_realtime.store")

_SECOND_NS: Final = 1_000_000_000


class Followed(Protocol):
    """What :func:`follow` needs of the store it follows (a JetStreamStore)."""

    _link: StreamLink
    _heartbeat: float
    _tails: set[NatsSubscription]  # the subscriptions of the tails running

    @property
    def subject_prefix(self) -> str:
        """The stream's subjects' prefix."""

    def _check_open(self) -> None: ...
    def _decode(self, subject: str, seq: int, payload: bytes) -> tuple[Event, str | None, int]: ...
    def _undecodable_message(self, seq: int, exc: Exception) -> None: ...
    def _observe(self, seq: int) -> None: ...
    def _note_state(self, info: dict[str, Any]) -> None: ...


def stream_sequences(reply: str) -> tuple[int, int] | None:
    """The stream and consumer sequences in a JetStream message's reply subject, in either
    form: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or with
    the domain and account hash after ``ACK`` (and a token at the end)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        stream_seq, consumer_seq = tokens[5], tokens[6]
    elif len(tokens) in (11, 12):
        stream_seq, consumer_seq = tokens[7], tokens[8]
    else:
        return None
    if not (stream_seq.isdigit() and consumer_seq.isdigit()):
        return None
    return int(stream_seq), int(consumer_seq)


async def follow(
    store: Followed, after: int
) -> AsyncGenerator[list[tuple[Event, str | None]], None]:
    """The events stored after seq *after*, in batches (see the module docstring)."""
    link = store._link
    heartbeat = store._heartbeat
    last = after
    while True:
        store._check_open()
        started = await _start_consumer(store, last)
        if started is None:
            await trio.sleep(heartbeat)
            continue
        sub, consumer = started
        store._tails.add(sub)
        try:
            delivered = 0
            while True:
                with trio.move_on_after(heartbeat * 3) as idle:
                    messages = await sub.receive_batch()
                if idle.cancelled_caught:
                    break  # heartbeats missed: start again
                items: list[tuple[Event, str | None]] = []
                replies: list[str] = []
                restart = False
                for msg in messages:
                    headers = msg.headers
                    status = headers.get("Status") if headers else None
                    if status is not None:
                        if status != "100":  # (409: the consumer was deleted...)
                            restart = True
                            break
                        if msg.reply:  # a flow control request
                            replies.append(msg.reply)
                        stalled = headers.get("Nats-Consumer-Stalled")
                        if stalled:
                            replies.append(stalled)
                        last_delivered = headers.get("Nats-Last-Consumer")
                        if last_delivered is not None and last_delivered != str(delivered):
                            restart = True
                            break
                        continue
                    sequences = stream_sequences(msg.reply)
                    if sequences is None or sequences[1] != delivered + 1:
                        restart = True
                        break
                    seq, delivered = sequences
                    if seq <= last:
                        continue
                    last = seq
                    try:
                        event, origin, _ = store._decode(msg.subject, seq, msg.data)
                    except ValueError as exc:
                        store._undecodable_message(seq, exc)
                        continue
                    items.append((event, origin))
                store._observe(last)
                if items:
                    yield items
                for reply in replies:
                    try:
                        link.connection.publish_nowait(reply, b"")
                    except trio.WouldBlock:
                        pass  # (a heartbeat says the consumer is stalled: answered then)
                if restart:
                    break
        finally:
            store._tails.discard(sub)
            with trio.CancelScope(shield=True), trio.move_on_after(link.timeout):
                await sub.unsubscribe()
                await _delete_consumer(store, consumer)


async def _start_consumer(store: Followed, last: int) -> tuple[NatsSubscription, str] | None:
    """A new consumer delivering what follows seq *last*; None to try again later.

    Raises:
        Stale: if the stream is gone or replaced.
    """
    link = store._link
    connection = link.connection
    await connection.wait_connected()
    try:
        store._note_state(await link.stream_info())
    except Stale:
        raise
    except StoreError:
        return None
    inbox = connection.client.new_inbox()
    try:
        sub = await connection.subscribe(inbox)
    except (trio.Cancelled, trio.ClosedResourceError):
        raise
    except Exception:  # noqa: BLE001 - NATS went away: again later
        return None
    heartbeat = int(store._heartbeat * _SECOND_NS)
    config: dict[str, Any] = {
        "deliver_subject": inbox,
        "deliver_policy": "by_start_sequence" if last else "all",
        "ack_policy": "none",
        "filter_subject": f"{store.subject_prefix}.>",
        "replay_policy": "instant",
        "flow_control": True,
        "idle_heartbeat": heartbeat,
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": max(5 * heartbeat, 5 * _SECOND_NS),
    }
    if last:
        config["opt_start_seq"] = last + 1
    try:
        answer = await link.api(
            f"$JS.API.CONSUMER.CREATE.{link.stream}",
            {"stream_name": link.stream, "config": config},
        )
    except StoreError as exc:
        answer = {"error": str(exc)}
    error = answer.get("error")
    if error is not None or not isinstance(answer.get("name"), str):
        with trio.CancelScope(shield=True), trio.move_on_after(link.timeout):
            await sub.unsubscribe()
        logger.warning("stream %s: no consumer to tail it (%s); retrying", link.stream, error)
        return None
    return sub, answer["name"]


async def _delete_consumer(store: Followed, name: str) -> None:
    """Delete the consumer *name*, if NATS is there (else it goes by itself, once idle)."""
    link = store._link
    try:
        if link.connection.connected:
            await link.api(f"$JS.API.CONSUMER.DELETE.{link.stream}.{name}")
    except (StoreError, trio.ClosedResourceError):
        pass
