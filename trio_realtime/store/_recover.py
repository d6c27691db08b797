"""Recovering what is readable from a damaged SQLite store file into a new one.

Plain, blocking code (``trio-realtime recover`` runs it in a worker thread). It reads the
damaged file read-only through SQLite, seq range by seq range; a range that cannot be read is
read again one seq at a time. The events SQLite cannot reach (a damaged interior page of the
table hides all the rows below it) are then looked for page by page in the file itself, as
SQLite's own ``.recover`` does: every intact leaf page of a table holds whole rows (see
https://sqlite.org/fileformat2.html). The events found are written with their seqs unchanged
into a new file, which opens as a store; the damaged file is left as it was.
"""

from __future__ import annotations

import secrets
import sqlite3
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import attrs

from .._errors import StoreError
from ._codec import decode_row
from ._lock import StoreLock
from ._sqlite_db import _COLUMNS, _INDEXES, _INSERT, _SCHEMA, SCHEMA_VERSION

__all__ = ["RecoveryReport", "recover"]

#: Seqs read at a time; a range that fails is read again one seq at a time.
RECOVERY_RANGE: Final = 512


@attrs.frozen(kw_only=True)
class RecoveryReport:
    """What :func:`recover` did.

    Attributes:
        source: The damaged file.
        output: The new file.
        recovered: Events written to the new file.
        unreadable: Seqs that could not be read (their events, if they existed, are lost).
        last_seq: The highest seq ever assigned, as the new file keeps it.
        epoch: The new file's epoch: the old one when nothing was lost, else a new one, so
            that resuming clients learn that events may be missing (``EpochChanged``).
        kept_epoch: Whether *epoch* is the damaged file's.
    """

    source: str
    output: str
    recovered: int
    unreadable: int
    last_seq: int
    epoch: str
    kept_epoch: bool


def recover(path: str | Path, output: str | Path | None = None) -> RecoveryReport:
    """Copy every readable event of the store file *path* into a new store file.

    The new file (*output*, by default *path* with ``.recovered`` added) must not exist. No
    broker may have *path* open (its lock is taken while recovering).

    Raises:
        StoreError: if *path* cannot be read at all, is in use, or *output* exists.
    """
    source = str(path)
    target = str(output) if output is not None else f"{source}.recovered"
    if Path(target).exists():
        raise StoreError(f"{target!r} exists already: move it aside, or name another output")
    if not Path(source).is_file():
        raise StoreError(f"event store {source!r}: no such file")
    lock = StoreLock.acquire(source)
    try:
        return _recover(source, target)
    finally:
        lock.release()


def _recover(source: str, target: str) -> RecoveryReport:
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"event store {source!r} cannot be opened: {exc}") from exc
    try:
        meta = _read_meta(src)
        low, high = _seq_range(src, meta)
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            dst.execute("PRAGMA journal_mode = WAL")
            dst.execute("BEGIN")
            for statement in [*_SCHEMA.split(";"), *_INDEXES]:
                if statement.strip():
                    dst.execute(statement)
            missing: set[int] = set()
            recovered, top = _copy_events(src, dst, low, high, missing)
            if missing:
                found = _scan_pages(source, missing)
                for seq in sorted(found):
                    if _insert(dst, found[seq]):
                        recovered += 1
                        top = max(top, seq)
                        missing.discard(seq)
            unreadable = len(missing)
            last_seq = max(high, top)
            old_epoch = meta.get("epoch")
            kept = unreadable == 0 and isinstance(old_epoch, str)
            epoch = str(old_epoch) if kept else secrets.token_hex(16)
            dst.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", SCHEMA_VERSION),
                    ("epoch", epoch),
                    ("created", datetime.now(UTC).isoformat()),
                    ("last_seq", last_seq),
                ],
            )
            dst.execute("COMMIT")
        finally:
            dst.close()
    finally:
        src.close()
    return RecoveryReport(
        source=source,
        output=target,
        recovered=recovered,
        unreadable=unreadable,
        last_seq=last_seq,
        epoch=epoch,
        kept_epoch=kept,
    )


def _read_meta(src: sqlite3.Connection) -> dict[str, object]:
    try:
        return dict(src.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError:
        return {}  # a new epoch, and the seq range from the events alone


def _scalar(src: sqlite3.Connection, sql: str) -> int | None:
    try:
        value = src.execute(sql).fetchone()[0]
    except sqlite3.DatabaseError:
        return None
    return value if isinstance(value, int) else None


def _seq_range(src: sqlite3.Connection, meta: dict[str, object]) -> tuple[int, int]:
    """The seqs to try: from the lowest stored to the highest ever assigned, as far as known."""
    recorded = meta.get("last_seq")
    high = max(
        recorded if isinstance(recorded, int) else 0,
        _scalar(src, "SELECT max(seq) FROM events") or 0,
    )
    low = _scalar(src, "SELECT min(seq) FROM events") or 1
    if high == 0:
        raise StoreError(
            "the file's events and meta table are both unreadable: nothing can be recovered; "
            "restore it from a backup"
        )
    return low, high


def _copy_events(
    src: sqlite3.Connection, dst: sqlite3.Connection, low: int, high: int, missing: set[int]
) -> tuple[int, int]:
    """Copy the events SQLite can read, seqs *low* to *high*: (copied, top seq copied).

    Seqs whose read failed (or whose row was not a sound event) are added to *missing*.
    """
    select = f"SELECT {_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq"
    copied = top = 0
    for start in range(low, high + 1, RECOVERY_RANGE):
        end = min(start + RECOVERY_RANGE - 1, high)
        try:
            rows = src.execute(select, (start, end)).fetchall()
        except sqlite3.DatabaseError:
            rows = []
            for seq in range(start, end + 1):
                try:
                    rows.extend(src.execute(select, (seq, seq)).fetchall())
                except sqlite3.DatabaseError:
                    missing.add(seq)
        for row in rows:
            if _insert(dst, row):
                copied += 1
                top = max(top, row[0])
            else:
                missing.add(row[0])
    return copied, top


def _insert(dst: sqlite3.Connection, row: tuple[object, ...]) -> bool:
    """Store *row* in the new file if it makes a sound event; whether it did."""
    try:
        decode_row(row)  # type: ignore[arg-type]
        dst.execute(_INSERT, row)
    except (ValueError, TypeError, OverflowError, KeyError, sqlite3.IntegrityError):
        return False
    return True


# -- reading rows from the file's pages -------------------------------------------------------

_LEAF_TABLE: Final = 0x0D


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    """The SQLite varint at *at* in *buf*, and the offset after it."""
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


def _scan_pages(path: str, wanted: set[int]) -> dict[int, tuple[object, ...]]:
    """The rows with a seq in *wanted* found on the leaf pages of the file *path*."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 100 or not data.startswith(b"SQLite format 3\x00"):
        return {}
    page_size = struct.unpack(">H", data[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    usable = page_size - data[20]
    found: dict[int, tuple[object, ...]] = {}
    for number in range(2, len(data) // page_size + 1):  # page 1 is SQLite's own table
        page = data[(number - 1) * page_size : number * page_size]
        if page[0] != _LEAF_TABLE:
            continue
        for seq, payload in _cells(data, page, page_size, usable):
            if seq in wanted and seq not in found:
                row = _record(payload)
                if row is not None and len(row) == 9 and row[0] is None:
                    found[seq] = (seq, *row[1:])
    return found


def _cells(data: bytes, page: bytes, page_size: int, usable: int) -> Iterator[tuple[int, bytes]]:
    """(rowid, payload) of each cell of a table leaf *page* that reads whole."""
    try:
        count = struct.unpack(">H", page[3:5])[0]
        for i in range(count):
            at = struct.unpack(">H", page[8 + 2 * i : 10 + 2 * i])[0]
            size, at = _varint(page, at)
            rowid, at = _varint(page, at)
            payload = _payload(data, page, at, size, page_size, usable)
            if payload is not None:
                yield rowid, payload
    except (IndexError, struct.error):
        return  # a damaged page: what it still held is lost


def _payload(
    data: bytes, page: bytes, at: int, size: int, page_size: int, usable: int
) -> bytes | None:
    """A cell's payload of *size* bytes from *at*, following its overflow pages."""
    if size > len(data):
        return None  # a damaged size
    local_max = usable - 35
    if size <= local_max:
        return page[at : at + size]
    least = (usable - 12) * 32 // 255 - 23
    local = least + (size - least) % (usable - 4)
    if local > local_max:
        local = least
    parts = [page[at : at + local]]
    left = size - local
    overflow = struct.unpack(">I", page[at + local : at + local + 4])[0]
    pages = len(data) // page_size
    while left > 0:
        if not 2 <= overflow <= pages:
            return None
        chunk = data[(overflow - 1) * page_size : (overflow - 1) * page_size + usable]
        overflow = struct.unpack(">I", chunk[:4])[0]
        parts.append(chunk[4 : 4 + min(left, usable - 4)])
        left -= usable - 4
    return b"".join(parts)


def _record(payload: bytes) -> tuple[object, ...] | None:
    """The column values of a record (SQLite's record format), or None if it is not one."""
    try:
        header_size, at = _varint(payload, 0)
        types = []
        while at < header_size:
            kind, at = _varint(payload, at)
            types.append(kind)
        values: list[object] = []
        at = header_size
        for kind in types:
            if kind == 0:
                values.append(None)
            elif 1 <= kind <= 6:
                width = (0, 1, 2, 3, 4, 6, 8)[kind]
                values.append(int.from_bytes(payload[at : at + width], "big", signed=True))
                at += width
            elif kind == 7:
                values.append(struct.unpack(">d", payload[at : at + 8])[0])
                at += 8
            elif kind in (8, 9):
                values.append(kind - 8)
            elif kind >= 12:
                width = (kind - 12) // 2
                raw = payload[at : at + width]
                values.append(raw.decode() if kind % 2 else raw)
                at += width
            else:
                return None
        return tuple(values) if at == len(payload) else None
    except (IndexError, UnicodeDecodeError, struct.error):
        return None
