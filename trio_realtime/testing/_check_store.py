"""The behavioural contract of :class:`~trio_realtime.store.Store`, as a reusable check.

Run :func:`check_store` against every store implementation, as Trio's ``check_two_way_stream``
is run against every stream::

    async def test_my_store_keeps_the_contract(tmp_path):
        paths = (tmp_path / f"store{i}.db" for i in itertools.count())
        await check_store(lambda: SQLiteStore(next(paths)))

It needs no pytest, so that it can be used from any test runner: a failure raises
:exc:`AssertionError` naming the behaviour that broke.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import attrs
import trio
import trio.testing

from .._errors import InvalidTopic
from .._event import Event
from .._payloads import event_type
from .._topics import topic_matches
from ..store import Store, StoreStatistics, approximate_size

__all__ = ["check_store"]

#: Seconds any one part of the check may take before it fails as hung.
CHECK_TIMEOUT: Final = 20

_POINT_TYPE: Final = "trio_realtime_testing.point"


@attrs.frozen
class _Point:
    """The typed payload the check round-trips (registered when the check runs)."""

    x: int
    y: int
    label: str = ""


@contextmanager
def _raises(expected: type[BaseException], what: str) -> Generator[None, None, None]:
    __tracebackhide__ = True
    try:
        yield
    except expected:
        pass
    else:
        raise AssertionError(f"{what}: expected {expected.__name__} to be raised")


def _check(condition: bool, message: str) -> None:
    __tracebackhide__ = True
    if not condition:
        raise AssertionError(message)


def _seqs(events: Sequence[Event]) -> list[int | None]:
    return [event.seq for event in events]


async def _last_seq_is(store: Store, expected: int, when: str) -> None:
    last = await store.last_seq()
    _check(last == expected, f"{when}: last_seq() is {last}, expected {expected}")


async def check_store(make_store: Callable[[], Store]) -> None:
    """Check that a :class:`~trio_realtime.store.Store` implementation keeps the contract.

    Checks: opening and closing (``async with`` and :meth:`~Store.open`, an idempotent
    :meth:`~Store.aclose` that survives cancellation and stores what was queued,
    :exc:`trio.ClosedResourceError` afterwards, errors before opening); the epoch; appends (seqs
    from 1, strictly increasing, consecutive within a batch, returned copies with the same ids,
    all-or-nothing batches, bad input rejected without using up seqs, duplicate ids); reads by
    exact topic, ``*`` and ``>`` patterns, with ``after``, ``since`` and ``limit``, in seq
    order; reads bounded by ``max_bytes`` (the longest prefix that fits, by
    :func:`~trio_realtime.store.approximate_size`, and at least one event); the JSON round
    trip, typed payloads included; ``last_seq``/``first_seq``; statistics; concurrent appends
    from many tasks (distinct seqs, in the order the appends were made); and cancellation (a
    cancelled append stored nothing, a returned one stored everything, the store stays
    usable); cursors (:meth:`~Store.save_cursor` and :meth:`~Store.load_cursor`: what was
    saved last under a name, for a store that :attr:`~Store.keeps_cursors`; always None for
    one that does not).

    Args:
        make_store: Called with no arguments, returns a new, *unopened* store over fresh,
            empty storage (for a file-backed store: a new path each call). It is called
            several times; the check opens and closes every store it gets.

    Raises:
        AssertionError: naming the first behaviour that breaks the contract.
    """
    event_type(_POINT_TYPE)(_Point)
    for check in (
        _check_lifecycle,
        _check_close_flushes_and_survives_cancellation,
        _check_empty_store,
        _check_append,
        _check_round_trip,
        _check_patterns,
        _check_after_since_limit,
        _check_max_bytes,
        _check_bad_appends,
        _check_concurrent_appends,
        _check_cancellation,
        _check_cursors,
    ):
        with trio.fail_after(CHECK_TIMEOUT):
            await check(make_store)


async def _check_lifecycle(make_store: Callable[[], Store]) -> None:
    store = make_store()
    with _raises(RuntimeError, "epoch before open()"):
        _ = store.epoch
    with _raises(RuntimeError, "append() before open()"):
        await store.append([Event(topic="a")])
    async with store as entered:
        _check(entered is store, "'async with store as s' must give the store itself")
        epoch: object = store.epoch
        _check(isinstance(epoch, str) and bool(epoch), f"epoch must be a non-empty str: {epoch!r}")
        with _raises(RuntimeError, "open() of an open store"):
            await store.open()
        await store.append([Event(topic="a")])
        await store.read(">")
        _check(store.epoch == epoch, "the epoch changed while the store was open")
    for _ in range(2):
        await store.aclose()  # idempotent
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("append", lambda: store.append([Event(topic="a")])),
        ("read", lambda: store.read(">")),
        ("last_seq", store.last_seq),
        ("first_seq", store.first_seq),
        ("apply_retention", store.apply_retention),
        ("open", store.open),
    ]
    for name, call in calls:
        with _raises(trio.ClosedResourceError, f"{name}() after aclose()"):
            await call()

    other = make_store()
    await other.open()  # the explicit form of 'async with'
    try:
        _check(other.epoch != epoch, "two stores created afresh must have different epochs")
        [stored] = await other.append([Event(topic="a")])
        _check(stored.seq == 1, f"a new store's first seq must be 1, got {stored.seq}")
    finally:
        await other.aclose()

    never_opened = make_store()
    await never_opened.aclose()
    with _raises(trio.ClosedResourceError, "append() after aclose() of a never-opened store"):
        await never_opened.append([Event(topic="a")])


async def _check_close_flushes_and_survives_cancellation(make_store: Callable[[], Store]) -> None:
    store = make_store()
    await store.open()
    results: list[list[Event]] = []

    async def append_one(i: int) -> None:
        results.append(await store.append([Event(topic="flush", data=i)]))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(append_one, i)
        await trio.testing.wait_all_tasks_blocked()
        await store.aclose()
    _check(
        sorted(e.seq or 0 for [e] in results) == list(range(1, 21)),
        "appends queued when aclose() was called must be stored, not failed",
    )

    store = make_store()
    await store.open()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.aclose()
    with _raises(trio.ClosedResourceError, "append() after a cancelled aclose()"):
        await store.append([Event(topic="a")])
    await store.aclose()


async def _check_empty_store(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        await _last_seq_is(store, 0, "an empty store")
        first = await store.first_seq()
        _check(first == 1, f"an empty store's first_seq() must be 1, got {first}")
        _check(await store.read(">") == [], "an empty store must read nothing")
        stats = store.statistics()
        _check(isinstance(stats, StoreStatistics), "statistics() must return StoreStatistics")
        _check(
            (stats.events_stored, stats.last_seq, stats.first_seq) == (0, 0, 1),
            f"an empty store's statistics are wrong: {stats}",
        )
        with _raises(attrs.exceptions.FrozenInstanceError, "setting a statistics field"):
            stats.events_stored = 1  # type: ignore[misc]


async def _check_append(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        batch = [Event(topic="orders.created", data={"n": i}) for i in range(3)]
        stored = await store.append(batch)
        _check(_seqs(stored) == [1, 2, 3], f"seqs must start at 1: got {_seqs(stored)}")
        for original, copy in zip(batch, stored, strict=True):
            _check(original.seq is None, "append() must not change the events it was given")
            _check(
                copy == attrs.evolve(original, seq=copy.seq),
                f"append() must return the events with only seq set: {copy!r}",
            )
        more = await store.append([Event(topic="orders.paid"), Event(topic="orders.created")])
        _check(_seqs(more) == [4, 5], f"seqs must continue across appends: {_seqs(more)}")
        single = await store.append([Event(topic="orders.shipped")])
        _check(_seqs(single) == [6], f"seqs must continue: {_seqs(single)}")
        _check(await store.append([]) == [], "append([]) must return []")
        await _last_seq_is(store, 6, "after an empty append")
        first = await store.first_seq()
        _check(first == 1, f"first_seq() must be 1 when nothing was removed, got {first}")
        everything = stored + more + single
        read = await store.read(">", limit=100)
        _check(read == everything, f"read('>') must return what was appended: {read!r}")
        stats = store.statistics()
        _check(
            (stats.events_stored, stats.last_seq, stats.first_seq) == (6, 6, 1),
            f"statistics after 6 events are wrong: {stats}",
        )
        _check(
            (stats.appends, stats.events_appended) == (3, 6),
            f"statistics must count 3 appends of 6 events: {stats}",
        )
        _check(
            1 <= stats.transactions <= stats.appends
            and 1 <= stats.largest_transaction <= stats.events_appended,
            f"statistics count impossible transactions: {stats}",
        )


async def _check_round_trip(make_store: Callable[[], Store]) -> None:
    values: list[Any] = [
        None,
        True,
        False,
        0,
        -5,
        2**63 - 1,
        1.5,
        "",
        'ünïcödé ✓ \x00 "quoted"',
        [],
        [1, "a", None, 2.5],
        {},
        {"nested": {"list": [1, 2, {"x": []}]}, "b": False},
    ]
    when = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=5)))
    events = [Event(topic="values", data=value) for value in values]
    events.append(
        Event(
            topic="full.envelope",
            data={"k": "v"},
            type="custom.type",
            source="check-store",
            time=when,
            headers={"trace": "abc", "empty": ""},
            reply_to="_inbox.check.1",
        )
    )
    events.append(Event(topic="points.a", data=_Point(1, 2, "p")))
    events.append(Event(topic="points.b", data={"not": "a point"}, type=_POINT_TYPE))
    events.append(Event(topic="tuples", data=(1, (2, 3))))
    async with make_store() as store:
        stored = await store.append(events)
        read = await store.read(">", limit=len(events))
        _check(len(read) == len(events), f"expected {len(events)} events back, got {len(read)}")
        for original, copy, back in zip(events, stored, read, strict=True):
            if original.topic == "tuples":
                _check(back.data == [1, [2, 3]], f"a tuple must come back as a list: {back.data}")
                _check(
                    attrs.evolve(back, data=original.data) == copy,
                    f"an event with a tuple did not round-trip: {back!r}",
                )
                continue
            _check(back == copy, f"{original!r} came back as {back!r}")
            _check(
                type(back.data) is type(original.data),
                f"data of type {type(original.data).__name__} came back as "
                f"{type(back.data).__name__}",
            )
        envelope = read[len(values)]
        _check(envelope.time == when, f"time must round-trip exactly: {envelope.time}")
        point = read[len(values) + 1]
        _check(point.type == _POINT_TYPE, f"a typed payload's type must be kept: {point.type}")
        _check(
            isinstance(point.data, _Point) and point.data == _Point(1, 2, "p"),
            f"a typed payload must come back as an instance: {point.data!r}",
        )
        misfit = read[len(values) + 2]
        _check(
            misfit.data == {"not": "a point"},
            f"data that does not fit its registered type must stay plain: {misfit.data!r}",
        )
        for event in read:
            _check(event.time.tzinfo is not None, f"times read back must be aware: {event!r}")


_TOPICS: Final = (
    "a",
    "a.b",
    "a.b.c",
    "a.c",
    "b.b",
    "a.b.c.d",
    "a.bb.c",
    "ab.c",
    "$sys.conn.1",
    "_inbox.q.1",
    "a-1.b_2",
)
_PATTERNS: Final = (
    ">",
    "a",
    "a.>",
    "a.*",
    "*.b",
    "a.*.c",
    "*",
    "*.*",
    "*.>",
    "a.b.>",
    "a.b.*",
    "*.*.c",
    "a.*.>",
    "$sys.>",
    "_inbox.*.1",
    "x.>",
    "a.b.c.d",
    "a-1.*",
    "ab.>",
)


async def _check_patterns(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        stored = await store.append([Event(topic=topic, data=i) for i, topic in enumerate(_TOPICS)])
        stored += await store.append([Event(topic=topic) for topic in reversed(_TOPICS)])
        for pattern in _PATTERNS:
            expected = [e for e in stored if topic_matches(pattern, e.topic)]
            got = await store.read(pattern, limit=1000)
            _check(
                got == expected,
                f"read({pattern!r}) returned the topics {[e.topic for e in got]}, expected "
                f"{[e.topic for e in expected]}",
            )
        for bad in ("", "a..b", "a.>.b", "a*", "a b", ".a", "a.", ">.a", "a.**"):
            with _raises(InvalidTopic, f"read({bad!r})"):
                await store.read(bad)


async def _check_after_since_limit(make_store: Callable[[], Store]) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    offsets = list(range(20))
    offsets[7], offsets[12] = 15, 3  # time need not follow seq
    events = [
        Event(topic="t.x" if i % 2 else "t.y", data=i, time=base + timedelta(seconds=offset))
        for i, offset in enumerate(offsets)
    ]
    async with make_store() as store:
        stored = await store.append(events[:10])
        stored += await store.append(events[10:])
        for pattern in ("t.x", "t.>", "t.*", ">"):
            matching = [e for e in stored if topic_matches(pattern, e.topic)]
            for after in (None, -1, 0, 1, 7, 19, 20, 1000):
                got = await store.read(pattern, after=after)
                want = [e for e in matching if after is None or (e.seq or 0) > after]
                _check(got == want, f"read({pattern!r}, after={after}) returned {_seqs(got)}")
            for offset in (0, 3, 10, 15, 19, 25):
                since = base + timedelta(seconds=offset)
                got = await store.read(pattern, since=since)
                want = [e for e in matching if e.time >= since]
                _check(got == want, f"read({pattern!r}, since=+{offset}s) returned {_seqs(got)}")
            since = (base + timedelta(seconds=10)).astimezone(timezone(timedelta(hours=-7)))
            got = await store.read(pattern, since=since, after=4)
            want = [e for e in matching if e.time >= since and (e.seq or 0) > 4]
            _check(got == want, f"read({pattern!r}, since=, after=4) returned {_seqs(got)}")
            for limit in (0, 1, 5, 100):
                got = await store.read(pattern, limit=limit)
                _check(got == matching[:limit], f"read({pattern!r}, limit={limit}) is wrong")
            pages: list[Event] = []
            after_seq = 0
            while page := await store.read(pattern, after=after_seq, limit=3):
                _check(len(page) <= 3, f"read(limit=3) returned {len(page)} events")
                pages += page
                after_seq = page[-1].seq or 0
            _check(pages == matching, f"paging through {pattern!r} by 3 returned {_seqs(pages)}")
        with _raises(ValueError, "read(limit=-1)"):
            await store.read(">", limit=-1)


def _fitting(events: Sequence[Event], max_bytes: int) -> list[Event]:
    """The longest prefix of *events* whose sizes add up to *max_bytes*, but one at least."""
    fitting: list[Event] = []
    total = 0
    for event in events:
        total += approximate_size(event)
        if total > max_bytes and fitting:
            break
        fitting.append(event)
    return fitting


async def _check_max_bytes(make_store: Callable[[], Store]) -> None:
    lengths = [10, 0, 300, 50, 1, 2000, 5, 5, 120, 1, 700, 3]
    events = [
        Event(
            topic="m.x" if i % 3 else "m.y",
            data=("é" if i % 4 == 0 else "x") * length,  # sizes count characters
            headers={"h": "v" * i} if i % 2 else {},
            reply_to="_inbox.m.1" if i == 3 else None,
        )
        for i, length in enumerate(lengths)
    ]
    events.insert(4, Event(topic="m.x", data=_Point(1, 2, "typed")))
    events.insert(8, Event(topic="m.x", data=None))
    async with make_store() as store:
        stored = await store.append(events)
        back = await store.read(">", limit=len(events))
        _check(
            [approximate_size(e) for e in back] == [approximate_size(e) for e in stored],
            "an event read back must have the approximate_size it had when appended",
        )
        for pattern in ("m.x", "m.*", "m.>", ">"):
            matching = [e for e in stored if topic_matches(pattern, e.topic)]
            for after in (None, 3, 9):
                candidates = [e for e in matching if after is None or (e.seq or 0) > after]
                budgets = {1, 10**9}
                total = 0
                for event in candidates[:4]:
                    total += approximate_size(event)
                    budgets |= {total - 1, total, total + 1}
                for max_bytes in sorted(budgets):
                    for limit in (100, 2):
                        got = await store.read(
                            pattern, after=after, limit=limit, max_bytes=max_bytes
                        )
                        want = _fitting(candidates[:limit], max_bytes)
                        _check(
                            got == want,
                            f"read({pattern!r}, after={after}, limit={limit}, "
                            f"max_bytes={max_bytes}) returned the seqs {_seqs(got)}, expected "
                            f"{_seqs(want)} (the longest prefix that fits, at least one event)",
                        )
            pages: list[Event] = []
            after_seq = 0
            while page := await store.read(pattern, after=after_seq, max_bytes=400):
                _check(
                    page == _fitting(page, 400),
                    f"a read({pattern!r}, max_bytes=400) page is larger than that: {_seqs(page)}",
                )
                pages += page
                after_seq = page[-1].seq or 0
            _check(
                pages == matching,
                f"paging through {pattern!r} with max_bytes=400 returned {_seqs(pages)}",
            )
        since = stored[5].time
        got = await store.read("m.>", since=since, max_bytes=1)
        want = [e for e in stored if e.time >= since][:1]
        _check(got == want, f"read(since=, max_bytes=1) returned {_seqs(got)}")
        _check(
            await store.read(">", limit=0, max_bytes=1) == [],
            "read(limit=0, max_bytes=1) must return nothing: limit still applies",
        )
        _check(
            await store.read("nothing.here", max_bytes=1) == [],
            "read(max_bytes=) of a topic with no events must return nothing",
        )
        for bad in (0, -1):
            with _raises(ValueError, f"read(max_bytes={bad})"):
                await store.read(">", max_bytes=bad)


async def _check_bad_appends(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        await store.append([Event(topic="ok")])
        good = Event(topic="ok")
        bad_headers: Any = {"k": 1}
        not_a_str: Any = None
        not_a_time: Any = 0
        bad_batches: list[tuple[type[Exception], str, list[Event]]] = [
            (InvalidTopic, "a wildcard topic", [good, Event(topic="a.*")]),
            (InvalidTopic, "an empty topic", [Event(topic="")]),
            (InvalidTopic, "a bad reply_to", [Event(topic="ok", reply_to="a..b")]),
            (TypeError, "data that is not JSON", [good, Event(topic="ok", data=object())]),
            (TypeError, "a dict with int keys", [Event(topic="ok", data={1: "x"})]),
            (TypeError, "a set", [Event(topic="ok", data={1, 2})]),
            (TypeError, "non-str headers", [Event(topic="ok", headers=bad_headers)]),
            (TypeError, "an empty id", [good, Event(topic="ok", id="")]),
            (TypeError, "a non-str source", [Event(topic="ok", source=not_a_str)]),
            (TypeError, "a time that is not a datetime", [Event(topic="ok", time=not_a_time)]),
            (ValueError, "an id twice in a batch", [good, attrs.evolve(good, data=2)]),
        ]
        for error, what, batch in bad_batches:
            with _raises(error, f"append() of {what}"):
                await store.append(batch)
            await _last_seq_is(store, 1, f"after append() of {what} failed")
        [first] = await store.read("ok")
        duplicate = Event(topic="ok", id=first.id)
        with _raises(ValueError, "append() of an id that is already stored"):
            await store.append([Event(topic="ok"), duplicate])
        await _last_seq_is(store, 1, "after append() of a stored id failed")
        after = await store.append([good])
        _check(_seqs(after) == [2], f"failed appends must not use up seqs: got {_seqs(after)}")
        _check(len(await store.read(">")) == 2, "failed appends must store nothing of their batch")


async def _check_concurrent_appends(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        order: list[int] = []
        results: dict[int, list[Event]] = {}

        async def appender(task: int) -> None:
            for round_ in range(3):
                size = 3 if (task + round_) % 4 == 0 else 1
                batch = [Event(topic=f"c.t{task}", data=[task, round_, k]) for k in range(size)]
                key = task * 10 + round_
                order.append(key)  # no checkpoint between this and the append being queued
                results[key] = await store.append(batch)

        async with trio.open_nursery() as nursery:
            for task in range(40):
                nursery.start_soon(appender, task)
        seqs: list[int] = []
        for key in order:
            batch_seqs = [e.seq or 0 for e in results[key]]
            _check(
                batch_seqs == list(range(batch_seqs[0], batch_seqs[0] + len(batch_seqs))),
                f"a batch must get consecutive seqs: {batch_seqs}",
            )
            seqs += batch_seqs
        _check(
            seqs == sorted(seqs) and len(set(seqs)) == len(seqs),
            "concurrent appends must get distinct seqs in the order the appends were made",
        )
        _check(seqs == list(range(1, len(seqs) + 1)), "seqs of a new store must be 1, 2, ...")
        everything = await store.read(">", limit=len(seqs) + 1)
        by_seq = {e.seq: e for batch in results.values() for e in batch}
        _check(
            everything == [by_seq[seq] for seq in seqs],
            "read() must return exactly what the concurrent appends returned, in seq order",
        )
        await _last_seq_is(store, len(seqs), "after concurrent appends")


async def _check_cancellation(make_store: Callable[[], Store]) -> None:
    async with make_store() as store:
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.append([Event(topic="cancelled")])
        _check(scope.cancelled_caught, "append() in a cancelled scope must raise Cancelled")
        await _last_seq_is(store, 0, "after an append() that raised Cancelled")
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.read(">")
        _check(scope.cancelled_caught, "read() in a cancelled scope must raise Cancelled")

        outcomes: dict[str, int | None] = {}  # event id -> seq, or None if cancelled

        async def append_one(event: Event) -> None:
            outcomes[event.id] = None
            [stored] = await store.append([event])
            outcomes[event.id] = stored.seq

        events = [Event(topic="maybe", data=i) for i in range(50)]
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                for event in events:
                    nursery.start_soon(append_one, event)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        stored = {e.id: e.seq for e in await store.read("maybe", limit=100)}
        for event in events:
            seq = outcomes[event.id]
            if seq is None:
                _check(event.id not in stored, "an append() that raised Cancelled stored it")
            else:
                _check(stored.get(event.id) == seq, "an append() that returned did not store it")
        [after] = await store.append([Event(topic="after")])
        last = max((seq for seq in stored.values() if seq is not None), default=0)
        _check(after.seq == last + 1, f"the store must stay usable after cancellations: {after}")


async def _check_cursors(make_store: Callable[[], Store]) -> None:
    store = make_store()
    keeps = store.keeps_cursors
    _check(isinstance(keeps, bool), f"keeps_cursors must be a bool, not {keeps!r}")
    async with store:
        _check(await store.load_cursor("hook") is None, "a new store must have no cursor")
        for name, seq, expected in (
            ("", 0, ValueError),
            ("x" * 201, 0, ValueError),
            ("hook", -1, ValueError),
            (7, 0, TypeError),
            ("hook", "3", TypeError),
        ):
            with _raises(expected, f"save_cursor({name!r}, {seq!r})"):
                await store.save_cursor(name, seq)  # type: ignore[arg-type]
        [stored] = await store.append([Event(topic="a")])
        await store.save_cursor("hook", 5)
        await store.save_cursor("other hook", 0)
        await store.save_cursor("hook", 7)
        found = (await store.load_cursor("hook"), await store.load_cursor("other hook"))
        wanted = (7, 0) if keeps else (None, None)
        _check(
            found == wanted,
            f"cursors saved as hook=5, other hook=0, then hook=7 load as {found}, expected "
            f"{wanted} (keeps_cursors is {keeps})",
        )
        _check(
            await store.read(">") == [stored] and await store.last_seq() == 1,
            "saving cursors must not change the events",
        )
    if keeps:
        with _raises(trio.ClosedResourceError, "load_cursor() after aclose()"):
            await store.load_cursor("hook")
        with _raises(trio.ClosedResourceError, "save_cursor() after aclose()"):
            await store.save_cursor("hook", 1)
