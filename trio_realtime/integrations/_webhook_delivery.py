"""The actor of one webhook endpoint: it takes the events that match, posts them, retries.

:meth:`WebhookDelivery.serve` runs in the broker's nursery while the broker serves. Its tasks:

* the *feeder* takes the events the bus hands to the endpoint's inbox (a bounded buffer the
  bus never waits for) and, for stored topics, reads the store from the endpoint's cursor
  when it starts and whenever the inbox had to refuse a stored event, so that nothing
  stored is lost to overflow or to a restart;
* a *delivery* task per event under way (at most ``max_pending``): its attempts and its
  retries (tenacity, sleeping in Trio time), at most ``concurrency`` requests at once;
* the *cursor keeper* saves the cursor in the store at most once per
  :data:`CURSOR_INTERVAL`, and once more as the endpoint stops.

The cursor is the seq up to which every stored event the endpoint gets is done with
(delivered, or given up): the lowest seq under way, less one. After a restart delivery goes
on from it, so an event may be posted again (at least once): receivers deduplicate by
``webhook-id``.

Needs the ``webhooks`` extra (httpx, tenacity).
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final

import attrs
import httpx
import orjson
import tenacity
import trio

from .._errors import StoreError
from ..bus._channel import ACCEPTED, DROPPED, Offered
from ._webhooks import Webhook, WebhookStatistics, parse_retry_after, sign_webhook

if TYPE_CHECKING:
    from .._event import Event
    from ..bus._bus import Bus
    from ..store import Store

__all__ = ["CURSOR_INTERVAL", "WebhookDelivery"]

logger = logging.getLogger("trio_realtime.webhooks")

#: Seconds between two saves of an endpoint's cursor while it moves.
CURSOR_INTERVAL: Final = 1.0
#: Seconds the last save of the cursor may take when the endpoint stops.
CURSOR_SAVE_TIMEOUT: Final = 5.0
#: Stored events read per pattern and page when catching up, at most ...
CATCH_UP_PAGE: Final = 100
#: ... and at most about this many bytes of them.
CATCH_UP_BYTES: Final = 4 * 1024 * 1024
#: Seconds before reading the store again after a read failed.
CATCH_UP_RETRY: Final = 5.0
#: Bytes of an answer's body read (then dropped) so that its connection can be used again;
#: the connection of a longer answer is closed instead.
MAX_ANSWER_BYTES: Final = 64 * 1024
#: Seconds between two log lines about events an endpoint gave up (the others are counted).
LOG_INTERVAL: Final = 60.0
#: The ``Content-Type`` of a structured CloudEvent in JSON.
CONTENT_TYPE: Final = "application/cloudevents+json"
#: ``4xx`` answers that are retried: the others say the request itself is refused.
RETRIED_4XX: Final = frozenset({408, 409, 425, 429})

Announce = Callable[[str, dict[str, Any]], None]


def _user_agent() -> str:
    try:
        return f"trio-realtime/{metadata.version('trio-realtime')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - (running from a source tree)
        return "trio-realtime"


@attrs.frozen
class _Answer:
    """What one attempt came to."""

    #: The HTTP status, or None when no answer came.
    status: int | None
    #: In words, for ``$sys.webhook.failed`` and the log.
    reason: str
    #: Seconds the endpoint asked to wait (``Retry-After``), capped; None if it did not.
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def retry(self) -> bool:
        """Whether another attempt may fare better."""
        status = self.status
        if status is None or status >= 500 or status in RETRIED_4XX:
            return True
        return status < 200  # (2xx is done, 3xx and 4xx are final)


def _retry_wanted(answer: _Answer) -> bool:
    return answer.retry


def _last_answer(state: tenacity.RetryCallState) -> _Answer:
    assert state.outcome is not None
    answer: _Answer = state.outcome.result()
    return answer


def _describe(exc: httpx.HTTPError) -> str:
    kinds: dict[type[httpx.HTTPError], str] = {
        httpx.ConnectTimeout: "connecting timed out",
        httpx.ConnectError: "cannot connect",
        httpx.ReadTimeout: "no answer in time",
        httpx.WriteTimeout: "sending timed out",
        httpx.RemoteProtocolError: "the endpoint broke the HTTP protocol",
    }
    kind = kinds.get(type(exc), type(exc).__name__)
    detail = str(exc)
    return f"{kind}: {detail}" if detail else kind


class _Inbox:
    """The endpoint's buffer: the bus offers it events (through one :class:`_PatternSink`
    per pattern) and never waits; a full inbox refuses."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.events: deque[Event] = deque()
        #: A stored event was refused: the feeder reads the store.
        self.lost_stored = False
        #: Events of unstored topics refused.
        self.dropped = 0
        self.ended = False
        self._name = name
        self._last: Event | None = None
        self._lot = trio.lowlevel.ParkingLot()

    def offer(self, event: Event) -> Offered:
        if self.ended:
            return DROPPED
        if event is self._last:  # (offered again: it matches two of the patterns)
            return ACCEPTED
        self._last = event
        if event.topic.startswith("$sys.webhook.") and _about(event, self._name):
            return DROPPED  # its own failures: posting them could only fail again
        if len(self.events) >= self.size:
            if event.seq is not None:
                self.lost_stored = True
            else:
                self.dropped += 1
            return DROPPED
        self.events.append(event)
        self._lot.unpark()
        return ACCEPTED

    async def get(self) -> Event | None:
        """The next event (None once the bus closed and the inbox is empty)."""
        while not self.events:
            if self.ended:
                return None
            await self._lot.park()
        return self.events.popleft()

    def end(self) -> None:
        self.ended = True
        self._lot.unpark_all()


def _about(event: Event, name: str) -> bool:
    data = event.data
    return isinstance(data, dict) and data.get("webhook") == name


class _PatternSink:
    """Where the bus routes one of an endpoint's patterns (a :class:`~trio_realtime.bus.
    _channel.Sink`): into the endpoint's inbox."""

    group = None

    def __init__(self, pattern: str, inbox: _Inbox) -> None:
        self.pattern = pattern
        self._inbox = inbox

    @property
    def ended(self) -> bool:
        return self._inbox.ended

    def offer(self, event: Event, *, force: bool = False) -> Offered:
        return self._inbox.offer(event)

    def has_room(self) -> bool:
        return len(self._inbox.events) < self._inbox.size

    def accepts(self, topic: str) -> bool:
        return True

    async def wait_room(self) -> None:  # pragma: no cover - (it never answers FULL)
        await trio.lowlevel.checkpoint()

    def add_missed(self, n: int) -> None:  # pragma: no cover - (the bus calls it for replays)
        self._inbox.dropped += n

    def end(self) -> None:
        self._inbox.end()

    def fail(self, exc: BaseException) -> None:  # pragma: no cover - (for replays too)
        self._inbox.end()


class WebhookDelivery:
    """The actor of one :class:`Webhook` endpoint (see the module's docstring).

    Args:
        hook: The endpoint.
        transport: The httpx transport to post through (None: httpx's own, which connects
            directly, with the endpoint's limits); ``httpx.MockTransport`` in tests.
    """

    def __init__(self, hook: Webhook, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.hook: Final = hook
        self._transport = transport
        self._delivered = 0
        self._failed = 0
        self._attempts = 0
        self._failed_attempts = 0
        self._retries_pending = 0
        self._in_flight = 0
        self._dropped_before = 0  # (by the inboxes of earlier runs)
        self._holding = 0  # (1 while the feeder holds an event, waiting for room)
        self._inbox = _Inbox(hook.buffer, hook.name)
        self._disabled_reason: str | None = None
        self._saved: int | None = None
        # The state of one run (serve), made anew by each.
        self._taken = 0
        self._unfinished: list[int] = []
        self._finished: set[int] = set()
        self._room = trio.Semaphore(hook.max_pending)
        self._limiter = trio.CapacityLimiter(hook.concurrency)
        self._recovered = trio.Event()
        self._cursor_moved = trio.Event()
        self._paused_until = -math.inf
        self._last_success = -math.inf
        self._scope = trio.CancelScope()
        self._client: httpx.AsyncClient | None = None
        self._announce: Announce = lambda topic, data: None
        self._unlogged = 0
        self._logged_at = -math.inf
        self._jitter = tenacity.wait_random_exponential(
            multiplier=hook.backoff, max=hook.max_backoff
        )

    @property
    def cursor(self) -> int:
        """The seq up to which the stored events it gets are done with, now."""
        return self._unfinished[0] - 1 if self._unfinished else self._taken

    def statistics(self) -> WebhookStatistics:
        """A snapshot of the endpoint's figures."""
        return WebhookStatistics(
            delivered=self._delivered,
            failed=self._failed,
            attempts=self._attempts,
            failed_attempts=self._failed_attempts,
            retries_pending=self._retries_pending,
            in_flight=self._in_flight,
            queued=len(self._inbox.events) + self._holding,
            dropped=self._dropped_before + self._inbox.dropped,
            disabled=self._disabled_reason is not None,
            disabled_reason=self._disabled_reason,
            cursor=self._saved,
        )

    # -- the run ---------------------------------------------------------------------------

    async def serve(
        self,
        bus: Bus,
        announce: Announce,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver the events of *bus* that match until cancelled, or until the endpoint is
        disabled (then it returns); a startable task. *announce* publishes ``$sys`` events
        (it must not wait)."""
        hook = self.hook
        store = bus.store
        self._start_run(announce)
        inbox = self._inbox
        sinks = [_PatternSink(pattern, inbox) for pattern in hook.patterns]
        for sink in sinks:
            bus.add_sink(sink, retained=False)
        self._taken = bus.last_seq  # (no yield since the sinks were added: nothing missed)
        keeps = store is not None and store.keeps_cursors
        try:
            if store is not None and keeps:
                saved = await self._load_cursor(store)
                if saved is not None:
                    self._taken = min(saved, self._taken)
                self._saved = self._taken
            self._client = httpx.AsyncClient(
                transport=self._transport,
                follow_redirects=False,
                timeout=httpx.Timeout(hook.timeout),
                limits=httpx.Limits(
                    max_connections=hook.concurrency, max_keepalive_connections=hook.concurrency
                ),
                trust_env=False,
                headers={"user-agent": _user_agent()},
            )
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._feed, store, nursery)
                    if store is not None and keeps:
                        nursery.start_soon(self._keep_cursor, store)
                    task_status.started()
        finally:
            inbox.end()
            for sink in sinks:
                bus.remove_sink(sink)
            with trio.CancelScope(shield=True):
                if store is not None and keeps:
                    with trio.move_on_after(CURSOR_SAVE_TIMEOUT):
                        await self._save_cursor(store)
                if self._client is not None:
                    with trio.move_on_after(1.0):
                        await self._client.aclose()
                    self._client = None

    def _start_run(self, announce: Announce) -> None:
        """Fresh state for a run (a broker may serve again once it stopped)."""
        hook = self.hook
        self._announce = announce
        self._dropped_before += self._inbox.dropped
        self._inbox = _Inbox(hook.buffer, hook.name)
        self._disabled_reason = None
        self._holding = 0
        self._unfinished = []
        self._finished = set()
        self._room = trio.Semaphore(hook.max_pending)
        self._limiter = trio.CapacityLimiter(hook.concurrency)
        self._recovered = trio.Event()
        self._cursor_moved = trio.Event()
        self._paused_until = -math.inf
        self._last_success = -math.inf
        self._scope = trio.CancelScope()

    async def _feed(self, store: Store | None, nursery: trio.Nursery) -> None:
        """Hand events to delivery tasks: from the inbox, and from the store when behind."""
        inbox = self._inbox
        catch_up = store is not None  # (events stored after the cursor, before the start)
        while True:
            if store is not None and (catch_up or inbox.lost_stored):
                catch_up = inbox.lost_stored = False
                if not await self._catch_up(store, nursery):
                    catch_up = True
                    await trio.sleep(CATCH_UP_RETRY)
                continue
            event = await inbox.get()
            if event is None:  # the bus closed: the broker is stopping
                await trio.sleep_forever()
            if event.seq is not None and event.seq <= self._taken:
                continue  # read from the store already
            self._holding = 1
            await self._room.acquire()
            self._holding = 0
            self._start(event, nursery)

    async def _catch_up(self, store: Store, nursery: trio.Nursery) -> bool:
        """Deliver the stored events after the last one taken; False if the store failed."""
        patterns = self.hook.patterns
        try:
            first = await store.first_seq()
            if first > self._taken + 1:
                logger.warning(
                    "webhook %r: events after seq %d were removed by the store's retention "
                    "before they were delivered (it holds seq %d on)",
                    self.hook.name,
                    self._taken,
                    first,
                )
            while True:
                pages = [
                    await store.read(
                        pattern, after=self._taken, limit=CATCH_UP_PAGE, max_bytes=CATCH_UP_BYTES
                    )
                    for pattern in patterns
                ]
                if not any(pages):
                    return True
                # Every page holds all its pattern's events up to its last one: take those
                # up to the lowest such seq, once each, in order.
                frontier = min(page[-1].seq or 0 for page in pages if page)
                merged = {e.seq: e for page in pages for e in page if (e.seq or 0) <= frontier}
                for seq in sorted(s for s in merged if s is not None):
                    await self._room.acquire()
                    self._start(merged[seq], nursery)
        except (StoreError, trio.ClosedResourceError) as exc:
            logger.warning("webhook %r: reading the store failed: %s", self.hook.name, exc)
            return False

    def _start(self, event: Event, nursery: trio.Nursery) -> None:
        """Start delivering *event* (a place under way is taken for it)."""
        if event.seq is not None:
            self._taken = event.seq
            heapq.heappush(self._unfinished, event.seq)
        nursery.start_soon(self._deliver, event)

    def _finish(self, event: Event) -> None:
        """*event* is done with (delivered, or given up): the cursor may move past it."""
        if event.seq is None:
            return
        self._finished.add(event.seq)
        unfinished, finished = self._unfinished, self._finished
        while unfinished and unfinished[0] in finished:
            finished.discard(heapq.heappop(unfinished))
        self._cursor_moved.set()

    # -- one event ---------------------------------------------------------------------------

    async def _deliver(self, event: Event) -> None:
        try:
            try:
                body = orjson.dumps(event.to_cloudevent())
            except (ValueError, TypeError) as exc:
                self._give_up(event, 0, f"not a valid CloudEvent: {exc}")
                return
            first = trio.current_time()
            retrying = tenacity.AsyncRetrying(
                stop=tenacity.stop_after_attempt(self.hook.attempts),
                wait=self._wait,
                retry=tenacity.retry_if_result(_retry_wanted),
                sleep=self._sleep,
                retry_error_callback=_last_answer,
            )
            tries: list[int] = []
            try:
                answer: _Answer = await retrying(self._attempt, event, body, tries)
            except Exception as exc:
                logger.exception("webhook %r: delivering event %s failed", self.hook.name, event.id)
                self._give_up(event, len(tries), f"internal error: {exc!r}")
                return
            if answer.ok:
                self._delivered += 1
                self._last_success = trio.current_time()
                if self._retries_pending:  # it answers again: the retries need not wait
                    self._recovered.set()
                    self._recovered = trio.Event()
                self._finish(event)
            elif answer.gone:
                self._disable("it answered 410 Gone")  # (the event stays undelivered)
            else:
                self._give_up(event, len(tries), answer.reason)
                if answer.retry and self._last_success < first:
                    window = trio.current_time() - first
                    self._disable(
                        f"every attempt failed for {window / 3600:.1f} hours ({answer.reason})"
                    )
        finally:
            self._room.release()

    async def _attempt(self, event: Event, body: bytes, tries: list[int]) -> _Answer:
        async with self._limiter:
            pause = self._paused_until - trio.current_time()
            if pause > 0:  # the endpoint asked for a pause (Retry-After)
                await trio.sleep(pause)
            tries.append(1)
            self._attempts += 1
            self._in_flight += 1
            try:
                answer = await self._post(event, body)
            finally:
                self._in_flight -= 1
        if not answer.ok:
            self._failed_attempts += 1
        if answer.retry_after is not None:
            self._paused_until = max(self._paused_until, trio.current_time() + answer.retry_after)
        return answer

    async def _post(self, event: Event, body: bytes) -> _Answer:
        hook, client = self.hook, self._client
        assert client is not None
        timestamp = math.floor(time.time())
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(hook.keys, event.id, timestamp, body),
        }
        with trio.move_on_after(hook.timeout):
            try:
                async with client.stream("POST", hook.url, content=body, headers=headers) as r:
                    status = r.status_code
                    retry_after = r.headers.get("retry-after")
                    await _drain(r)
            except httpx.HTTPError as exc:
                return _Answer(None, _describe(exc))
            wait = None
            if retry_after is not None and not 200 <= status < 300:
                wait = parse_retry_after(retry_after, time.time())
                if wait is not None:
                    wait = min(wait, hook.max_backoff)
            reason = f"HTTP {status}"
            if 300 <= status < 400:
                reason += " (a redirect: not followed)"
            return _Answer(status, reason, wait)
        return _Answer(None, f"no answer within {hook.timeout:g} s")

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Seconds before the next attempt: what the endpoint asked for, else full jitter."""
        answer = _last_answer(state)
        if answer.retry_after is not None:
            return answer.retry_after
        return float(self._jitter(state))

    async def _sleep(self, seconds: float) -> None:
        """Wait for a retry, in Trio time; cut short when a delivery succeeds."""
        self._retries_pending += 1
        try:
            with trio.move_on_after(seconds):
                await self._recovered.wait()
        finally:
            self._retries_pending -= 1

    def _give_up(self, event: Event, attempts: int, reason: str) -> None:
        self._failed += 1
        self._finish(event)
        data: dict[str, Any] = {
            "webhook": self.hook.name,
            "event": event.id,
            "topic": event.topic,
            "seq": event.seq,
            "attempts": attempts,
            "reason": reason,
        }
        self._announce("$sys.webhook.failed", data)
        now = trio.current_time()
        if now - self._logged_at < LOG_INTERVAL:
            self._unlogged += 1
            return
        others = f" (and {self._unlogged} more since the last report)" if self._unlogged else ""
        logger.warning(
            "webhook %r (%s): event %s on %r was not delivered: %s%s",
            self.hook.name,
            self.hook.origin,
            event.id,
            event.topic,
            reason,
            others,
        )
        self._logged_at, self._unlogged = now, 0

    def _disable(self, reason: str) -> None:
        if self._disabled_reason is not None:
            return
        self._disabled_reason = reason
        logger.warning(
            "webhook %r (%s) is disabled until the broker restarts: %s",
            self.hook.name,
            self.hook.origin,
            reason,
        )
        self._announce("$sys.webhook.disabled", {"webhook": self.hook.name, "reason": reason})
        self._scope.cancel()

    # -- the cursor --------------------------------------------------------------------------

    async def _load_cursor(self, store: Store) -> int | None:
        try:
            return await store.load_cursor(self.hook.cursor_name)
        except StoreError as exc:
            logger.warning(
                "webhook %r: cannot read its cursor (%s); it starts from the newest events",
                self.hook.name,
                exc,
            )
            return None

    async def _keep_cursor(self, store: Store) -> None:
        while True:
            await self._cursor_moved.wait()
            self._cursor_moved = trio.Event()
            await self._save_cursor(store)
            await trio.sleep(CURSOR_INTERVAL)

    async def _save_cursor(self, store: Store) -> None:
        cursor = self.cursor
        if cursor == self._saved:
            return
        try:
            await store.save_cursor(self.hook.cursor_name, cursor)
        except (StoreError, trio.ClosedResourceError) as exc:
            logger.warning("webhook %r: cannot save its cursor: %s", self.hook.name, exc)
            return
        self._saved = cursor


async def _drain(response: httpx.Response) -> None:
    """Read a short answer's body (so that its connection serves again), or give up on it."""
    if response.is_stream_consumed:  # (read already: an answer made in process)
        return
    chunks = response.aiter_raw()
    try:
        read = 0
        async for chunk in chunks:
            read += len(chunk)
            if read > MAX_ANSWER_BYTES:
                return  # (leaving the stream closes the connection)
    except httpx.HTTPError:
        pass  # the status came: that is the answer
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
