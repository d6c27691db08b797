"""Properties of the stores over random topics, patterns and events (Hypothesis)."""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import aware_datetimes, events, patterns, small_patterns, small_topics, topics

from trio_realtime import Event, topic_matches
from trio_realtime.protocol import encode_event, encoded_size
from trio_realtime.store import MemoryStore, SQLiteStore, approximate_size
from trio_realtime.store._codec import (
    decode_row,
    encode_events,
    from_micros,
    plan_pattern,
    row_size,
    to_micros,
    with_seqs,
)

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT = 10
_counter = itertools.count()

store_settings = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the SQLite files of every example."""
    return tmp_path_factory.mktemp("property-stores")


@store_settings
@given(
    topic_list=st.lists(small_topics(), max_size=30),
    pattern_list=st.lists(small_patterns(), min_size=1, max_size=6),
    after=st.none() | st.integers(min_value=0, max_value=32),
    limit=st.integers(min_value=0, max_value=40),
)
async def test_read_by_pattern_equals_a_brute_force_filter(
    store_dir: Path,
    topic_list: list[str],
    pattern_list: list[str],
    after: int | None,
    limit: int,
) -> None:
    """read(pattern) of both stores returns what filtering with topic_matches returns."""
    path = store_dir / f"match{next(_counter)}.db"
    with trio.fail_after(TIMEOUT):
        async with MemoryStore() as memory, SQLiteStore(path) as sqlite:
            batch = [Event(topic=topic, data=i) for i, topic in enumerate(topic_list)]
            stored = await memory.append(batch)
            assert await sqlite.append(batch) == stored
            for pattern in pattern_list:
                expected = [
                    e
                    for e in stored
                    if topic_matches(pattern, e.topic) and (after is None or (e.seq or 0) > after)
                ][:limit]
                assert await memory.read(pattern, after=after, limit=limit) == expected
                assert await sqlite.read(pattern, after=after, limit=limit) == expected


@store_settings
@given(batch=st.lists(events(), max_size=8, unique_by=lambda e: e.id))
async def test_any_event_round_trips_through_both_stores(
    store_dir: Path, batch: list[Event]
) -> None:
    """Whatever valid event is appended is read back equal, with its seq, from both stores."""
    path = store_dir / f"roundtrip{next(_counter)}.db"
    with trio.fail_after(TIMEOUT):
        async with MemoryStore() as memory, SQLiteStore(path) as sqlite:
            stored = await sqlite.append(batch)
            assert [e.seq for e in stored] == list(range(1, len(batch) + 1))
            assert await memory.append(batch) == stored
            assert await sqlite.read(">", limit=len(batch)) == stored
            assert await memory.read(">", limit=len(batch)) == stored


@store_settings
@given(
    batch=st.lists(events(), max_size=12, unique_by=lambda e: e.id),
    pattern=small_patterns() | st.just(">"),
    max_bytes=st.integers(min_value=1, max_value=3000),
    limit=st.integers(min_value=0, max_value=15),
)
async def test_reads_with_max_bytes_return_the_longest_prefix_that_fits(
    store_dir: Path, batch: list[Event], pattern: str, max_bytes: int, limit: int
) -> None:
    """read(max_bytes=) of both stores: the longest prefix within max_bytes, one at least."""
    path = store_dir / f"budget{next(_counter)}.db"
    with trio.fail_after(TIMEOUT):
        async with MemoryStore() as memory, SQLiteStore(path) as sqlite:
            stored = await memory.append(batch)
            assert await sqlite.append(batch) == stored
            expected: list[Event] = []
            total = 0
            for event in [e for e in stored if topic_matches(pattern, e.topic)][:limit]:
                total += approximate_size(event)
                if total > max_bytes and expected:
                    break
                expected.append(event)
            assert await memory.read(pattern, limit=limit, max_bytes=max_bytes) == expected
            assert await sqlite.read(pattern, limit=limit, max_bytes=max_bytes) == expected


@settings(max_examples=300, deadline=None)
@given(event=events())
def test_approximate_size_is_what_stores_count_from_their_rows(event: Event) -> None:
    """approximate_size(event) equals the size a store computes from the event's stored row."""
    [row] = encode_events([event])
    assert approximate_size(event) == row_size(row)


@settings(max_examples=300, deadline=None)
@given(pattern=patterns(), topic=topics())
def test_pattern_plans_match_as_topic_matches_does(pattern: str, topic: str) -> None:
    """A pattern plan's exact test agrees with topic_matches over the whole grammar."""
    assert plan_pattern(pattern).matches(topic) == topic_matches(pattern, topic)


_glob_db = sqlite3.connect(":memory:")


@settings(max_examples=300, deadline=None)
@given(pattern=small_patterns(), topic=small_topics())
def test_pattern_globs_let_every_match_through(pattern: str, topic: str) -> None:
    """The SQLite GLOB of a plan matches every topic the pattern does (exactly, without '*')."""
    plan = plan_pattern(pattern)
    if plan.glob is None:
        return
    ((globbed,),) = _glob_db.execute("SELECT ? GLOB ?", (topic, plan.glob)).fetchall()
    if topic_matches(pattern, topic):
        assert globbed
    if plan.glob_is_exact:
        assert bool(globbed) == topic_matches(pattern, topic)


@settings(max_examples=300, deadline=None)
@given(
    when=aware_datetimes()
    | st.datetimes(
        min_value=datetime(2105, 1, 1), max_value=datetime(2107, 1, 1), timezones=st.just(UTC)
    )
)
def test_times_survive_the_microsecond_encoding_exactly(when: datetime) -> None:
    """A time stored as integer microseconds comes back equal, and in UTC."""
    back = from_micros(to_micros(when))
    assert back == when
    assert back.utcoffset() == timedelta(0)


def _fresh_encoding(event: Event) -> tuple[str, int]:
    copy = attrs.evolve(event)  # (without the wire text kept on the event)
    return encode_event(copy), encoded_size(copy)


@settings(max_examples=300, deadline=None)
@given(event=events(), seq=st.integers(min_value=1, max_value=2**63 - 1))
def test_a_read_event_s_wire_text_is_its_encoding(event: Event, seq: int) -> None:
    """The wire text a store makes from a row, without encoding data again, is exactly
    what encoding the event it reads back gives."""
    [row] = encode_events([event])
    read = decode_row((seq, *row))
    if read._wire is not None:  # (a typed payload's is made from its class, when sent)
        assert read._wire == _fresh_encoding(read)


def test_a_read_event_comes_with_its_wire_text() -> None:
    """A store reads an event with plain JSON data back with its wire text already made."""
    [row] = encode_events([Event(topic="a.b", data={"n": 1, "text": "é"})])
    read = decode_row((7, *row))
    assert read._wire == _fresh_encoding(read)


@settings(max_examples=300, deadline=None)
@given(event=events(), seq=st.integers(min_value=1, max_value=2**63 - 1))
def test_a_stored_event_keeps_its_encoding_with_its_seq(event: Event, seq: int) -> None:
    """An event encoded before it was stored passes its wire text, with the seq written in,
    to its stored copy; exactly what encoding the copy afresh gives."""
    event = attrs.evolve(event, seq=None)
    encode_event(event)
    [stored] = with_seqs([event], [seq])
    assert stored.seq == seq
    if event.reply_to is None:
        assert stored._wire is not None
    if stored._wire is not None:
        assert stored._wire == _fresh_encoding(stored)
