"""SQLiteStore beyond the shared contract: files, locking, integrity, reopening, retention,
errors, cancellation."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_realtime import Event, StoreError, topic_matches
from trio_realtime.store import (
    RETENTION_CHUNK,
    SQLiteStore,
    _recover,
    _sqlite,
    _sqlite_db,
    approximate_size,
    recover,
)
from trio_realtime.store._codec import encode_events, plan_pattern
from trio_realtime.store._lock import StoreLock

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT = 10


def _store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("trio_realtime SQLiteStore")]


def _remove_store_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        target = path.with_name(path.name + suffix)
        if target.exists():
            target.unlink()


async def _wait_until_claimed(store: SQLiteStore) -> None:
    """Wait until the worker has taken every queued append into a transaction."""
    while store.statistics().pending_appends:
        await trio.lowlevel.checkpoint()


async def test_reopening_keeps_the_epoch_the_events_and_the_seqs(tmp_path: Path) -> None:
    """A reopened file has the same epoch and events, and its seqs continue."""
    path = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            epoch = store.epoch
            first = await store.append([Event(topic="a.b", data={"n": i}) for i in range(5)])
        async with SQLiteStore(str(path)) as store:
            assert store.epoch == epoch
            assert await store.read(">") == first
            assert (await store.first_seq(), await store.last_seq()) == (1, 5)
            stats = store.statistics()
            assert (stats.events_stored, stats.first_seq, stats.last_seq) == (5, 1, 5)
            [more] = await store.append([Event(topic="a.c")])
            assert more.seq == 6


async def test_a_deleted_file_starts_a_new_epoch(tmp_path: Path) -> None:
    """Deleting the file gives a new store: a new epoch, and seqs from 1 again."""
    path = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            epoch = store.epoch
            await store.append([Event(topic="a"), Event(topic="b")])
        _remove_store_files(path)
        async with SQLiteStore(path) as store:
            assert store.epoch != epoch
            assert await store.last_seq() == 0
            [event] = await store.append([Event(topic="a")])
            assert event.seq == 1


async def test_an_empty_file_becomes_a_new_store(tmp_path: Path) -> None:
    """A zero-byte file is taken as a new database, not as corruption."""
    path = tmp_path / "empty.db"
    path.touch()
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            assert store.epoch
            assert await store.last_seq() == 0


async def test_the_file_uses_wal_and_the_documented_schema(tmp_path: Path) -> None:
    """The file is in WAL mode, with meta and events tables and the topic and time indexes."""
    path = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            [event] = await store.append([Event(topic="a.b", data={"x": [1, 2]})])
            epoch = store.epoch
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta["schema_version"] == _sqlite_db.SCHEMA_VERSION
        assert meta["epoch"] == epoch
        assert meta["last_seq"] == 1
        datetime.fromisoformat(meta["created"])
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"events_topic", "events_time"} <= indexes
        row = conn.execute("SELECT seq, id, topic, data, headers FROM events").fetchone()
        assert row == (1, event.id, "a.b", '{"x":[1,2]}', None)
    finally:
        conn.close()


async def test_synchronous_full_stores_and_reopens(tmp_path: Path) -> None:
    """synchronous='full' sets PRAGMA synchronous to FULL, and the store works as usual."""
    path = tmp_path / "full.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path, synchronous="full") as store:
            stored = await store.append([Event(topic="a", data=i) for i in range(3)])
            db = store._db
            assert db is not None
            (level,) = await store._call(lambda: db.conn.execute("PRAGMA synchronous").fetchone())
            assert level == 2  # FULL
        async with SQLiteStore(path, synchronous="full") as store:
            assert await store.read("a") == stored


def test_bad_options_are_rejected(tmp_path: Path) -> None:
    """synchronous, max_events and max_age are checked when the store is made."""
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "x.db", synchronous="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_events"):
        SQLiteStore(tmp_path / "x.db", max_events=0)
    with pytest.raises(ValueError, match="max_age"):
        SQLiteStore(tmp_path / "x.db", max_age=0)
    with pytest.raises(TypeError, match="max_age"):
        SQLiteStore(tmp_path / "x.db", max_age="1h")  # type: ignore[arg-type]
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="integrity_check_timeout"):
            SQLiteStore(tmp_path / "x.db", integrity_check_timeout=bad)


# ---------------------------------------------------------------------------------------------
# Unusable files


async def _assert_open_fails(path: Path, *words: str) -> StoreError:
    store = SQLiteStore(path)
    with trio.fail_after(TIMEOUT), pytest.raises(StoreError) as info:
        await store.open()
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    for word in words:
        assert word in message
    assert _store_threads() == []  # no worker left behind
    StoreLock.acquire(str(path)).release()  # nor the lock
    with pytest.raises(RuntimeError, match="not open"):
        _ = store.epoch
    await store.aclose()
    return info.value


async def test_a_file_of_random_bytes_raises_store_error(tmp_path: Path) -> None:
    """Opening a file that is not a database raises StoreError naming it and what to do."""
    path = tmp_path / "random.db"
    path.write_bytes(os.urandom(8192))
    await _assert_open_fails(path, "not a database", "move the file aside")


async def test_a_truncated_database_raises_store_error(tmp_path: Path) -> None:
    """Opening a truncated store file raises StoreError naming it and saying it is corrupt."""
    path = tmp_path / "truncated.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            for _ in range(4):
                await store.append([Event(topic="a.b", data="x" * 200) for _ in range(500)])
    size = path.stat().st_size
    assert size > 100_000
    with path.open("r+b") as f:
        f.truncate(size // 2)
    await _assert_open_fails(path, "malformed", "corrupt", "backup")


async def test_a_schema_from_a_newer_version_raises_store_error(tmp_path: Path) -> None:
    """A store written with a newer schema version is refused, saying to upgrade."""
    path = tmp_path / "newer.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path):
            pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    await _assert_open_fails(path, "newer", "schema version 99", "upgrade")


async def test_an_unknown_schema_version_raises_store_error(tmp_path: Path) -> None:
    """A schema version that is not a number is refused as unknown."""
    path = tmp_path / "unknown.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path):
            pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = 'x1' WHERE key = 'schema_version'")
    conn.close()
    await _assert_open_fails(path, "unknown schema version 'x1'")


async def test_a_meta_table_without_an_epoch_raises_store_error(tmp_path: Path) -> None:
    """A store whose meta table lost its epoch is refused as damaged."""
    path = tmp_path / "noepoch.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path):
            pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'epoch'")
    conn.close()
    await _assert_open_fails(path, "damaged", "backup")


async def test_a_stale_high_water_mark_is_repaired_on_open(tmp_path: Path) -> None:
    """If meta.last_seq lags the stored events, opening raises it so seqs are not reused."""
    path = tmp_path / "stale.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            await store.append([Event(topic="t") for _ in range(3)])
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("UPDATE meta SET value = 0 WHERE key = 'last_seq'")
        conn.close()
        async with SQLiteStore(path) as store:
            assert await store.last_seq() == 3
            [event] = await store.append([Event(topic="t")])
            assert event.seq == 4


async def test_another_applications_database_raises_store_error(tmp_path: Path) -> None:
    """A SQLite file with other tables is not taken over as a store."""
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    await _assert_open_fails(path, "not a trio_realtime event store", "customers")


async def test_a_missing_directory_raises_store_error_and_open_can_be_retried(
    tmp_path: Path,
) -> None:
    """A path in a missing directory fails to open; once it exists, the same store opens."""
    path = tmp_path / "missing" / "events.db"
    store = SQLiteStore(path)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="directory exists") as info:
            await store.open()
        assert str(path) in str(info.value)
        assert isinstance(info.value.__cause__, OSError)  # creating the lock file failed
        path.parent.mkdir()
        async with store:
            [event] = await store.append([Event(topic="a")])
            assert event.seq == 1


# ---------------------------------------------------------------------------------------------
# Retention


async def test_retention_by_count_keeps_the_newest_and_never_reuses_seqs(tmp_path: Path) -> None:
    """max_events removes the oldest events; seqs continue, also after reopening."""
    path = tmp_path / "count.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path, max_events=10) as store:
            await store.append([Event(topic="t", data=i) for i in range(25)])
            await store.apply_retention()  # the worker may have started on its own already
            assert await store.apply_retention() == 0
            assert (await store.first_seq(), await store.last_seq()) == (16, 25)
            assert [e.data for e in await store.read("t")] == list(range(15, 25))
            stats = store.statistics()
            assert (stats.events_stored, stats.first_seq, stats.events_removed) == (10, 16, 15)
            [event] = await store.append([Event(topic="t", data=25)])
            assert event.seq == 26
        async with SQLiteStore(path) as store:
            assert (await store.first_seq(), await store.last_seq()) == (16, 26)


async def test_retention_by_count_runs_in_the_background(tmp_path: Path) -> None:
    """A store RETENTION_CHUNK events over max_events trims itself right after the append."""
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "bg.db", max_events=10) as store:
            await store.append([Event(topic="t") for _ in range(RETENTION_CHUNK + 10)])
            # The worker trims between batches, before it answers the next request.
            assert await store.first_seq() == RETENTION_CHUNK + 1
            assert store.statistics().events_removed == RETENTION_CHUNK


async def test_retention_by_age_removes_old_events_from_the_oldest_end(tmp_path: Path) -> None:
    """max_age removes events older than the limit, stopping at the first young one."""
    now = datetime.now(UTC)
    hours = [-5, -4, 0, -3, 0]  # the old event after a young one stays: no holes in seqs
    events = [Event(topic="t", data=h, time=now + timedelta(hours=h)) for h in hours]
    path = tmp_path / "age.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path, max_age=timedelta(hours=1)) as store:
            await store.append(events)
            await store.apply_retention()
            assert store.statistics().events_removed == 2
            assert [e.data for e in await store.read("t")] == [0, -3, 0]
            assert await store.first_seq() == 3


async def test_retention_by_age_may_empty_the_store_without_losing_its_seqs(
    tmp_path: Path,
) -> None:
    """When every event is too old the store is empty, but last_seq is kept, also on disk."""
    old = datetime.now(UTC) - timedelta(days=2)
    path = tmp_path / "age.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path, max_age=3600.0) as store:
            await store.append([Event(topic="t", time=old) for _ in range(7)])
            await store.apply_retention()
            assert store.statistics().events_removed == 7
            assert await store.read(">") == []
            assert (await store.first_seq(), await store.last_seq()) == (8, 7)
            assert store.statistics().events_stored == 0
        async with SQLiteStore(path) as store:
            assert (await store.first_seq(), await store.last_seq()) == (8, 7)
            [event] = await store.append([Event(topic="t")])
            assert event.seq == 8


async def test_retention_removes_in_chunks(tmp_path: Path) -> None:
    """apply_retention removes more than RETENTION_CHUNK events, chunk by chunk."""
    old = datetime.now(UTC) - timedelta(days=1)
    count = RETENTION_CHUNK * 2 + 3
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "chunks.db", max_age=60) as store:
            await store.append([Event(topic="t", time=old) for _ in range(count)])
            await store.append([Event(topic="t")])
            await store.apply_retention()
            assert store.statistics().events_removed == count
            assert await store.first_seq() == count + 1


async def test_a_store_without_limits_retains_everything(tmp_path: Path) -> None:
    """apply_retention on a store without limits removes nothing."""
    old = datetime(2000, 1, 1, tzinfo=UTC)
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "all.db") as store:
            await store.append([Event(topic="t", time=old)])
            assert await store.apply_retention() == 0
            assert len(await store.read("t")) == 1


# ---------------------------------------------------------------------------------------------
# Group commit, reads, cancellation, closing


async def test_concurrent_appends_are_committed_together(tmp_path: Path) -> None:
    """Appends queued while the worker is busy share one transaction."""
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "group.db") as store:

            async def append_one(i: int) -> None:
                await store.append([Event(topic="g", data=i)])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.append, [Event(topic="big") for _ in range(20_000)])
                await trio.testing.wait_all_tasks_blocked()
                await _wait_until_claimed(store)
                for i in range(50):
                    nursery.start_soon(append_one, i)
            stats = store.statistics()
            assert stats.appends == 51
            assert stats.transactions < 51
            assert stats.largest_transaction == 20_000


async def test_a_duplicate_id_fails_only_its_own_append(tmp_path: Path) -> None:
    """In a group commit, an append with an id already stored fails alone."""
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "dup.db") as store:
            [taken] = await store.append([Event(topic="d")])
            results: dict[int, object] = {}

            async def append_one(i: int, event: Event) -> None:
                try:
                    results[i] = (await store.append([event]))[0].seq
                except ValueError as exc:
                    results[i] = exc

            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.append, [Event(topic="big") for _ in range(20_000)])
                await trio.testing.wait_all_tasks_blocked()
                await _wait_until_claimed(store)
                for i in range(10):
                    event = Event(topic="d", id=taken.id) if i == 4 else Event(topic="d")
                    nursery.start_soon(append_one, i, event)
            assert isinstance(results.pop(4), ValueError)
            assert sorted(results.values()) == list(range(20_002, 20_011))  # type: ignore[type-var]
            assert len(await store.read("d")) == 10


async def test_a_cancelled_append_taken_by_the_worker_completes(tmp_path: Path) -> None:
    """Cancelling an append the worker is writing lets it finish and return its seqs."""
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "cancel.db") as store:
            events = [Event(topic="big", data=i) for i in range(20_000)]
            returned: list[Event] = []

            async def append_then_checkpoint(scope: trio.CancelScope) -> None:
                with scope:
                    returned.extend(await store.append(events))
                    await trio.lowlevel.checkpoint()

            scope = trio.CancelScope()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(append_then_checkpoint, scope)
                await trio.testing.wait_all_tasks_blocked()
                await _wait_until_claimed(store)
                scope.cancel()
            assert scope.cancelled_caught
            assert [e.seq for e in returned] == list(range(1, 20_001))
            assert await store.last_seq() == 20_000
            [after] = await store.append([Event(topic="after")])
            assert after.seq == 20_001


async def test_appends_cancelled_while_queued_store_nothing(tmp_path: Path) -> None:
    """Appends cancelled while the worker is busy raise Cancelled and store nothing."""
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "queued.db") as store:
            outcomes: dict[str, int | None] = {}

            async def append_one(event: Event) -> None:
                outcomes[event.id] = None
                outcomes[event.id] = (await store.append([event]))[0].seq

            events = [Event(topic="q", data=i) for i in range(30)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.append, [Event(topic="big") for _ in range(20_000)])
                await trio.testing.wait_all_tasks_blocked()
                await _wait_until_claimed(store)
                with trio.CancelScope() as scope:
                    async with trio.open_nursery() as inner:
                        for event in events:
                            inner.start_soon(append_one, event)
                        await trio.testing.wait_all_tasks_blocked()
                        scope.cancel()
            stored = {e.id: e.seq for e in await store.read("q")}
            assert stored == {k: v for k, v in outcomes.items() if v is not None}
            assert store.statistics().pending_appends == 0
            [after] = await store.append([Event(topic="after")])
            assert after.seq == await store.last_seq()


async def test_pattern_reads_pause_for_appends_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long pattern read lets appends go first, then resumes where it stopped."""
    monkeypatch.setattr(_sqlite_db, "READ_WINDOW", 8)
    monkeypatch.setattr(_sqlite, "READ_SLICE", 0.0)
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "pause.db") as store:
            stored = await store.append(
                [Event(topic="a.b" if i % 7 == 0 else "x.y", data=i) for i in range(500)]
            )
            expected = [e for e in stored if e.topic == "a.b"]
            reads: list[list[Event]] = []

            async def read() -> None:
                reads.append(await store.read("a.*", limit=1000))

            async def append() -> None:
                for _ in range(10):
                    await store.append([Event(topic="a.b", data="late")])

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(read)
                    nursery.start_soon(append)
            for got in reads:
                assert got[: len(expected)] == expected
                assert all(e.data == "late" for e in got[len(expected) :])
            assert await store.read("a.*", limit=1000, after=stored[-1].seq) == [
                e for e in await store.read("a.b", limit=1000) if e.data == "late"
            ]


async def test_the_worker_queues_a_paused_read_again_behind_waiting_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pattern read that finds jobs waiting pauses, goes to the back of the queue, resumes."""
    monkeypatch.setattr(_sqlite_db, "READ_WINDOW", 4)
    monkeypatch.setattr(_sqlite, "READ_SLICE", 0.0)
    gate = threading.Event()
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "requeue.db") as store:
            stored = await store.append([Event(topic=f"q.{i % 2}", data=i) for i in range(40)])
            reads: list[list[Event]] = []

            def queue_a_job() -> None:  # runs on the worker, just before the read
                job = _sqlite._Job(_sqlite._CALL, None)
                job.cancelled = True  # the worker skips it, and it wakes nobody
                store._queue.put(job)

            async def read() -> None:
                reads.append(await store.read("q.*", limit=100))

            async with trio.open_nursery() as nursery:
                # Hold the worker, so that the next two jobs are taken together, in order.
                nursery.start_soon(store._call, lambda: gate.wait(TIMEOUT))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(store._call, queue_a_job)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            assert reads == [stored]
            assert store.statistics().reads == 1


def test_a_paused_pattern_read_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database.read, told to pause after every window, finishes over several calls."""
    monkeypatch.setattr(_sqlite_db, "READ_WINDOW", 10)
    db = _sqlite_db.Database(str(tmp_path / "resume.db"), synchronous="normal")
    db.open()
    try:
        rows = encode_events([Event(topic=f"r.{i % 3}", data=i) for i in range(100)])
        [seqs] = db.insert([rows])
        assert seqs == range(1, 101)
        for pattern, limit, expected in [
            ("r.*", 1000, 100),
            ("r.>", 1000, 100),
            ("r.1", 1000, 33),
            ("*.2", 20, 20),
        ]:
            state = _sqlite_db.ReadState(plan_pattern(pattern), 0, None, limit, True)
            calls = 1
            while not db.read(state, lambda: True):
                calls += 1
            assert [e.data for e in state.found] == [
                i for i in range(100) if topic_matches(pattern, f"r.{i % 3}")
            ][:expected]
            if pattern != "r.1":  # an exact topic is read in one go, through the index
                assert calls > 1
    finally:
        db.close()
        db.close()  # idempotent


def test_a_paused_read_with_max_bytes_keeps_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database.read, pausing after every window, counts max_bytes across its turns."""
    monkeypatch.setattr(_sqlite_db, "READ_WINDOW", 10)
    db = _sqlite_db.Database(str(tmp_path / "budget.db"), synchronous="normal")
    db.open()
    try:
        events = [Event(topic=f"r.{i % 3}", data="x" * (i % 17)) for i in range(100)]
        assert db.insert([encode_events(events)]) == [range(1, 101)]
        stored = [e.data for e in events]
        for pattern in ("r.*", "r.>", "r.1"):
            matching = [i for i in range(100) if topic_matches(pattern, f"r.{i % 3}")]
            sizes = [approximate_size(events[i]) for i in matching]
            for max_bytes in (1, sizes[0], sum(sizes[:20]), sum(sizes[:20]) + 1, 10**9):
                state = _sqlite_db.ReadState(
                    plan_pattern(pattern), 0, None, 1000, True, max_bytes=max_bytes
                )
                while not db.read(state, lambda: True):
                    pass
                count = max(
                    1, sum(1 for k in range(len(sizes)) if sum(sizes[: k + 1]) <= max_bytes)
                )
                assert [e.data for e in state.found] == [stored[i] for i in matching[:count]]
                assert state.size == sum(sizes[:count])
    finally:
        db.close()


async def test_since_reads_use_the_time_index_and_respect_after(tmp_path: Path) -> None:
    """since finds events by time even when times do not follow seqs."""
    base = datetime(2031, 5, 1, tzinfo=UTC)
    offsets = [50, 10, 40, 20, 30, 0]
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "since.db") as store:
            stored = await store.append(
                [Event(topic="s.t", time=base + timedelta(seconds=o)) for o in offsets]
            )
            since = base + timedelta(seconds=25)
            want = [e for e in stored if e.time >= since]
            for pattern in ("s.t", "s.>", "s.*", ">"):
                assert await store.read(pattern, since=since) == want
                assert await store.read(pattern, since=since, after=2) == want[1:]
            assert await store.read(">", since=base + timedelta(days=1)) == []


async def test_closing_stops_the_worker_thread(tmp_path: Path) -> None:
    """The worker thread runs only while the store is open."""
    assert _store_threads() == []
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(tmp_path / "t.db") as store:
            assert len(_store_threads()) == 1
            await store.append([Event(topic="a")])
    assert _store_threads() == []


async def test_a_cancelled_close_still_closes_and_fails_queued_appends(tmp_path: Path) -> None:
    """aclose() in a cancelled scope closes; appends not yet taken fail as closed."""
    path = tmp_path / "close.db"
    with trio.fail_after(TIMEOUT):
        store = SQLiteStore(path)
        await store.open()
        outcomes: list[object] = []

        async def append_one(i: int) -> None:
            try:
                outcomes.append((await store.append([Event(topic="c", data=i)]))[0].seq)
            except trio.ClosedResourceError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.append, [Event(topic="big") for _ in range(20_000)])
            await trio.testing.wait_all_tasks_blocked()
            await _wait_until_claimed(store)
            for i in range(20):
                nursery.start_soon(append_one, i)
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await store.aclose()
            assert scope.cancelled_caught
        assert _store_threads() == []
        assert len(outcomes) == 20
        stored = [seq for seq in outcomes if isinstance(seq, int)]
        async with SQLiteStore(path) as reopened:
            assert await reopened.last_seq() == 20_000 + len(stored)


async def test_open_while_open_and_after_close(tmp_path: Path) -> None:
    """open() twice raises RuntimeError; after aclose() it raises ClosedResourceError."""
    with trio.fail_after(TIMEOUT):
        store = SQLiteStore(tmp_path / "o.db")
        async with store:
            with pytest.raises(RuntimeError, match="already open"):
                await store.open()
            assert "open" in repr(store)
        with pytest.raises(trio.ClosedResourceError):
            await store.open()
        assert store.epoch  # still known after closing


async def test_a_second_store_on_one_file_in_this_process_is_refused(tmp_path: Path) -> None:
    """While one store has a file open, opening another on it fails, naming the holder."""
    path = tmp_path / "shared.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as one:
            [event] = await one.append([Event(topic="a")])
            relative = await trio.to_thread.run_sync(os.path.relpath, path)
            for spelling in (path, tmp_path / "." / "shared.db", relative):
                two = SQLiteStore(spelling)
                with pytest.raises(StoreError) as info:
                    await two.open()
                message = str(info.value)
                assert "\n" not in message
                assert str(spelling) in message
                assert f"in use by another store in this process (pid {os.getpid()})" in message
                assert len(_store_threads()) == 1  # the first store's worker only
            assert await one.read("a") == [event]  # the first store is unharmed
        async with two:  # once the first is closed, the refused store may open
            assert await two.read("a") == [event]


async def test_a_database_in_memory_takes_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLiteStore(":memory:") has no file to lock, and leaves no lock file behind."""
    monkeypatch.chdir(tmp_path)
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(":memory:") as one, SQLiteStore(":memory:") as two:
            assert one.epoch != two.epoch
            [event] = await one.append([Event(topic="a")])
            assert await one.read("a") == [event]
    assert list(await trio.Path(tmp_path).iterdir()) == []


async def test_a_symlink_to_the_file_is_the_same_store(tmp_path: Path) -> None:
    """The lock goes with the real file, so a symbolic link to an open store is refused too."""
    path = tmp_path / "real.db"
    link = tmp_path / "link.db"
    link.symlink_to(path)
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path):
            with pytest.raises(StoreError, match="in use"):
                await SQLiteStore(link).open()


async def test_the_lock_file_names_the_holder_and_is_emptied_on_close(tmp_path: Path) -> None:
    """<path>-lock holds the pid and host of the open store; closing empties it."""
    path = tmp_path / "events.db"
    lock_file = tmp_path / "events.db-lock"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path):
            assert lock_file.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        assert lock_file.read_text() == ""
        async with SQLiteStore(path):  # an empty or stale lock file means nothing
            pass


_OPEN_IN_A_CHILD = textwrap.dedent(
    """
    import sys, trio
    from trio_realtime import StoreError
    from trio_realtime.store import SQLiteStore

    async def main(path, hold):
        try:
            async with SQLiteStore(path) as store:
                print("open", store.epoch, flush=True)
                if hold:
                    await trio.sleep_forever()
        except StoreError as exc:
            print(exc, flush=True)
            sys.exit(3)

    trio.run(main, sys.argv[1], sys.argv[2] == "hold")
    """
)


async def test_a_store_open_in_this_process_is_refused_to_another_process(
    tmp_path: Path,
) -> None:
    """Another process cannot open a file this process has open, and is told our pid."""
    path = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            result = await trio.run_process(
                [sys.executable, "-c", _OPEN_IN_A_CHILD, str(path), "once"],
                capture_stdout=True,
                check=False,
            )
            assert result.returncode == 3
            [line] = result.stdout.decode().splitlines()
            assert line == (
                f"event store {str(path)!r} is in use by another broker (pid {os.getpid()}): "
                f"stop it, or use another store path"
            )
        result = await trio.run_process(
            [sys.executable, "-c", _OPEN_IN_A_CHILD, str(path), "once"], capture_stdout=True
        )
        assert result.stdout.decode().split() == ["open", store.epoch]


async def test_the_lock_of_a_killed_process_is_released(tmp_path: Path) -> None:
    """A store open in another process is refused here until that process is killed."""
    path = tmp_path / "events.db"
    with trio.fail_after(TIMEOUT):
        child = await trio.lowlevel.open_process(
            [sys.executable, "-c", _OPEN_IN_A_CHILD, str(path), "hold"], stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            said = b""
            while b"\n" not in said:
                chunk = await child.stdout.receive_some()
                assert chunk, "the child exited without opening the store"
                said += chunk
            assert said.startswith(b"open ")
            with pytest.raises(StoreError) as info:
                await SQLiteStore(path).open()
            assert f"in use by another broker (pid {child.pid})" in str(info.value)
        finally:
            child.kill()  # SIGKILL: the child cannot release anything itself
            with trio.CancelScope(shield=True):
                await child.wait()
        async with SQLiteStore(path) as store:
            assert store.epoch == said.split()[1].decode()


# ---------------------------------------------------------------------------------------------
# Integrity


async def _make_damaged_store(path: Path, *, page: int) -> None:
    """A closed store of 5000 events, with garbage written over 3 pages from *page* on."""
    async with SQLiteStore(path) as store:
        for i in range(5):
            await store.append(
                [
                    Event(topic=f"t.{j % 7}", data={"n": i * 1000 + j, "pad": "x" * 200})
                    for j in range(1000)
                ]
            )
    _write_garbage(path, page=page, count=3)


def _write_garbage(path: Path, *, page: int, count: int) -> None:
    """Overwrite *count* pages of *path* from *page* on (counted from the end if negative)."""
    pages = path.stat().st_size // 4096
    assert pages > 400
    with path.open("r+b") as f:
        f.seek((page if page >= 0 else pages + page) * 4096)
        f.write(b"\xde\xad\xbe\xef" * 1024 * count)


@pytest.mark.parametrize("page", [2, 200, -10], ids=["near-the-start", "middle", "near-the-end"])
async def test_a_file_damaged_inside_is_refused_at_open(tmp_path: Path, page: int) -> None:
    """A store file with garbage over some pages is refused at open, saying how to recover."""
    path = tmp_path / "damaged.db"
    with trio.fail_after(TIMEOUT):
        await _make_damaged_store(path, page=page)
        error = await _assert_open_fails(path, "corrupt", "backup", "recover")
    assert str(error).endswith(f": trio-realtime recover {path}")


async def test_a_damaged_file_opens_unchecked_when_the_check_is_off(tmp_path: Path) -> None:
    """integrity_check_timeout=0 skips the check: the damage shows only when reading."""
    path = tmp_path / "damaged.db"
    with trio.fail_after(TIMEOUT):
        await _make_damaged_store(path, page=200)
        async with SQLiteStore(path, integrity_check_timeout=0) as store:
            with pytest.raises(StoreError, match="malformed"):
                await store.read(">", limit=10_000)


async def test_an_integrity_check_that_takes_too_long_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past integrity_check_timeout, the check is given up with a warning and the store opens."""
    path = tmp_path / "slow.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            stored = await store.append([Event(topic="t", data="x" * 200) for _ in range(3000)])
        with caplog.at_level(logging.WARNING, logger="trio_realtime.store"):
            async with SQLiteStore(path, integrity_check_timeout=1e-9) as store:
                assert await store.read("t", limit=5000) == stored
    [record] = caplog.records
    assert record.name == "trio_realtime.store"
    message = record.getMessage()
    assert str(path) in message
    assert "integrity check was skipped" in message
    assert "integrity_check_timeout" in message


@pytest.mark.parametrize(
    ("page", "all_found"),
    [(2, True), (200, False), (-10, False)],
    ids=["near-the-start", "middle", "near-the-end"],
)
async def test_the_recovery_command_in_the_message_recovers_the_store(
    tmp_path: Path, page: int, all_found: bool
) -> None:
    """The command the integrity error gives makes a file that opens as a store with every
    readable event under its seq and the same high-water seq: only the events on the damaged
    pages are lost (none, when the damage hit the table's interior pages: the rows are found
    on its leaf pages), and the epoch is new if any were. The damaged file is left alone."""
    path = tmp_path / "damaged.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            epoch = store.epoch
        await _make_damaged_store(path, page=page)
        damaged = path.read_bytes()
        error = await _assert_open_fails(path, "recover")
        command = str(error).rpartition(": ")[2]
        assert command == f"trio-realtime recover {path}"
        result = await trio.run_process(
            [sys.executable, "-m", "trio_realtime", *command.split()[1:]],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode()
        assert f"into {path}.recovered (last seq 5000)" in out
        assert ("new epoch" in out) is not all_found
        assert path.read_bytes() == damaged
        async with SQLiteStore(f"{path}.recovered") as recovered:
            assert (recovered.epoch == epoch) is all_found
            events = await recovered.read(">", limit=10_000)
            if all_found:
                assert len(events) == 5000
            else:
                assert 4800 < len(events) < 5000  # three pages of events are lost
            assert f"{5000 - len(events)} seqs could not be read" in out
            assert all(e.data["n"] == (e.seq or 0) - 1 for e in events)  # each under its seq
            assert await recovered.last_seq() == 5000


async def test_recover_keeps_the_epoch_of_an_undamaged_file_and_refuses_to_overwrite(
    tmp_path: Path,
) -> None:
    """Recovering a sound file copies every event and keeps its epoch; an existing output
    file, or a store in use, is refused."""
    path = tmp_path / "sound.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as store:
            stored = await store.append([Event(topic="t", data=i) for i in range(50)])
            with pytest.raises(StoreError, match="in use"):
                await trio.to_thread.run_sync(recover, path)
            epoch = store.epoch
        report = await trio.to_thread.run_sync(recover, path)
        assert (report.recovered, report.unreadable, report.last_seq) == (50, 0, 50)
        assert report.kept_epoch
        assert report.epoch == epoch
        async with SQLiteStore(report.output) as copy:
            assert copy.epoch == epoch
            assert await copy.read(">", limit=100) == stored
        with pytest.raises(StoreError, match="exists already"):
            await trio.to_thread.run_sync(recover, path)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.integers(0, 4))
def test_reading_rows_from_damaged_pages_never_fails(garbage: bytes, page_type: int) -> None:
    """The page reader of recover() takes any bytes: garbage gives no rows, never an error."""
    page_size = 512
    page = bytes([(0x0D, 0x05, 0x0A, 0x02, 0x00)[page_type]]) + garbage
    page = page[:page_size].ljust(page_size, b"\x00")
    data = b"SQLite format 3\x00" + bytes(84) + bytes(page_size - 100) + page
    for rowid, payload in _recover._cells(data, page, page_size, page_size):
        assert isinstance(rowid, int)
        _recover._record(payload)
