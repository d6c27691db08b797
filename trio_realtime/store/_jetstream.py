"""JetStreamStore: the event store in a NATS JetStream stream, shared by a cluster's brokers.

Design: the store talks to NATS through a :class:`~trio_realtime._nats.NatsConnection` (given,
so that a broker shares one connection between its backplane and its store, or opened by the
store itself). Its asyncio side (:mod:`._jetstream_wire`) runs on the connection's loop; every
operation is one crossing.

Appends have no worker: the first appender that finds nobody writing becomes the *writer*. It
takes every append waiting (a group), publishes them in one crossing (each append an atomic
batch, in order on one connection, so in seq order), hands each caller its result, and goes
on until its own append is done; then it hands the writing over to the oldest append still
waiting. Reads are pages of JetStream's batched direct get, each with ``min_last_seq`` set to
the highest seq this store has seen, so that a replica that lags behind never answers (it
passes the request to the stream's leader): a read sees every event this store saw stored.
:meth:`JetStreamStore.tail` follows the stream with an ordered push consumer of its own,
recreated from the last seq seen whenever a gap, a lost heartbeat or a reconnect calls for it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import orjson
import outcome
import trio

from .._errors import DuplicateEventId, StoreError, TooLarge
from .._nats import NatsConnection
from .._topics import validate_topic
from ._base import (
    DEFAULT_READ_LIMIT,
    Store,
    StoreStatistics,
    _not_open_error,
    check_max_bytes,
    check_read_args,
    check_retention,
)
from ._codec import encode_events, plan_pattern, to_micros, with_seqs
from ._jetstream_link import StreamLink, StreamOptions
from ._jetstream_tail import follow
from ._jetstream_wire import ACK_NO_REPLY, ACK_NOT_SENT, decode_message, encode_message, msg_id

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncGenerator, Sequence
    from datetime import datetime

    from .._event import Event
    from .._nats import NatsSubscription

__all__ = ["DEFAULT_STREAM", "MAX_APPEND", "JetStreamStore"]

logger = logging.getLogger("trio_realtime.store")

#: The stream a :class:`JetStreamStore` uses when given no name.
DEFAULT_STREAM: Final = "TRIO_REALTIME"
#: The most events one append may store: JetStream's limit on an atomic batch.
MAX_APPEND: Final = 1000
#: Appends published in one crossing at most, and events in them (but one append at least).
MAX_GROUP: Final = 1024
MAX_GROUP_EVENTS: Final = 4096
#: Appends of several events in one crossing at most: each is an atomic batch, of which
#: JetStream lets a stream have 50 under way.
MAX_GROUP_BATCHES: Final = 32
#: Messages asked for per page when reading.
READ_PAGE: Final = 1000

_STREAM_NAME: Final = re.compile(r"[^\s.*>/\\]{1,255}")
_BATCH_DUPLICATE: Final = 10201  # JetStream's error: an id of the atomic batch is stored
_LEAD: Final = object()  # what an append waiting is woken with when it is to write next


class _Job:
    """One append: its messages, and once written, its outcome."""

    __slots__ = ("cancelled", "claimed", "floor", "messages", "result", "task", "uncertain")

    def __init__(self, messages: list[tuple[str, bytes, str]]) -> None:
        self.messages = messages
        self.task: trio.lowlevel.Task | None = None
        self.claimed = False  # taken into a group: it can no longer be cancelled
        self.cancelled = False
        self.uncertain = False  # published once with no acknowledgement: may be stored
        self.floor = 0  # a seq known stored before it was first published
        self.result: outcome.Outcome[range] | None = None


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return seconds


class JetStreamStore(Store):
    """An event store in a NATS JetStream stream, which a cluster's brokers share.

    ::

        async with open_bus(store=JetStreamStore("nats://127.0.0.1:4222")) as bus:
            ...

    Each event is one message of the stream, on the subject ``<subject_prefix>.<topic>``
    (our topic grammar is NATS's); its seq is the stream sequence, so every broker on the
    stream sees the same seqs, and a client can resume from any of them. The stream is
    created when missing (``allow_atomic`` and ``allow_direct`` set, the limits given here);
    an existing one is updated to those limits. Its :attr:`epoch` is its name and creation
    time: a stream deleted and created again is a new epoch.

    * An :meth:`append` is one JetStream atomic batch (one message for one event): stored all
      together, with consecutive seqs, once JetStream acknowledged it (replicated to a
      majority of the stream's ``replicas``), or not at all. At most :data:`MAX_APPEND`
      events per append.
    * An event id already stored is refused with :exc:`~trio_realtime.DuplicateEventId` (a
      ValueError), through ``Nats-Msg-Id``: within the stream's ``duplicate_window`` only.
    * An event larger than the NATS server's ``max_payload`` is refused with
      :exc:`~trio_realtime.TooLarge`.
    * While NATS is unreachable, appends and reads wait for it, *timeout* seconds at most,
      then raise :exc:`~trio_realtime.StoreError`; an append is never reported stored unless
      JetStream acknowledged it. An append sent but not acknowledged in time is published
      again (with the same ids, so it is stored once); if that fails too, the StoreError says
      that the events may have been stored: publish them again with the same ids to know.
      Such an append may get seqs after those of appends made after it.
    * Cancellation: as :class:`SQLiteStore`'s, an append cancelled before it was taken into
      a group raises :exc:`trio.Cancelled` and stored nothing; once taken it completes, and
      the cancellation is delivered at the caller's next checkpoint.
    * :attr:`shared` (the default): other brokers append to the stream too. The bus then
      routes stored events from :meth:`tail` (its own and the others', in seq order).

    Retention is JetStream's: ``max_events``, ``max_bytes`` and ``max_age`` are the stream's
    ``max_msgs``, ``max_bytes`` (counted as JetStream counts a message: subject, headers and
    payload) and ``max_age``, enforced by the server, oldest first.

    Args:
        nats: A ``nats://`` URL (or several) to connect to (the store opens its own connection,
            when opened, and closes it), or an open
            :class:`~trio_realtime._nats.NatsConnection` to use (left open).
        stream: The stream's name.
        subject_prefix: The subjects' prefix (a topic: ``trs`` or ``app.trs``...).
        replicas: The stream's replicas (1, or 3 or 5 on a JetStream cluster).
        duplicate_window: How long JetStream remembers stored ids to refuse duplicates
            (seconds or a timedelta; at most ``max_age``).
        max_events: Keep at most this many events (None: no limit).
        max_age: Remove events older than this, as JetStream dates them (when stored).
        max_bytes: Keep at most this many bytes of messages (None: no limit).
        storage: ``"file"`` or ``"memory"`` (the stream's storage, when it is created).
        shared: Whether other brokers may append to the stream (see above).
        timeout: Seconds an operation waits for NATS before it raises StoreError.
        heartbeat: Seconds between the heartbeats of :meth:`tail`'s consumer; three missed
            make it start again.
        name: The connection's name, when the store opens its own.
        tls: The TLS context for ``tls://`` servers, when the store opens its own connection.
        user: User name for NATS, with *password* (when the store opens its own connection).
        password: Password for NATS.
        token: Authentication token for NATS.
    """

    def __init__(
        self,
        nats: str | Sequence[str] | NatsConnection,
        stream: str = DEFAULT_STREAM,
        *,
        subject_prefix: str = "trs",
        replicas: int = 1,
        duplicate_window: timedelta | float = 120.0,
        max_events: int | None = None,
        max_age: timedelta | float | None = None,
        max_bytes: int | None = None,
        storage: Literal["file", "memory"] = "file",
        shared: bool = True,
        timeout: float = 10.0,
        heartbeat: float = 1.0,
        name: str | None = None,
        tls: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        servers: list[str] | NatsConnection
        if isinstance(nats, NatsConnection):
            servers = nats
        else:
            servers = [nats] if isinstance(nats, str) else list(nats)
            if not servers:
                raise ValueError(f"nats must be a connection or NATS server URLs, not {nats!r}")
        if not _STREAM_NAME.fullmatch(stream):
            raise ValueError(
                f"a stream's name has 1 to 255 characters, none of them a space, '.', '*', "
                f"'>', '/' or '\\': not {stream!r}"
            )
        validate_topic(subject_prefix)
        if replicas not in (1, 2, 3, 4, 5):
            raise ValueError(f"replicas must be 1 to 5, not {replicas!r}")
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', not {storage!r}")
        self._stream = stream
        self._prefix = subject_prefix
        self._max_events, self._max_age = check_retention(max_events, max_age)
        self._max_bytes = check_max_bytes(max_bytes)
        self._shared = bool(shared)
        self._heartbeat = _seconds(heartbeat, "heartbeat")
        options = StreamOptions(
            prefix=subject_prefix,
            replicas=replicas,
            duplicate_window=_seconds(duplicate_window, "duplicate_window"),
            max_events=self._max_events,
            max_age=self._max_age,
            max_bytes=self._max_bytes,
            storage=storage,
        )
        self._link = StreamLink(
            servers,
            stream,
            options,
            timeout=_seconds(timeout, "timeout"),
            owner=f"<JetStreamStore {stream!r}>",
            connect={"name": name, "tls": tls, "user": user, "password": password, "token": token},
        )
        self._state = "new"  # new -> opening -> open -> closed (back to new if open fails)
        self._epoch: str | None = None
        # Appends: those waiting, and whether one of their callers is writing.
        self._queue: deque[_Job] = deque()
        self._writing = False
        self._writer_idle = trio.Event()
        self._discard = False  # closing: fail what is still waiting
        self._publishing = 0  # appends taken by the writer, not yet done
        # Statistics, and the highest seq seen stored (reads ask for at least that much).
        self._seen = 0
        self._stats = StoreStatistics()
        self._first_at_open = 1
        self._tails: set[NatsSubscription] = set()  # the subscriptions of running tails
        self._undecodable = 0

    def __repr__(self) -> str:
        return f"<JetStreamStore {self._stream!r} {self._state}>"

    # -----------------------------------------------------------------------------------------
    # Properties

    @property
    def stream(self) -> str:
        """The stream's name."""
        return self._stream

    @property
    def subject_prefix(self) -> str:
        """The prefix of the stream's subjects."""
        return self._prefix

    @property
    def max_events(self) -> int | None:
        """The most events kept (None: no limit)."""
        return self._max_events

    @property
    def max_age(self) -> timedelta | None:
        """The age past which events are removed (None: no limit)."""
        return self._max_age

    @property
    def max_bytes(self) -> int | None:
        """The most bytes of messages kept (None: no limit)."""
        return self._max_bytes

    @property
    def shared(self) -> bool:
        """Whether other brokers may append to the stream (see the class docstring)."""
        return self._shared

    #: The most events one append may store.
    max_append = MAX_APPEND

    @property
    def epoch(self) -> str:
        """The stream's name and creation time (``NAME@2025-01-01T00:00:00.000000000Z``)."""
        if self._epoch is None:
            raise _not_open_error(self)
        return self._epoch

    # -----------------------------------------------------------------------------------------
    # Lifecycle

    async def open(self) -> None:
        """Connect (or use the connection given), and create or update the stream.

        If opening fails the store stays unopened (its own connection closed) and may be
        opened again.

        Raises:
            StoreError: if NATS is unreachable within *timeout*, has no JetStream, or refuses
                the stream (the message says why).
            RuntimeError: if the store is already open.
            trio.ClosedResourceError: if the store was closed.
        """
        if self._state == "closed":
            raise trio.ClosedResourceError(f"{self!r} is closed and cannot be reopened")
        if self._state != "new":
            raise RuntimeError(f"{self!r} is already open")
        self._state = "opening"
        try:
            info = await self._link.connect()
        except BaseException:
            if self._state == "opening":
                self._state = "new"
            raise
        if self._state != "opening":
            with trio.CancelScope(shield=True):
                await self._link.close()
            raise trio.ClosedResourceError(f"{self!r} was closed while it was being opened")
        self._epoch = f"{self._stream}@{self._link.created}"
        self._note_state(info)
        self._first_at_open = self._stats.first_seq
        self._state = "open"

    async def aclose(self) -> None:
        """Store the appends already waiting, then stop (and close the store's own connection).

        Idempotent. If cancelled, it still closes: the appends not yet taken fail with
        :exc:`trio.ClosedResourceError` (those being published complete), and
        :exc:`trio.Cancelled` is raised once closed. A :meth:`tail` still running ends with
        :exc:`trio.ClosedResourceError`.
        """
        state, self._state = self._state, "closed"
        if state in ("new", "closed"):
            await trio.lowlevel.checkpoint()
            return
        try:
            while self._writing:
                await self._writer_idle.wait()
        finally:
            with trio.CancelScope(shield=True):
                self._discard = True
                while self._writing:
                    await self._writer_idle.wait()
                for sub in list(self._tails):
                    await sub.unsubscribe()
                await self._link.close()

    def _check_open(self) -> None:
        if self._state != "open":
            if self._state == "closed":
                raise trio.ClosedResourceError(f"{self!r} is closed")
            raise _not_open_error(self)
        if self._link.stale is not None:
            raise StoreError(str(self._link.stale))

    async def _stream_info(self) -> None:
        """Read the stream's info into the statistics (checking it is the same stream)."""
        self._note_state(await self._link.stream_info())

    def _note_state(self, info: dict[str, Any]) -> None:
        state = info.get("state") or {}
        messages = int(state.get("messages", 0))
        last = int(state.get("last_seq", 0))
        first = int(state.get("first_seq", 0)) if messages else last + 1
        self._observe(last)
        s = self._stats
        self._stats = attrs.evolve(
            s,
            events_stored=messages,
            first_seq=first,
            last_seq=max(last, s.last_seq),
            events_removed=max(s.events_removed, first - self._first_at_open),
            size_bytes=int(state.get("bytes", 0)),
        )

    def _observe(self, seq: int) -> None:
        """Note that seq *seq* is stored: later reads must see it."""
        if seq > self._seen:
            self._seen = seq

    # -----------------------------------------------------------------------------------------
    # Appending

    async def append(self, events: Sequence[Event]) -> list[Event]:
        """Store *events* atomically and return copies of them with ``seq`` set.

        See :meth:`Store.append` and the class docstring.

        Raises:
            DuplicateEventId: if an event's id is already stored (within the window).
            TooLarge: if an event is larger than the NATS server's ``max_payload``.
            ValueError: if the append holds more than :data:`MAX_APPEND` events.
        """
        return await self._append(events, None)

    async def append_from(
        self, events: Sequence[Event], origins: Sequence[str | None]
    ) -> list[Event]:
        """Append *events* as :meth:`append` does, keeping each one's origin with it (given
        back by :meth:`tail`)."""
        if len(origins) != len(events):
            raise ValueError(f"{len(origins)} origins for {len(events)} events")
        return await self._append(events, origins)

    async def _append(
        self, events: Sequence[Event], origins: Sequence[str | None] | None
    ) -> list[Event]:
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        rows = encode_events(events)
        if origins is None:
            origins = [None] * len(rows)
        if not rows:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return []
        if len(rows) > MAX_APPEND:
            raise ValueError(f"an append stores {MAX_APPEND} events at most, not {len(rows)}")
        prefix = self._prefix + "."
        messages = []
        for row, origin in zip(rows, origins, strict=True):
            payload = encode_message(row, origin)
            if len(payload) + len(prefix) + len(row[1]) > self._link.max_payload:
                raise TooLarge(
                    f"event {row[0]!r} on topic {row[1]!r} takes {len(payload)} bytes stored: "
                    f"more than the NATS server's max_payload ({self._link.max_payload})"
                )
            messages.append((prefix + row[1], payload, msg_id(row[0])))
        seqs = await self._submit(_Job(messages))
        return with_seqs(events, seqs)

    async def _submit(self, job: _Job) -> range:
        """Queue *job* and wait for its outcome (writing, if nobody is)."""
        job.task = trio.lowlevel.current_task()
        self._queue.append(job)
        if self._writing:

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                if job.claimed:
                    return trio.lowlevel.Abort.FAILED  # being written: wait for it
                self._queue.remove(job)
                job.cancelled = True
                return trio.lowlevel.Abort.SUCCEEDED

            lead = await trio.lowlevel.wait_task_rescheduled(abort) is _LEAD
        else:
            self._writing = True
            self._writer_idle = trio.Event()
            lead = True
        if lead:
            with trio.CancelScope(shield=True):
                await self._write(job)
        assert job.result is not None
        return job.result.unwrap()

    async def _write(self, own: _Job) -> None:
        """Publish the waiting appends, group by group, until *own* is done; then hand the
        writing over to the oldest append still waiting."""
        try:
            while own.result is None:
                group = self._take_group()
                self._publishing = len(group)
                try:
                    await self._publish_group(group)
                except BaseException as exc:  # noqa: BLE001 - each caller gets it
                    error = exc if isinstance(exc, Exception) else StoreError(repr(exc))
                    for job in group:
                        if job.result is None:
                            job.result = outcome.Error(error)
                finally:
                    self._publishing = 0
                for job in group:
                    if job is not own:
                        assert job.task is not None
                        trio.lowlevel.reschedule(job.task, outcome.Value(None))
        finally:
            if self._queue:
                following = self._queue[0]
                assert following.task is not None
                trio.lowlevel.reschedule(following.task, outcome.Value(_LEAD))
            else:
                self._writing = False
                self._writer_idle.set()

    def _take_group(self) -> list[_Job]:
        """Claim the appends waiting, oldest first, as many as one crossing takes."""
        group: list[_Job] = []
        events = batches = 0
        queue = self._queue
        while queue and len(group) < MAX_GROUP:
            size = len(queue[0].messages)
            if group and (
                events + size > MAX_GROUP_EVENTS or (size > 1 and batches == MAX_GROUP_BATCHES)
            ):
                break
            job = queue.popleft()
            job.claimed = True
            group.append(job)
            events += size
            batches += size > 1
        return group

    def _closed_error(self) -> trio.ClosedResourceError:
        return trio.ClosedResourceError(f"{self!r} was closed before this append was stored")

    async def _publish_group(self, group: list[_Job]) -> None:
        """Publish *group*'s appends until each has its outcome (or the timeout is up)."""
        started = time.perf_counter()
        link = self._link
        deadline = trio.current_time() + link.timeout
        pending = group
        stored = 0
        while pending:
            failure: BaseException | None = None
            if self._discard:
                failure = self._closed_error()
            elif link.stale is not None:
                failure = link.stale
            if failure is not None:
                for job in pending:
                    job.result = outcome.Error(failure)
                break
            remaining = await link.wait_connected(deadline)
            if remaining <= 0:
                for job in pending:
                    job.result = outcome.Error(self._unconfirmed(job))
                break
            for job in pending:
                if not job.uncertain:
                    job.floor = self._seen
            assert link.exchange is not None
            replies = await link.run(
                link.exchange.publish, [job.messages for job in pending], remaining
            )
            retry: list[_Job] = []
            for job, reply in zip(pending, replies, strict=True):
                if reply is ACK_NOT_SENT:
                    retry.append(job)
                elif reply is ACK_NO_REPLY:
                    job.uncertain = True
                    retry.append(job)
                else:
                    assert isinstance(reply, tuple)
                    result = await self._settle(job, *reply)
                    if result is None:
                        retry.append(job)
                    else:
                        job.result = result
                        if isinstance(result, outcome.Value):
                            stored += len(job.messages)
            pending = retry
            if pending:
                await trio.sleep(0.05)  # (not sent: the connection is going; wait a little)
        if stored:
            s = self._stats
            appended = sum(1 for job in group if isinstance(job.result, outcome.Value))
            self._stats = attrs.evolve(
                s,
                events_stored=s.events_stored + stored,
                appends=s.appends + appended,
                events_appended=s.events_appended + stored,
                transactions=s.transactions + 1,
                largest_transaction=max(s.largest_transaction, stored),
                commit_seconds=s.commit_seconds + (time.perf_counter() - started),
                last_seq=max(s.last_seq, self._seen),
            )

    def _unconfirmed(self, job: _Job) -> StoreError:
        if job.uncertain:
            return StoreError(
                f"{self!r}: NATS did not confirm within {self._link.timeout} s whether the events "
                "were stored: they may have been; publish them again with the same ids to "
                "know (a stored one is refused as a duplicate)"
            )
        return StoreError(
            f"{self!r}: NATS was not reachable within {self._link.timeout} s; nothing was stored"
        )

    async def _settle(
        self, job: _Job, data: bytes, headers: dict[str, str]
    ) -> outcome.Outcome[range] | None:
        """The outcome of *job* from its acknowledgement (None: publish it again)."""
        n = len(job.messages)
        status = headers.get("Status")
        if status == "503":  # no responders: no stream takes the subject any more
            try:
                await self._stream_info()
            except StoreError as exc:
                return outcome.Error(exc)
            return outcome.Error(StoreError(f"{self!r}: JetStream is not answering (503)"))
        try:
            ack = orjson.loads(data)
        except orjson.JSONDecodeError:
            return outcome.Error(StoreError(f"{self!r}: JetStream answered {data[:200]!r}"))
        error = ack.get("error") if isinstance(ack, dict) else None
        if error is not None:
            if error.get("err_code") == _BATCH_DUPLICATE:
                if job.uncertain:
                    return await self._find_stored(job)
                return outcome.Error(self._duplicate(job, None))
            return outcome.Error(
                StoreError(f"{self!r}: JetStream refused the events: {error.get('description')}")
            )
        if not isinstance(ack, dict) or not isinstance(ack.get("seq"), int):
            return outcome.Error(StoreError(f"{self!r}: JetStream answered {ack!r}"))
        last = int(ack["seq"])
        if ack.get("duplicate"):  # (one event: its original's seq)
            if job.uncertain:  # stored by the publishing that got no acknowledgement?
                found = await self._read_range(last, 1)
                if [msg.data for msg in found] == [job.messages[0][1]]:
                    return outcome.Value(range(last, last + 1))
            return outcome.Error(self._duplicate(job, last))
        if last - n + 1 <= self._seen:  # seqs never go back in one stream: is it another?
            await self._stream_info()  # (raises Stale if so)
        if n > 1 and ack.get("count", n) != n:
            return outcome.Error(StoreError(f"{self!r}: JetStream stored a batch partly: {ack!r}"))
        self._observe(last)
        return outcome.Value(range(last - n + 1, last + 1))

    def _duplicate(self, job: _Job, seq: int | None) -> DuplicateEventId:
        if len(job.messages) == 1:
            payload = job.messages[0][1]
            event_id = orjson.loads(payload[: payload.index(b"\n")])[1]
            where = "" if seq is None else f" (seq {seq})"
            return DuplicateEventId(f"event id {event_id!r} is already stored{where}")
        return DuplicateEventId("an event id of this append is already stored")

    async def _find_stored(self, job: _Job) -> outcome.Outcome[range]:
        """The seqs of *job*'s events, published once without an acknowledgement and found
        stored (a duplicate) when published again: read from the first seq that can be
        theirs, on the subject of the first event."""
        subject, payload, _ = job.messages[0]
        after = job.floor
        while True:
            messages, more = await self._link.get_page(subject, after, READ_PAGE, self._seen)
            if not messages:
                return outcome.Error(self._duplicate(job, None))
            for seq, msg in messages:
                if msg.data == payload:
                    found = await self._read_range(seq, len(job.messages))
                    if [m.data for m in found] == [p for _, p, _ in job.messages]:
                        return outcome.Value(range(seq, seq + len(job.messages)))
                    return outcome.Error(self._duplicate(job, None))
                after = seq
            if not more:
                return outcome.Error(self._duplicate(job, None))

    async def _read_range(self, first: int, n: int) -> list[Any]:
        messages, _ = await self._link.get_page(self._prefix + ".>", first - 1, n, self._seen)
        return [msg for _, msg in messages]

    # -----------------------------------------------------------------------------------------
    # Reading

    def _decode(self, subject: str, seq: int, payload: bytes) -> tuple[Event, str | None, int]:
        """The event a message holds, its origin and its size.

        Raises:
            ValueError: if it is not an event a store wrote.
        """
        topic = subject[len(self._prefix) + 1 :]
        return decode_message(topic, seq, payload)

    def _undecodable_message(self, seq: int, exc: Exception) -> None:
        self._undecodable += 1
        if self._undecodable == 1 or self._undecodable % 1000 == 0:
            logger.warning(
                "stream %s: message %d is not an event a store wrote (%s); skipped (%d so far)",
                self._stream,
                seq,
                exc,
                self._undecodable,
            )

    async def read(
        self,
        pattern: str,
        *,
        after: int | None = None,
        since: datetime | None = None,
        limit: int = DEFAULT_READ_LIMIT,
        max_bytes: int | None = None,
    ) -> list[Event]:
        """Stored events whose topic matches *pattern*, in seq order (see :meth:`Store.read`).

        Read in pages of JetStream's direct get filtered by subject. ``since`` is the
        events' own ``time``, which need not follow the seqs: with it, the matching events
        are read from ``after`` on and filtered. Messages in the stream that are not events
        a store wrote are skipped (and logged).
        """
        plan_pattern(pattern)
        start = check_read_args(after, limit, max_bytes)
        since_us = None if since is None else to_micros(since)
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        found: list[Event] = []
        subject = f"{self._prefix}.{pattern}"
        budget = max_bytes
        seq = start
        while len(found) < limit:
            want = READ_PAGE if since_us is not None else min(READ_PAGE, limit - len(found))
            messages, more = await self._link.get_page(subject, seq, want, self._seen)
            full = False
            for seq, msg in messages:
                try:
                    event, _, size = self._decode(msg.headers["Nats-Subject"], seq, msg.data)
                except ValueError as exc:
                    self._undecodable_message(seq, exc)
                    continue
                if since_us is not None and to_micros(event.time) < since_us:
                    continue
                if budget is not None:
                    budget -= size
                    if budget < 0 and found:
                        full = True
                        break
                found.append(event)
                if len(found) >= limit:
                    break
            if full or not more or not messages:
                break
        if found:
            self._observe(found[-1].seq or 0)
        self._stats = attrs.evolve(self._stats, reads=self._stats.reads + 1)
        return found

    async def last_seq(self) -> int:
        """The stream's last seq (0 if none), from its info."""
        self._check_open()
        await self._stream_info()
        return self._stats.last_seq

    async def first_seq(self) -> int:
        """The stream's first seq, or ``last_seq() + 1`` when it is empty."""
        self._check_open()
        await self._stream_info()
        return self._stats.first_seq

    async def apply_retention(self) -> int:
        """JetStream enforces the limits itself, as it stores (``max_age`` on a timer of its
        own): this only refreshes the statistics, and returns 0."""
        self._check_open()
        await self._stream_info()
        return 0

    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's statistics: the stream's figures as last seen (by an
        append, a read of its info, :meth:`last_seq`...), this store object's counters."""
        s = self._stats
        pending = len(self._queue) + self._publishing
        return attrs.evolve(s, pending_appends=pending, last_seq=max(s.last_seq, self._seen))

    # -----------------------------------------------------------------------------------------
    # Tailing

    def tail(self, after: int) -> AsyncGenerator[list[tuple[Event, str | None]], None]:
        """Every event stored after seq *after*, whoever stored it, in seq order, in batches
        as they come, each with its origin (see :meth:`append_from`; None if it has none);
        without end.

        An ordered push consumer with flow control: the next messages are asked for once the
        batch yielded before them was handled, so a slow reader holds the stream back, not
        its memory. A gap in the consumer's sequence, three missed heartbeats or a lost
        connection start a new consumer after the last seq yielded: no event is skipped or
        yielded twice. While NATS is unreachable it waits. Use it with
        :func:`contextlib.aclosing`.

        Raises:
            StoreError: if the stream was deleted or replaced.
            trio.ClosedResourceError: if the store is closed.
        """
        self._check_open()
        return follow(self, max(0, int(after)))
