"""SQLiteStore beyond the shared contract: files, reopening, retention, errors, cancellation."""

from __future__ import annotations

import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from trio_realtime import Event, StoreError, topic_matches
from trio_realtime.store import RETENTION_CHUNK, SQLiteStore, _sqlite, _sqlite_db
from trio_realtime.store._codec import encode_events, plan_pattern

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


# ---------------------------------------------------------------------------------------------
# Unusable files


async def _assert_open_fails(path: Path, *words: str) -> StoreError:
    store = SQLiteStore(path)
    with trio.fail_after(TIMEOUT), pytest.raises(StoreError) as info:
        await store.open()
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert _store_threads() == []  # no worker left behind
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
        assert isinstance(info.value.__cause__, sqlite3.Error)
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


async def test_two_stores_on_one_file_share_the_seqs(tmp_path: Path) -> None:
    """Two stores (two connections) on the same file never hand out the same seq."""
    path = tmp_path / "shared.db"
    with trio.fail_after(TIMEOUT):
        async with SQLiteStore(path) as one, SQLiteStore(path) as two:
            assert one.epoch == two.epoch
            seqs: list[int] = []

            async def append_some(store: SQLiteStore, name: str) -> None:
                for i in range(20):
                    [event] = await store.append([Event(topic=name, data=i)])
                    seqs.append(event.seq or 0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(append_some, one, "one")
                nursery.start_soon(append_some, two, "two")
            assert sorted(seqs) == list(range(1, 41))
            assert len(await one.read(">")) == 40
            assert await two.last_seq() == 40
