"""SQLiteStore: the event store in a SQLite file, written through one worker thread.

Threading design: the store owns one worker thread and one sqlite3 connection, used by that
thread only. Trio tasks hand it *jobs* through a :class:`queue.SimpleQueue` (never blocking the
event loop) and sleep in :func:`trio.lowlevel.wait_task_rescheduled`. The worker takes every job
that is waiting, commits all the appends among them in one transaction (group commit), runs the
rest, and wakes the callers with one :meth:`trio.lowlevel.TrioToken.run_sync_soon` per batch.
Between batches it applies retention. :meth:`SQLiteStore.aclose` stops the thread and joins it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, cast

import attrs
import outcome
import trio

from .._errors import StoreError
from ._base import (
    DEFAULT_READ_LIMIT,
    Store,
    StoreStatistics,
    _not_open_error,
    check_cursor,
    check_read_args,
    check_retention,
)
from ._codec import encode_events, plan_pattern, to_micros, with_seqs
from ._sqlite_db import DEFAULT_INTEGRITY_CHECK_TIMEOUT, Database, OpenInfo, ReadState

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from .._event import Event
    from ._codec import Row

__all__ = [
    "DEFAULT_INTEGRITY_CHECK_TIMEOUT",
    "READ_SLICE",
    "RETENTION_CHUNK",
    "RETENTION_INTERVAL",
    "SQLiteStore",
]

#: Seconds between two retention passes while events keep arriving (and between two age
#: checks while idle, when ``max_age`` is set).
RETENTION_INTERVAL: Final = 1.0

#: At most this many events are removed per retention transaction, so that the appends
#: waiting behind it are not held up for long. A store with ``max_events`` also trims as soon
#: as it holds this many events too many.
RETENTION_CHUNK: Final = 5000

#: Seconds a pattern read may scan before it lets waiting appends go first (it then resumes).
READ_SLICE: Final = 0.01

_MICROSECOND: Final = timedelta(microseconds=1)

T = TypeVar("T")

# Job kinds.
_APPEND: Final = 0
_READ: Final = 1
_CALL: Final = 2
_OPEN: Final = 3
_CLOSE: Final = 4


class _Job:
    """One request from a Trio task to the worker."""

    __slots__ = ("arg", "cancelled", "claimed", "kind", "task")

    def __init__(self, kind: int, arg: Any) -> None:
        self.kind = kind
        self.arg = arg
        self.task: trio.lowlevel.Task | None = None
        # Both are changed only under SQLiteStore._lock: an append is *claimed* when the worker
        # takes it into a transaction (it can no longer be cancelled), and *cancelled* when its
        # caller gave up first (the worker then skips it).
        self.cancelled = False
        self.claimed = False


_Result = tuple[_Job, outcome.Outcome[Any]]


class SQLiteStore(Store):
    """An event store in a SQLite file (WAL journal), with group commit.

    ::

        async with SQLiteStore("events.db", max_age=timedelta(days=7)) as store:
            ...

    One worker thread owns the connection; concurrent appends from many tasks are committed
    together, one transaction per batch the worker finds waiting, and each caller gets its seqs
    (in the order the appends were made). The job queue needs no bound: every caller waits for
    its own result, so it holds at most one job per waiting task, and appenders are held back
    by the pace of the commits.

    One store per file: while open, the store holds an exclusive lock on the file (an
    ``flock`` on ``<path>-lock``, which holds its pid and host name), which the system releases
    when the process ends, however it ends. Opening a file whose lock another store holds, in
    this process or another, fails with a :exc:`StoreError` naming the holder. Other programs
    may still read the file with SQLite (a backup, the ``sqlite3`` shell).

    Opening checks the file with ``PRAGMA quick_check`` and refuses a damaged one, with a
    :exc:`StoreError` saying how to recover it. The check reads the whole file; if it takes more
    than ``integrity_check_timeout`` seconds, it is given up with a warning (logger
    ``trio_realtime.store``), and the store opens unchecked.

    Cancellation: an :meth:`append` whose caller is cancelled before the worker took it into a
    transaction raises :exc:`trio.Cancelled` and stores nothing. Once the worker has taken it,
    the append cannot be interrupted: it completes (or fails) and returns (or raises) as usual,
    and the cancellation is delivered at the caller's next checkpoint, a transaction later at
    most. So the caller can rely on this: ``Cancelled`` from ``append`` means not stored, a
    return means stored. Reads are abandoned at once when cancelled.

    Retention runs on the worker between batches, removing at most :data:`RETENTION_CHUNK`
    events per transaction from the oldest end: about every :data:`RETENTION_INTERVAL` seconds,
    and as soon as the store holds ``RETENTION_CHUNK`` events more than ``max_events``. So the
    limits are enforced shortly after they are exceeded, not at once; :meth:`apply_retention`
    enforces them now. A background pass that fails is retried at the next interval.

    Args:
        path: The database file; created (with a new :attr:`epoch`) if it does not exist or is
            empty.
        synchronous: ``"normal"``: a stored event survives a crash of the process;
            ``"full"``: it also survives a power loss once :meth:`append` returned (an fsync
            per transaction; slower).
        max_events: Keep at most this many events, removing the oldest (None: no limit).
        max_age: Remove events whose ``time`` is older than this (a timedelta, or seconds),
            once every event before them is too (None: no limit).
        integrity_check_timeout: Seconds the integrity check at open may take (0: no check;
            ``math.inf``: no limit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["normal", "full"] = "normal",
        max_events: int | None = None,
        max_age: timedelta | float | None = None,
        integrity_check_timeout: float = DEFAULT_INTEGRITY_CHECK_TIMEOUT,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        if not integrity_check_timeout >= 0:  # NaN too
            raise ValueError(
                f"integrity_check_timeout must be a number of seconds, 0 or more, not "
                f"{integrity_check_timeout!r}"
            )
        self._integrity_check_timeout = float(integrity_check_timeout)
        self._path = os.fspath(path)
        self._synchronous: Literal["normal", "full"] = synchronous
        self._max_events, self._max_age = check_retention(max_events, max_age)
        self._max_age_us = None if self._max_age is None else self._max_age // _MICROSECOND
        self._state = "new"  # new -> opening -> open -> closed (back to new if open fails)
        self._epoch: str | None = None
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread_done = trio.Event()
        self._close_error: BaseException | None = None
        # Shared with the worker, under _lock.
        self._discard = False  # fail the jobs still queued instead of running them
        self._worker_gone = True
        self._pending = 0
        self._stats = StoreStatistics()
        # Worker-only state.
        self._db: Database | None = None
        self._dirty = False  # events were appended since the last retention pass
        self._trim_more = False  # the last retention pass left work due
        self._next_trim = 0.0

    def __repr__(self) -> str:
        return f"<SQLiteStore {self._path!r} {self._state}>"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def max_events(self) -> int | None:
        """The most events kept (None: no limit)."""
        return self._max_events

    @property
    def max_age(self) -> timedelta | None:
        """The age past which events are removed (None: no limit)."""
        return self._max_age

    @property
    def epoch(self) -> str:
        """The random id given to this file's data when it was created (kept in the file)."""
        if self._epoch is None:
            raise _not_open_error(self)
        return self._epoch

    # -----------------------------------------------------------------------------------------
    # Lifecycle (Trio side)

    async def open(self) -> None:
        """Start the worker thread, lock the file, open (or create) it and check it.

        If opening fails the store stays unopened, with no thread left running and the lock
        released, and may be opened again.

        Raises:
            StoreError: if the file cannot be used: another store holds it, it is damaged, ...
                (the message names it and what to do).
            RuntimeError: if the store is already open.
            trio.ClosedResourceError: if the store was closed.
        """
        if self._state == "closed":
            raise trio.ClosedResourceError(f"{self!r} is closed and cannot be reopened")
        if self._state != "new":
            raise RuntimeError(f"{self!r} is already open")
        self._state = "opening"
        self._token = trio.lowlevel.current_trio_token()
        self._thread_done = trio.Event()
        self._discard = False
        self._worker_gone = False
        self._close_error = None
        self._thread = threading.Thread(
            target=self._run, name=f"trio_realtime SQLiteStore {self._path}", daemon=True
        )
        self._thread.start()
        try:
            info = cast("OpenInfo", await self._submit(_Job(_OPEN, None)))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop_worker(discard=True)
            if self._state == "opening":
                self._state = "new"
            raise
        if self._state != "opening":
            raise trio.ClosedResourceError(f"{self!r} was closed while it was being opened")
        self._epoch = info.epoch
        with self._lock:
            self._stats = StoreStatistics(
                events_stored=info.events_stored, first_seq=info.first_seq, last_seq=info.last_seq
            )
        self._next_trim = time.monotonic()
        self._state = "open"

    async def aclose(self) -> None:
        """Store the appends already queued, then close the file and stop the worker thread.

        Idempotent. If cancelled, it still closes: the appends that no transaction has taken
        yet then fail with :exc:`trio.ClosedResourceError` (the one in progress completes),
        and :exc:`trio.Cancelled` is raised once the thread has stopped.

        Raises:
            StoreError: if SQLite failed to finish writing the file when closing it.
        """
        state, self._state = self._state, "closed"
        if state in ("new", "closed"):
            await trio.lowlevel.checkpoint()
            return
        await self._stop_worker(discard=False)
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error

    async def _stop_worker(self, *, discard: bool) -> None:
        done = self._thread_done
        with self._lock:
            self._discard = self._discard or discard
            if not self._worker_gone:
                self._queue.put(_Job(_CLOSE, None))
        try:
            await done.wait()  # the graceful part: what is queued is stored first
        finally:
            if not done.is_set():
                with self._lock:
                    self._discard = True
                with trio.CancelScope(shield=True):
                    await done.wait()
            assert self._thread is not None
            self._thread.join()  # it has signalled its end: this does not block

    def _check_open(self) -> None:
        if self._state != "open":
            if self._state == "closed":
                raise trio.ClosedResourceError(f"{self!r} is closed")
            raise _not_open_error(self)

    async def _submit(self, job: _Job) -> Any:
        """Queue *job* for the worker and wait for its result."""
        job.task = trio.lowlevel.current_task()
        is_append = job.kind == _APPEND
        with self._lock:
            if self._worker_gone:
                raise StoreError(
                    f"{self!r}: its worker thread has stopped; close it and open a new store"
                )
            if is_append:
                self._pending += 1
            self._queue.put(job)

        def abort(_raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            with self._lock:
                if is_append:
                    if job.claimed:
                        return trio.lowlevel.Abort.FAILED  # being written: wait for it
                    self._pending -= 1
                job.cancelled = True
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake(self, results: list[_Result]) -> None:
        """Runs in Trio: reschedule the callers that are still waiting."""
        for job, result in results:
            if not job.cancelled:
                assert job.task is not None
                trio.lowlevel.reschedule(job.task, result)

    # -----------------------------------------------------------------------------------------
    # Operations (Trio side)

    async def append(self, events: Sequence[Event]) -> list[Event]:
        """Store *events* atomically and return copies of them with ``seq`` set.

        See :meth:`Store.append`, and the class docstring for what a cancelled append did.
        """
        self._check_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        rows = encode_events(events)
        if not rows:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return []
        seqs = cast("range", await self._submit(_Job(_APPEND, rows)))
        return with_seqs(events, seqs)

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

        An exact topic is read through the topic index; a pattern scans seqs from
        ``after`` on, filtering topics in SQLite by their literal prefix and then exactly.
        With ``max_bytes``, the sizes are taken from the stored JSON text as rows come, and
        no row past the one that fills the page is fetched.
        """
        plan = plan_pattern(pattern)
        start = check_read_args(after, limit, max_bytes)
        since_us = None if since is None else to_micros(since)
        self._check_open()
        state = ReadState(plan, start, since_us, limit, after is None, max_bytes=max_bytes)
        return cast("list[Event]", await self._submit(_Job(_READ, state)))

    async def last_seq(self) -> int:
        """The highest seq ever assigned (0 if none)."""
        return await self._call(self._work_last_seq)

    async def first_seq(self) -> int:
        """The lowest seq still stored, or ``last_seq() + 1`` when empty."""
        return await self._call(self._work_first_seq)

    async def apply_retention(self) -> int:
        """Apply ``max_events`` and ``max_age`` now; how many events were removed.

        Raises:
            StoreError: if SQLite failed.
            trio.ClosedResourceError: if the store is closed.
        """
        return await self._call(self._work_trim_all)

    #: It keeps cursors in its file, beside its events.
    keeps_cursors = True

    async def load_cursor(self, name: str) -> int | None:
        """The seq last saved under *name*, or None (see :meth:`Store.load_cursor`)."""
        check_cursor(name)
        return await self._call(lambda: self._database().load_cursor(name))

    async def save_cursor(self, name: str, seq: int) -> None:
        """Save *seq* as the cursor *name*, in a transaction of its own (see
        :meth:`Store.save_cursor`)."""
        check_cursor(name, seq)
        seq = int(seq)
        await self._call(lambda: self._database().save_cursor(name, seq))

    def _database(self) -> Database:
        """The open database (on the worker thread: a job runs only while it is open)."""
        assert self._db is not None
        return self._db

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run *fn* on the worker thread, between batches, and return its result."""
        self._check_open()
        return cast("T", await self._submit(_Job(_CALL, fn)))

    def statistics(self) -> StoreStatistics:
        """A snapshot of the store's statistics, as seen by this store object."""
        size = 0
        for suffix in ("", "-wal"):  # (the file and its write-ahead log: what it takes)
            with contextlib.suppress(OSError):
                size += os.path.getsize(f"{self._path}{suffix}")
        with self._lock:
            return attrs.evolve(self._stats, pending_appends=self._pending, size_bytes=size)

    # -----------------------------------------------------------------------------------------
    # The worker thread

    def _run(self) -> None:
        q = self._queue
        try:
            while True:
                try:
                    job = q.get(timeout=self._idle_timeout())
                except queue.Empty:
                    self._trim_once()
                    continue
                jobs = [job]
                with contextlib.suppress(queue.Empty):
                    while True:
                        jobs.append(q.get_nowait())
                if self._process(jobs):
                    return
                if self._trim_due():
                    self._trim_once()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Close the database, fail what is still queued, and tell Trio the thread is done."""
        try:
            if self._db is not None:
                self._db.close()
        except BaseException as exc:  # noqa: BLE001 - aclose() raises it in the caller
            self._close_error = exc
        finally:
            self._db = None
            left: list[_Result] = []
            with self._lock:
                self._worker_gone = True
                with contextlib.suppress(queue.Empty):
                    while True:
                        job = self._queue.get_nowait()
                        if job.cancelled:
                            continue
                        if job.kind == _APPEND:
                            self._pending -= 1
                        left.append((job, outcome.Error(self._closed_error())))
            self._deliver(left)
            self._notify(self._thread_done.set)

    def _closed_error(self) -> trio.ClosedResourceError:
        return trio.ClosedResourceError(f"{self!r} was closed before this operation ran")

    def _notify(self, fn: Callable[..., object], *args: object) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def _deliver(self, results: list[_Result]) -> None:
        if results:
            self._notify(self._wake, results)

    def _process(self, jobs: list[_Job]) -> bool:
        """Run one batch of jobs; whether the store is to close."""
        appends: list[_Job] = []
        others: list[_Job] = []
        results: list[_Result] = []
        closing = False
        with self._lock:
            discard = self._discard
            for job in jobs:
                if job.cancelled:
                    continue
                if job.kind == _APPEND:
                    self._pending -= 1
                if job.kind == _CLOSE:
                    closing = True
                elif discard:
                    results.append((job, outcome.Error(self._closed_error())))
                    continue
                job.claimed = True
                (appends if job.kind == _APPEND else others).append(job)
        if appends:
            self._deliver(self._commit(appends))
        for job in others:
            if job.kind != _CLOSE:
                result = self._run_job(job, closing)
                if result is not None:
                    results.append(result)
        self._deliver(results)
        return closing

    def _commit(self, jobs: list[_Job]) -> list[_Result]:
        """Store the appends of *jobs* in one transaction."""
        db = self._db
        if db is None:
            return [(job, outcome.Error(self._closed_error())) for job in jobs]
        batches: list[list[Row]] = [job.arg for job in jobs]
        started = time.perf_counter()
        try:
            ranges = db.insert(batches)
        except BaseException as exc:  # noqa: BLE001 - each caller gets its own copy
            return [(job, outcome.Error(_copy_error(exc, self._path))) for job in jobs]
        results: list[_Result] = []
        appends = stored = 0
        last = None
        for job, seqs in zip(jobs, ranges, strict=True):
            if isinstance(seqs, range):
                results.append((job, outcome.Value(seqs)))
                appends += 1
                stored += len(seqs)
                last = seqs[-1]
            else:
                results.append((job, outcome.Error(seqs)))
        if last is not None:
            self._dirty = True
            with self._lock:
                s = self._stats
                self._stats = attrs.evolve(
                    s,
                    events_stored=s.events_stored + stored,
                    first_seq=s.first_seq if s.events_stored else last - stored + 1,
                    last_seq=last,
                    appends=s.appends + appends,
                    events_appended=s.events_appended + stored,
                    transactions=s.transactions + 1,
                    largest_transaction=max(s.largest_transaction, stored),
                    commit_seconds=s.commit_seconds + (time.perf_counter() - started),
                )
        return results

    def _run_job(self, job: _Job, closing: bool) -> _Result | None:
        """Run a job other than an append; None when a read paused (it was queued again)."""
        kind = job.kind
        if kind == _OPEN:
            db = Database(
                self._path,
                synchronous=self._synchronous,
                integrity_check_timeout=self._integrity_check_timeout,
            )
            try:
                info = db.open()
            except BaseException as exc:  # noqa: BLE001 - delivered to open()
                return job, outcome.Error(exc)
            self._db = db
            return job, outcome.Value(info)
        if self._db is None:
            return job, outcome.Error(self._closed_error())
        if kind == _READ:
            state = cast("ReadState", job.arg)
            deadline = time.monotonic() + READ_SLICE
            q = self._queue

            def should_pause() -> bool:
                return not closing and not q.empty() and time.monotonic() >= deadline

            try:
                done = self._db.read(state, should_pause)
            except BaseException as exc:  # noqa: BLE001 - delivered to read()
                return job, outcome.Error(exc)
            if not done:
                q.put(job)
                return None
            with self._lock:
                self._stats = attrs.evolve(self._stats, reads=self._stats.reads + 1)
            return job, outcome.Value(state.found)
        return job, outcome.capture(job.arg)

    # Retention, on the worker.

    def _retains(self) -> bool:
        return self._max_events is not None or self._max_age_us is not None

    def _idle_timeout(self) -> float | None:
        if not self._retains():
            return None
        if self._trim_more:
            return 0
        if self._dirty or self._max_age_us is not None:
            return max(0.0, self._next_trim - time.monotonic())
        return None

    def _trim_due(self) -> bool:
        if not self._retains():
            return False
        if self._trim_more:
            return True
        if (self._dirty or self._max_age_us is not None) and time.monotonic() >= self._next_trim:
            return True
        max_events = self._max_events
        return max_events is not None and self._stats.events_stored >= max_events + RETENTION_CHUNK

    def _trim_once(self) -> int:
        self._next_trim = time.monotonic() + RETENTION_INTERVAL
        self._dirty = False
        self._trim_more = False
        if self._db is None or not self._retains():
            return 0
        try:
            removed, first, more = self._db.trim(
                max_events=self._max_events, max_age_us=self._max_age_us, chunk=RETENTION_CHUNK
            )
        except StoreError:
            return 0  # retried at the next interval; apply_retention() reports it
        self._trim_more = more
        self._count_removed(removed, first)
        return removed

    def _count_removed(self, removed: int, first: int) -> None:
        if removed:
            with self._lock:
                s = self._stats
                self._stats = attrs.evolve(
                    s,
                    events_stored=max(0, s.events_stored - removed),
                    first_seq=first,
                    events_removed=s.events_removed + removed,
                )

    def _work_trim_all(self) -> int:
        if self._db is None or not self._retains():
            return 0
        removed = 0
        while True:
            count, first, more = self._db.trim(
                max_events=self._max_events, max_age_us=self._max_age_us, chunk=RETENTION_CHUNK
            )
            removed += count
            self._count_removed(count, first)
            if not more:
                self._trim_more = False
                return removed

    def _work_last_seq(self) -> int:
        assert self._db is not None
        return self._db.last_seq()

    def _work_first_seq(self) -> int:
        assert self._db is not None
        return self._db.first_seq()


def _copy_error(exc: BaseException, path: str) -> BaseException:
    """A fresh exception for one of the callers that shared a failed transaction."""
    if isinstance(exc, StoreError):
        copy = StoreError(*exc.args)
        copy.__cause__ = exc.__cause__
    else:
        copy = StoreError(f"event store {path!r}: appending failed unexpectedly: {exc!r}")
        copy.__cause__ = exc
    return copy
