"""The SQLite side of :class:`SQLiteStore`: plain, blocking sqlite3 code.

Everything here runs on the store's one worker thread, through one connection, one call at a
time; nothing here knows about Trio. sqlite3 errors are translated into :exc:`StoreError` here,
at the edge, with a message that names the file and what to do.

Schema (version 1)::

    meta    key TEXT PRIMARY KEY, value        schema_version, epoch, created, last_seq
    events  seq INTEGER PRIMARY KEY            assigned by us: last_seq + 1, ...
            id TEXT NOT NULL UNIQUE
            topic, type, source TEXT NOT NULL
            time INTEGER NOT NULL              microseconds since 1970-01-01 UTC
            data TEXT NOT NULL                 JSON
            headers TEXT                       JSON object, NULL when empty
            reply_to TEXT
    index events_topic (topic)                 exact-topic reads, in seq order (an index
                                               entry is (topic, rowid), and rowid is seq)
    index events_time (time)                   where a ``since`` read starts

``meta.last_seq`` is the high-water mark of seqs: it is updated in the transaction that stores
events, so seqs are never reused, not even after retention removed every event.

Opening takes the file's lock (see ``_lock.py``) before it touches the file, then runs
``PRAGMA quick_check`` (bounded in time) so that a damaged file is refused at once rather than
found out by the reads that fail later.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
import sqlite3
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

import attrs

from .._errors import StoreError
from ._codec import decode_row, stored_row_size
from ._lock import StoreLock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._event import Event
    from ._codec import PatternPlan, Row, StoredRow

__all__ = [
    "DEFAULT_INTEGRITY_CHECK_TIMEOUT",
    "SCHEMA_VERSION",
    "Database",
    "OpenInfo",
    "ReadState",
    "store_error",
]

logger = logging.getLogger("trio_realtime.store")

#: The schema version this code writes and reads.
SCHEMA_VERSION: Final = 1

#: A pattern read scans seqs in windows of this size, checking between windows whether it has
#: used up its time slice (see :meth:`Database.read`).
READ_WINDOW: Final = 32768

#: Seconds the integrity check at open may take before it is given up (and the file opened
#: unchecked, with a warning). ``PRAGMA quick_check`` reads every page: it took 0.3 s for a
#: 340 MB file in the page cache (measured), so a file that takes longer is many GB, or on a
#: slow disk.
DEFAULT_INTEGRITY_CHECK_TIMEOUT: Final = 10.0

# The integrity check looks at the clock every this many SQLite VM steps (about 20 µs).
_PROGRESS_STEPS: Final = 1000
# At most this many problems are collected by the integrity check (the first is reported).
_MAX_PROBLEMS: Final = 10

_SCHEMA: Final = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    time INTEGER NOT NULL,
    data TEXT NOT NULL,
    headers TEXT,
    reply_to TEXT
);
"""
_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS events_topic ON events (topic)",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time)",
)

_COLUMNS: Final = "seq, id, topic, type, source, time, data, headers, reply_to"
_INSERT: Final = f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_HIGH_WATER: Final = (
    "SELECT max(coalesce((SELECT value FROM meta WHERE key = 'last_seq'), 0),"
    " coalesce((SELECT max(seq) FROM events), 0))"
)
# The meta table's key of a cursor is this prefix and the cursor's name.
_CURSOR_KEY: Final = "cursor:"
_SET_LAST_SEQ: Final = "UPDATE meta SET value = ? WHERE key = 'last_seq'"
# Two subqueries: SQLite answers min() and max() from the b-tree only when each is alone.
_FIRST_LAST: Final = "SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events)"

_ADVICE: Final = {
    "SQLITE_NOTADB": (
        "it is not a SQLite database: check the path, or move the file aside to start a new "
        "store there"
    ),
    "SQLITE_CANTOPEN": (
        "check that its directory exists and that the file and directory are readable and writable"
    ),
    "SQLITE_IOERR": "a disk I/O error: check the disk, and the file's permissions",
    "SQLITE_FULL": "the disk is full: free some space",
    "SQLITE_READONLY": "it is read-only: check the permissions of the file and its directory",
    "SQLITE_PERM": "access was denied: check the permissions of the file and its directory",
    "SQLITE_BUSY": (
        "another process holds a lock on it for too long: stop it, or use another file"
    ),
    "SQLITE_LOCKED": "another connection holds a lock on it: stop it, or use another file",
}


def corrupt_advice(path: str) -> str:
    """What to do with the damaged store file *path*: restore it, start anew, or recover it.

    The recovery command is the project's own (:func:`trio_realtime.store.recover`): SQLite's
    ``.recover`` needs a shell built with ``SQLITE_ENABLE_DBPAGE_VTAB``, and some
    distributions' shells (Debian 12's, Ubuntu 24.04's) are not.
    """
    return (
        f"the file is corrupt: stop the broker, then restore the file from a backup, or move it "
        f"(with its -wal and -shm files) aside to start a new, empty store, or copy what is "
        f"readable into a new file and put that in its place: trio-realtime recover "
        f"{shlex.quote(path)}"
    )


def store_error(exc: BaseException, path: str, action: str) -> StoreError:
    """A :exc:`StoreError` for *exc*, raised by sqlite3 while *action* on the file *path*."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    kind = "_".join(name.split("_")[:2])
    advice = corrupt_advice(path) if kind == "SQLITE_CORRUPT" else _ADVICE.get(kind)
    if advice is None:
        advice = "check the file and the disk; if it is damaged, restore it from a backup"
    return StoreError(f"event store {path!r}: {action} failed: {exc} ({advice})")


@attrs.frozen
class OpenInfo:
    """What :meth:`Database.open` found."""

    epoch: str
    created: str
    events_stored: int
    first_seq: int  # last_seq + 1 when empty
    last_seq: int


@attrs.define
class ReadState:
    """A read in progress: :meth:`Database.read` may take several turns to finish it.

    Attributes:
        plan: The pattern's plan.
        position: Every event with a seq up to this one has been looked at.
        since_us: Only events with ``time`` at or after this (microseconds), if set.
        limit: At most this many events.
        from_start: No ``after`` was given, so the time index may say where ``since`` starts.
        found: The events found so far.
        end: The last seq to look at (fixed when the read starts).
        max_bytes: At most this approximate size of events, but at least one event (None: no
            limit).
        size: The approximate size of the events found so far (counted with ``max_bytes``).
        full: ``max_bytes`` stopped the read.
    """

    plan: PatternPlan
    position: int
    since_us: int | None
    limit: int
    from_start: bool
    found: list[Event] = attrs.field(factory=list)
    end: int | None = None
    max_bytes: int | None = None
    size: int = 0
    full: bool = False


class Database:
    """One SQLite connection to one store file, used from one thread."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: Literal["normal", "full"],
        integrity_check_timeout: float = DEFAULT_INTEGRITY_CHECK_TIMEOUT,
    ) -> None:
        self.path = path
        self._synchronous = synchronous.upper()
        self._integrity_check_timeout = integrity_check_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock: StoreLock | None = None

    # -----------------------------------------------------------------------------------------
    # Opening and closing

    def open(self) -> OpenInfo:
        """Lock the store file, open (or create) it, check its integrity and its schema.

        Raises:
            StoreError: if another store holds the file's lock, or the file cannot be opened,
                is not a store, is corrupt, or has a schema from another version.
        """
        # A database in memory (":memory:", or "" for a temporary one) belongs to its one
        # connection: there is no file to lock.
        lock = None if self.path in ("", ":memory:") else StoreLock.acquire(self.path)
        try:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, cached_statements=64)
            except sqlite3.Error as exc:
                raise store_error(exc, self.path, "opening") from exc
            try:
                info = self._setup(conn)
            except BaseException as exc:
                conn.close()
                if isinstance(exc, sqlite3.Error):
                    raise store_error(exc, self.path, "opening") from exc
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        self._conn = conn
        self._lock = lock
        return info

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """Run ``PRAGMA quick_check``, giving up (with a warning) past the timeout.

        Raises:
            StoreError: if the check finds the file damaged.
        """
        timeout = self._integrity_check_timeout
        if timeout <= 0:
            return
        deadline = time.monotonic() + timeout
        timed_out = False

        def progress() -> int:
            nonlocal timed_out
            timed_out = time.monotonic() >= deadline
            return timed_out

        conn.set_progress_handler(progress, _PROGRESS_STEPS)
        try:
            rows = conn.execute(f"PRAGMA quick_check({_MAX_PROBLEMS})").fetchall()
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", None) or ""
            if timed_out and name == "SQLITE_INTERRUPT":
                logger.warning(
                    "event store %r: the integrity check was skipped, as it took more than %s s "
                    "(integrity_check_timeout); to check the file, run: sqlite3 %s 'PRAGMA "
                    "quick_check'",
                    self.path,
                    timeout,
                    shlex.quote(self.path),
                )
                return
            if name.startswith("SQLITE_CORRUPT"):  # damage the check could not even walk past
                raise self._damaged(str(exc)) from exc
            raise store_error(exc, self.path, "checking its integrity") from exc
        finally:
            conn.set_progress_handler(None, 0)
        # One row per problem, or one row with a line per problem, after a header line.
        problems = [
            line.strip()
            for (text,) in rows
            for line in str(text).splitlines()
            if line.strip() and not line.startswith("*** ")
        ]
        if problems and problems != ["ok"]:
            more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise self._damaged(problems[0] + more)

    def _damaged(self, problem: str) -> StoreError:
        return StoreError(
            f"event store {self.path!r} failed its integrity check ({problem}): "
            f"{corrupt_advice(self.path)}"
        )

    def _setup(self, conn: sqlite3.Connection) -> OpenInfo:
        conn.execute("PRAGMA busy_timeout = 5000")
        self._check_integrity(conn)
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() not in ("wal", "memory"):
            raise StoreError(
                f"event store {self.path!r}: cannot use the WAL journal mode (got {mode!r}); "
                f"the file system may not support it: put the store on a local disk"
            )
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            info = self._load_or_create(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return info

    def _load_or_create(self, conn: sqlite3.Connection) -> OpenInfo:
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            epoch = secrets.token_hex(16)
            created = datetime.now(UTC).isoformat()
            # Statement by statement: executescript() would COMMIT the open transaction.
            for statement in [*_SCHEMA.split(";"), *_INDEXES]:
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", SCHEMA_VERSION),
                    ("epoch", epoch),
                    ("created", created),
                    ("last_seq", 0),
                ],
            )
            return OpenInfo(epoch, created, 0, 1, 0)
        if not {"meta", "events"} <= tables:
            raise StoreError(
                f"event store {self.path!r}: the file is a SQLite database but not a "
                f"trio_realtime event store (it has the tables {sorted(tables)}); use another "
                f"path for the store"
            )
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            if isinstance(version, int) and version > SCHEMA_VERSION:
                what = (
                    f"was written by a newer trio_realtime (schema version {version}; this one "
                    f"reads version {SCHEMA_VERSION}): upgrade trio_realtime"
                )
            else:
                what = (
                    f"has an unknown schema version {version!r} (this trio_realtime reads "
                    f"version {SCHEMA_VERSION}): use another path for the store"
                )
            raise StoreError(f"event store {self.path!r} {what}")
        stored_epoch, stored_created = meta.get("epoch"), meta.get("created")
        if not isinstance(stored_epoch, str) or not isinstance(stored_created, str):
            raise StoreError(
                f"event store {self.path!r}: its meta table is damaged (no epoch); restore the "
                f"file from a backup, or move it aside to start a new store"
            )
        for statement in _INDEXES:  # reads name them: make sure they are there
            conn.execute(statement)
        (last,) = conn.execute(_HIGH_WATER).fetchone()
        if last != meta.get("last_seq"):
            conn.execute(_SET_LAST_SEQ, (last,))
        first, count = conn.execute("SELECT min(seq), count(*) FROM events").fetchone()
        return OpenInfo(
            stored_epoch, stored_created, count, last + 1 if first is None else first, last
        )

    def close(self) -> None:
        """Close the connection (a no-op if it is not open).

        Raises:
            StoreError: if SQLite failed to finish writing the file.
        """
        conn, self._conn = self._conn, None
        lock, self._lock = self._lock, None
        if conn is None:
            return
        try:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA optimize")
            conn.close()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "closing") from exc
        finally:
            if lock is not None:
                lock.release()

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection."""
        assert self._conn is not None, "the database is not open"
        return self._conn

    # -----------------------------------------------------------------------------------------
    # Writing

    def insert(self, batches: list[list[Row]]) -> list[range | ValueError]:
        """Store several appends in one transaction (a group commit).

        Returns, for each batch, the range of seqs it got, or the ValueError that rejected it
        (an event id that is already stored); the other batches are stored all the same.

        Raises:
            StoreError: if the transaction failed; nothing was stored.
        """
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (last,) = conn.execute(_HIGH_WATER).fetchone()
                seq = last
                rows: list[StoredRow] = []
                ranges: list[range | ValueError] = []
                for batch in batches:
                    first = seq + 1
                    for row in batch:
                        seq += 1
                        rows.append((seq, *row))
                    ranges.append(range(first, seq + 1))
                try:
                    conn.executemany(_INSERT, rows)
                except sqlite3.IntegrityError:
                    # Some event id is already stored: store the batches one by one instead,
                    # so that only the offending ones fail.
                    conn.execute("ROLLBACK")
                    conn.execute("BEGIN IMMEDIATE")
                    ranges, seq = self._insert_each(batches)
                conn.execute(_SET_LAST_SEQ, (seq,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "appending") from exc
        return ranges

    def _insert_each(self, batches: list[list[Row]]) -> tuple[list[range | ValueError], int]:
        conn = self.conn
        (seq,) = conn.execute(_HIGH_WATER).fetchone()  # afresh: another process may have written
        results: list[range | ValueError] = []
        for batch in batches:
            conn.execute("SAVEPOINT append")
            try:
                conn.executemany(_INSERT, [(seq + 1 + i, *row) for i, row in enumerate(batch)])
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO append")
                conn.execute("RELEASE append")
                results.append(self._duplicate_error(batch))
                continue
            conn.execute("RELEASE append")
            results.append(range(seq + 1, seq + 1 + len(batch)))
            seq += len(batch)
        return results, seq

    def _duplicate_error(self, batch: list[Row]) -> ValueError:
        ids = [row[0] for row in batch]
        found = self.conn.execute(
            f"SELECT id, seq FROM events WHERE id IN ({', '.join('?' * len(ids))})", ids
        ).fetchone()
        if found is None:  # pragma: no cover - encode_events rejects duplicates within a batch
            return ValueError("an event id of this append is already stored")
        return ValueError(
            f"event id {found[0]!r} is already stored (seq {found[1]}); event ids must be unique"
        )

    def trim(
        self, *, max_events: int | None, max_age_us: int | None, chunk: int
    ) -> tuple[int, int, bool]:
        """Remove up to *chunk* of the oldest events that are past the retention limits.

        Events are removed from the oldest end only: by age, an event goes once it and every
        event before it are older than *max_age_us*.

        Returns:
            ``(removed, first_seq, more)``: how many events were removed, the lowest seq still
            stored (``last_seq + 1`` when empty), and whether more are due.

        Raises:
            StoreError: if SQLite failed.
        """
        conn = self.conn
        try:
            first, last = conn.execute(_FIRST_LAST).fetchone()
            if first is None:
                (high,) = conn.execute(_HIGH_WATER).fetchone()
                return 0, high + 1, False
            limit = min(first + chunk, last + 1)
            cut = first  # remove the events with seq < cut
            if max_events is not None:
                cut = max(cut, last - max_events + 1)
            if max_age_us is not None:
                cutoff = time.time_ns() // 1000 - max_age_us
                young = conn.execute(
                    "SELECT seq FROM events NOT INDEXED WHERE seq >= ? AND seq < ? AND time >= ?"
                    " ORDER BY seq LIMIT 1",
                    (first, limit, cutoff),
                ).fetchone()
                cut = max(cut, limit if young is None else young[0])
            cut = min(cut, limit)
            if cut <= first:
                return 0, first, False
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = conn.execute("DELETE FROM events WHERE seq < ?", (cut,)).rowcount
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            (next_first,) = conn.execute("SELECT min(seq) FROM events").fetchone()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "removing old events") from exc
        if next_first is None:
            return removed, last + 1, False
        return removed, next_first, cut == first + chunk

    # -----------------------------------------------------------------------------------------
    # Cursors: rows of the meta table, under the key ``cursor:<name>``

    def load_cursor(self, name: str) -> int | None:
        """The seq saved as the cursor *name*, or None."""
        try:
            row = self.conn.execute(
                "SELECT value FROM meta WHERE key = ?", (_CURSOR_KEY + name,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "reading a cursor") from exc
        return None if row is None else int(row[0])

    def save_cursor(self, name: str, seq: int) -> None:
        """Save *seq* as the cursor *name*, in a transaction of its own."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_CURSOR_KEY + name, seq),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "saving a cursor") from exc

    # -----------------------------------------------------------------------------------------
    # Reading

    def last_seq(self) -> int:
        """The highest seq ever assigned (0 if none)."""
        try:
            (last,) = self.conn.execute(_HIGH_WATER).fetchone()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "reading") from exc
        return int(last)

    def first_seq(self) -> int:
        """The lowest seq stored, or ``last_seq() + 1`` when empty."""
        try:
            (first,) = self.conn.execute("SELECT min(seq) FROM events").fetchone()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "reading") from exc
        return self.last_seq() + 1 if first is None else int(first)

    def read(self, state: ReadState, should_pause: Callable[[], bool]) -> bool:
        """Advance *state*; whether the read is finished.

        A read of an exact topic runs to the end in one go: the topic index hands
        over just the matching rows, in seq order. A pattern read scans seqs in windows of
        :data:`READ_WINDOW`, filtering topics with ``GLOB`` (in SQLite) and then, for patterns
        with ``*``, exactly (in Python), and stops early when *should_pause* says so, to be
        called again later.

        Raises:
            StoreError: if SQLite failed.
        """
        try:
            return self._read(state, should_pause)
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "reading") from exc

    def _read(self, state: ReadState, should_pause: Callable[[], bool]) -> bool:
        conn = self.conn
        found = state.found
        if len(found) >= state.limit or state.full:
            return True
        plan = state.plan
        since_us = state.since_us
        if state.end is None:
            first, end = conn.execute(_FIRST_LAST).fetchone()
            if first is None:
                return True
            state.end = end
            state.position = max(state.position, first - 1)
            if since_us is not None and state.from_start:
                (start,) = conn.execute(
                    "SELECT min(seq) FROM events INDEXED BY events_time WHERE time >= ?",
                    (since_us,),
                ).fetchone()
                if start is None:
                    return True
                state.position = max(state.position, start - 1)
        end = state.end
        time_clause = "" if since_us is None else " AND time >= ?"
        time_param: tuple[int, ...] = () if since_us is None else (since_us,)
        budget = state.max_bytes
        if plan.exact is not None:
            cursor = conn.execute(
                f"SELECT {_COLUMNS} FROM events INDEXED BY events_topic"
                f" WHERE topic = ? AND seq > ? AND seq <= ?{time_clause} ORDER BY seq LIMIT ?",
                (plan.exact, state.position, end, *time_param, state.limit - len(found)),
            )
            if budget is None:
                found.extend(map(decode_row, cursor.fetchall()))
            else:
                try:
                    _take(state, cursor, None)
                finally:
                    cursor.close()
            return True
        glob_clause = "" if plan.glob is None else " AND topic GLOB ?"
        glob_param: tuple[str, ...] = () if plan.glob is None else (plan.glob,)
        sql = (
            f"SELECT {_COLUMNS} FROM events NOT INDEXED"
            f" WHERE seq > ? AND seq <= ?{glob_clause}{time_clause} ORDER BY seq"
        )
        check = None if plan.glob_is_exact else plan.matches
        limit = state.limit
        while state.position < end:
            low = state.position
            high = min(low + READ_WINDOW, end)
            if check is None:
                cursor = conn.execute(
                    sql + " LIMIT ?", (low, high, *glob_param, *time_param, limit - len(found))
                )
            else:
                cursor = conn.execute(sql, (low, high, *glob_param, *time_param))
            if check is None and budget is None:
                found.extend(map(decode_row, cursor.fetchall()))
            else:
                try:
                    if _take(state, cursor, check):
                        return True
                finally:
                    cursor.close()
            if len(found) >= limit:
                return True
            state.position = high
            if state.position < end and should_pause():
                return False
        return True


def _take(state: ReadState, rows: Iterable[StoredRow], check: Callable[[str], bool] | None) -> bool:
    """Add the *rows* whose topic passes *check* to *state* until it is full; whether it is.

    With ``max_bytes``, a row that would take the size found past it ends the read, unless
    nothing was found yet; the rows after it are never fetched.
    """
    found = state.found
    limit = state.limit
    budget = state.max_bytes
    for row in rows:
        if check is not None and not check(row[2]):
            continue
        if budget is not None:
            size = state.size + stored_row_size(row)
            if size > budget and found:
                state.full = True
                return True
            state.size = size
        found.append(decode_row(row))
        if len(found) >= limit:
            return True
    return False
