"""Log records as events: a :class:`logging.Handler` that publishes to an EventChannel.

:func:`open_event_log_handler` gives an :class:`EventLogHandler` for the duration of a block,
with its publishing task in a nursery the block owns::

    async with open_bus() as bus, open_event_log_handler(bus, attach_to="") as handler:
        ...  # every record the root logger passes is published on log.<level>.<logger>

The handler's ``emit`` never waits: it formats the record in the caller's thread, puts it in
a bounded queue and wakes the publishing task (directly from a task of the handler's Trio
run, through :meth:`trio.lowlevel.TrioToken.run_sync_soon` from anywhere else). A full queue
drops the record and counts it. A record logged while a record is being handled (in that
thread) or published (in the publishing task: the channel's own logging) is not published: a
context variable marks that work, so the handler cannot feed itself.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import attrs
import orjson
import trio

from ._errors import ConnectionClosed, RealtimeError
from ._payloads import check_json
from ._topics import MAX_TOPIC_LENGTH
from ._util import NoPublicConstructor, open_service_nursery
from .bus._channel import EventChannel, check_int

__all__ = [
    "DEFAULT_FLUSH_TIMEOUT",
    "DEFAULT_MAX_QUEUE",
    "EventLogHandler",
    "EventLogStatistics",
    "log_topic",
    "open_event_log_handler",
]

#: Records the handler queues for publishing before it drops new ones.
DEFAULT_MAX_QUEUE: Final = 1000
#: Seconds leaving :func:`open_event_log_handler`'s block waits for queued records to be
#: published before it drops the rest.
DEFAULT_FLUSH_TIMEOUT: Final = 1.0
# The first token of every log topic.
_PREFIX: Final = "log"

# Set in a context whose records must not be published: while a handler handles a record
# (in the logging thread) and in the publishing task (everything the channel's publish path
# logs runs there). One flag for every EventLogHandler, so two handlers cannot feed each other.
_handling: Final = contextvars.ContextVar("trio_realtime_log_handling", default=False)

_NOT_TOKEN: Final = re.compile(r"[^A-Za-z0-9_\-]")

# The attributes every LogRecord has (and those formatters add): the rest are the extras.
_STANDARD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


def _token(text: str) -> str:
    return _NOT_TOKEN.sub("_", text) or "_"


def log_topic(level: str, logger: str) -> str:
    """The topic a record of *level* (its level name) from *logger* (its name) goes to.

    The topic is ``log.<level>.<logger>``: the level name lowercased, then the logger name's
    ``.``-separated parts as tokens (the root logger is ``root``). Any level and logger name
    give a valid topic: a character outside ``A-Z a-z 0-9 _ -`` becomes ``_``, an empty part
    (``a..b``, a leading or trailing ``.``) becomes ``_``, and a topic longer than the
    1024-character limit is cut there (at a token boundary if the cut leaves a trailing
    ``.``). So ``log_topic("WARNING", "app.db")`` is ``"log.warning.app.db"`` and
    ``log_topic("Level 5", "my app/ü")`` is ``"log.level_5.my_app__"``.
    """
    tokens = [_PREFIX, _token(level.lower()), *map(_token, logger.split("."))]
    topic = ".".join(tokens)
    if len(topic) > MAX_TOPIC_LENGTH:
        topic = topic[:MAX_TOPIC_LENGTH].rstrip(".")
    return topic


def _text(text: str) -> str:
    """*text* as valid Unicode (lone surrogates written as ``\\udcxx`` escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _json_safe(value: object) -> Any:
    """*value* as a JSON value taken now (a later change to it does not show), else its repr."""
    if type(value) is str:
        return _text(value)
    if value is None or type(value) in (bool, int, float):
        try:
            check_json(value)
        except TypeError:
            pass
        else:
            return value
    else:
        try:
            check_json(value)
            return orjson.loads(orjson.dumps(value))
        except (TypeError, orjson.JSONEncodeError):
            pass
    try:
        return _text(repr(value))
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the record
        return f"<{type(value).__qualname__} object: repr failed>"


@attrs.frozen(kw_only=True)
class EventLogStatistics:
    """A snapshot of an :class:`EventLogHandler`'s counters.

    Attributes:
        queued: Records waiting to be published now (the one being published included).
        published: Records published.
        dropped: Records lost before publishing: the queue was full, the handler had closed,
            or leaving the block did not leave time to publish them.
        failed: Records the channel did not take: it refused the event, or had closed.
    """

    queued: int
    published: int
    dropped: int
    failed: int


class _Metaclass(NoPublicConstructor):
    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            "trio_realtime.logging.EventLogHandler has no public constructor; use "
            "trio_realtime.logging.open_event_log_handler() instead"
        )


class EventLogHandler(logging.Handler, metaclass=_Metaclass):
    """A :class:`logging.Handler` that publishes each record as an event on an EventChannel.

    Get one from :func:`open_event_log_handler`. Each record becomes an event on
    :func:`log_topic` (``log.<level>.<logger>``) whose data is a dict:

    ``message``
        The formatted message: the handler's formatter if it has one, else
        :meth:`logging.LogRecord.getMessage`.
    ``level``, ``levelno``
        The level's name (``"WARNING"``) and number (30).
    ``logger``
        The logger's name.
    ``time``
        When the record was made, ISO 8601 in UTC with microseconds.
    ``exception``
        The formatted traceback when the record has ``exc_info``, else None.
    ``stack``
        The stack when the record was logged with ``stack_info=True``, else None.
    ``extra``
        The record's other attributes (those given with ``extra=``), each as a JSON value
        when it is one, else as its :func:`repr`.

    :meth:`emit` never blocks and may be called from any thread: from the handler's Trio
    tasks, from worker threads (``trio.to_thread``) and from threads Trio does not know. It
    builds the data in the caller's thread and queues it; when the queue holds ``max_queue``
    records, the new record is dropped and counted (:attr:`dropped`). Records that would feed
    the handler itself are not published: one logged while a record is handled in the same
    thread (by a filter or formatter that logs), and one logged by the publishing task (the
    channel's own logging during a publish, such as the bus warning that an event did not
    fit a typed subscription).
    """

    def __init__(self, channel: EventChannel, *, max_queue: int, level: int | str) -> None:
        super().__init__(level)
        self._channel = channel
        self._max_queue = max_queue
        self._token = trio.lowlevel.current_trio_token()
        # Guards the queue, the counters emit changes, and the wake-up hand-over.
        self._queue_lock = threading.Lock()
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._in_flight = False
        self._closed = False
        self._waiting = False
        self._wakeup = trio.Event()
        self._finished = trio.Event()
        # The publishing task runs shielded, so that a cancelled block still flushes; leaving
        # the block gives it a deadline, then cancels it.
        self._scope = trio.CancelScope(shield=True)
        self._published = 0
        self._dropped = 0
        self._failed = 0

    @property
    def channel(self) -> EventChannel:
        """Where the records are published."""
        return self._channel

    @property
    def max_queue(self) -> int:
        """The most records queued for publishing; a new one past it is dropped."""
        return self._max_queue

    @property
    def dropped(self) -> int:
        """Records lost before publishing (see :class:`EventLogStatistics`)."""
        return self._dropped

    def statistics(self) -> EventLogStatistics:
        """A snapshot of the handler's counters."""
        with self._queue_lock:
            return EventLogStatistics(
                queued=len(self._queue) + int(self._in_flight),
                published=self._published,
                dropped=self._dropped,
                failed=self._failed,
            )

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit *record*, unless it was logged while a record is handled or
        published (then it is ignored)."""
        if _handling.get():
            return False
        reset = _handling.set(True)
        try:
            return bool(super().handle(record))
        finally:
            _handling.reset(reset)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue *record* for publishing, or drop it (counted) if the queue is full or the
        handler has closed. Never blocks."""
        try:
            if len(self._queue) >= self._max_queue:  # full: drop without building the data
                with self._queue_lock:
                    self._dropped += 1
                return
            item = (log_topic(record.levelname, record.name), self._data(record))
            with self._queue_lock:
                if self._closed or len(self._queue) >= self._max_queue:
                    self._dropped += 1
                    return
                self._queue.append(item)
                wake = self._waiting
                self._waiting = False
                wakeup = self._wakeup
            if wake:
                self._wake(wakeup)
        except Exception:  # noqa: BLE001 - logging's convention: report, never raise
            self.handleError(record)

    def close(self) -> None:
        """Take no more records (later ones are dropped and counted). Publishing stops when
        :func:`open_event_log_handler`'s block ends."""
        with self._queue_lock:
            self._closed = True
            wake = self._waiting
            self._waiting = False
            wakeup = self._wakeup
        if wake:
            self._wake(wakeup)
        super().close()

    def _wake(self, wakeup: trio.Event) -> None:
        # In a task of our own run, set the event directly; anywhere else (a worker or foreign
        # thread, or Trio's thread outside a task), hand it to the run: run_sync_soon is safe
        # from any thread and never blocks, and Event.set cannot raise in the run.
        if trio.lowlevel.in_trio_task() and trio.lowlevel.current_trio_token() is self._token:
            wakeup.set()
            return
        try:
            self._token.run_sync_soon(wakeup.set)
        except trio.RunFinishedError:
            pass  # the run is over: nothing will publish the queue

    def _data(self, record: logging.LogRecord) -> dict[str, Any]:
        if self.formatter is None:
            message = record.getMessage()
            formatter: logging.Formatter = _PLAIN
        else:
            message = self.formatter.format(record)
            formatter = self.formatter
        exception = None
        if record.exc_info:
            exception = record.exc_text or formatter.formatException(record.exc_info)
        return {
            "message": _text(message),
            "level": _text(record.levelname),
            "levelno": record.levelno,
            "logger": _text(record.name),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "exception": None if exception is None else _text(exception),
            "stack": None if record.stack_info is None else _text(record.stack_info),
            "extra": {
                _text(str(name)): _json_safe(value)
                for name, value in record.__dict__.items()
                if name not in _STANDARD_ATTRIBUTES
            },
        }

    async def _publish_queued(self, task_status: trio.TaskStatus[None]) -> None:
        """The publishing task: publish until closed and drained, or cancelled; whatever is
        left is counted as dropped."""
        _handling.set(True)  # whatever the publish path logs is not published
        task_status.started()
        try:
            with self._scope:
                await self._publish_until_closed()
        finally:
            with self._queue_lock:
                self._closed = True
                self._dropped += len(self._queue) + int(self._in_flight)
                self._queue.clear()
                self._in_flight = False
            self._finished.set()

    async def _publish_until_closed(self) -> None:
        """Publish the queued records in order until closed and drained."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    if self._closed:
                        return
                    self._waiting = True
                    wakeup = self._wakeup = trio.Event()
                    item = None
                else:
                    item = self._queue.popleft()
                    self._in_flight = True
            if item is None:
                await wakeup.wait()
                continue
            if not await self._publish(*item):
                return

    async def _publish(self, topic: str, data: dict[str, Any]) -> bool:
        """Publish one record; False once the channel has closed."""
        try:
            await self._channel.publish(topic, data)
        except (trio.ClosedResourceError, ConnectionClosed):
            with self._queue_lock:
                self._in_flight = False
                self._failed += 1
            return False
        except (RealtimeError, TypeError, ValueError):
            with self._queue_lock:
                self._in_flight = False
                self._failed += 1
        else:
            with self._queue_lock:
                self._in_flight = False
                self._published += 1
        return True


_PLAIN: Final = logging.Formatter()


@asynccontextmanager
async def open_event_log_handler(
    channel: EventChannel,
    *,
    attach_to: logging.Logger | str | None = None,
    level: int | str = logging.NOTSET,
    max_queue: int = DEFAULT_MAX_QUEUE,
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
) -> AsyncIterator[EventLogHandler]:
    """Publish log records to *channel* for the duration of an ``async with`` block.

    The handler's publishing task runs in a nursery this block owns, in the Trio run that
    opened it; the channel (a bus from :func:`~trio_realtime.open_bus` or a client from
    :func:`~trio_realtime.open_client`) must stay open for the whole block. Leaving the block
    detaches the handler from *attach_to*, takes no more records, waits up to
    *flush_timeout* seconds for the queued ones to be published (shielded: this happens
    even when the block is cancelled), then drops the rest (counted in
    :attr:`EventLogHandler.dropped`) and stops.

    Args:
        channel: Where to publish.
        attach_to: A logger (or its name; ``""`` is the root logger) to add the handler to
            for the block. None: add it yourself, to as many loggers as you like, and remove
            it before the block ends (records it gets after the block are dropped).
        level: The handler's level: records below it are ignored.
        max_queue: The most records waiting to be published; a new one past it is dropped.
        flush_timeout: The most seconds leaving the block spends publishing queued records.

    Raises:
        ValueError: if *max_queue* is not a positive int or *flush_timeout* is negative.
    """
    check_int(max_queue, "max_queue", minimum=1)
    if not flush_timeout >= 0:
        raise ValueError(f"flush_timeout must be 0 or more seconds, not {flush_timeout!r}")
    logger = logging.getLogger(attach_to) if isinstance(attach_to, str) else attach_to
    handler = EventLogHandler._create(channel, max_queue=max_queue, level=level)
    async with open_service_nursery() as nursery:
        await nursery.start(handler._publish_queued)
        if logger is not None:
            logger.addHandler(handler)
        try:
            yield handler
        finally:
            try:
                if logger is not None:
                    logger.removeHandler(handler)
                handler.close()
                handler._scope.deadline = trio.current_time() + flush_timeout
                with trio.move_on_after(flush_timeout, shield=True):
                    await handler._finished.wait()
            finally:
                handler._scope.cancel()
