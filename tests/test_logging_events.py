"""Log records as events: trio_realtime.logging's EventLogHandler on a bus and a client."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing
from conftest import TIMEOUT, RunningBroker
from hypothesis import given
from hypothesis import strategies as st

from trio_realtime import Bus, Event, EventChannel, event_type, open_bus, validate_topic
from trio_realtime.client._client import open_client
from trio_realtime.logging import (
    EventLogHandler,
    EventLogStatistics,
    log_topic,
    open_event_log_handler,
)

_names = itertools.count()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of its own for each test, passing every level, not propagating to root."""
    log = logging.getLogger(f"tests.log_events.n{next(_names)}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


class Recorder(logging.Handler):
    """Keeps every record it gets (to see what was logged, published or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@attrs.define
class GatedChannel:
    """Publishes to a bus once its gate is open (a publish path that is slow or stuck)."""

    bus: Bus
    gate: trio.Event = attrs.field(factory=trio.Event)

    async def publish(self, topic: str, data: Any = None) -> Event:
        await self.gate.wait()
        return await self.bus.publish(topic, data)


@attrs.define
class ChattyChannel:
    """A bus whose publish logs a warning on the logger the handler listens to."""

    bus: Bus
    logger: logging.Logger

    async def publish(self, topic: str, data: Any = None) -> Event:
        self.logger.warning("publishing on %s", topic)
        return await self.bus.publish(topic, data)


async def receive_all(sub: Any, n: int) -> list[Event]:
    return [await sub.receive() for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Where records come from


async def test_a_record_from_a_trio_task_arrives_as_an_event(logger: logging.Logger) -> None:
    """A record logged in a Trio task is published on log.<level>.<logger> with its data."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus, attach_to=logger) as handler,
        ):
            before = datetime.now(UTC)
            logger.info("hello %s", "world")
            event = await sub.receive()
            after = datetime.now(UTC)
    assert event.topic == f"log.info.{logger.name}"
    data = event.data
    assert data == {
        "message": "hello world",
        "level": "INFO",
        "levelno": logging.INFO,
        "logger": logger.name,
        "time": data["time"],
        "exception": None,
        "stack": None,
        "extra": {},
    }
    assert before <= datetime.fromisoformat(data["time"]) <= after
    assert handler.statistics() == EventLogStatistics(queued=0, published=1, dropped=0, failed=0)
    assert handler not in logger.handlers


async def test_a_record_from_a_worker_thread_arrives(logger: logging.Logger) -> None:
    """A record logged in a trio.to_thread worker is published."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus, attach_to=logger),
        ):
            await trio.to_thread.run_sync(logger.warning, "from a worker")
            event = await sub.receive()
    assert event.topic == f"log.warning.{logger.name}"
    assert event.data["message"] == "from a worker"


async def test_records_from_a_foreign_thread_arrive_in_order(logger: logging.Logger) -> None:
    """Records logged in a threading.Thread Trio does not know are published, in order."""

    def work() -> None:
        for i in range(20):
            logger.error("record %d", i)

    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus, attach_to=logger),
        ):
            thread = threading.Thread(target=work)
            thread.start()
            await trio.to_thread.run_sync(thread.join)
            events = await receive_all(sub, 20)
    assert {e.topic for e in events} == {f"log.error.{logger.name}"}
    assert [e.data["message"] for e in events] == [f"record {i}" for i in range(20)]


async def test_the_topic_tokens_come_from_the_level_and_the_logger_name() -> None:
    """The logger's dotted name becomes tokens; other characters become '_'."""
    weird = logging.getLogger("tests.log_events.my app..ü")
    weird.propagate = False
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus, attach_to=weird),
        ):
            weird.critical("odd name")
            event = await sub.receive()
    assert event.topic == "log.critical.tests.log_events.my_app._._"
    assert event.data["logger"] == "tests.log_events.my app..ü"


async def test_the_level_filters_records_and_the_formatter_makes_the_message(
    logger: logging.Logger,
) -> None:
    """Records below the handler's level are ignored; its formatter formats the message."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus, attach_to=logger.name, level="WARNING") as handler,
        ):
            handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
            logger.info("not published")
            logger.warning("published")
            event = await sub.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert sub.statistics().buffered == 0
    assert event.data["message"] == "[WARNING] published"
    assert handler.statistics().published == 1


# ---------------------------------------------------------------------------------------------
# What a record carries


async def test_extras_exceptions_and_stacks_are_in_the_data(logger: logging.Logger) -> None:
    """Extras are JSON values or their repr; exc_info gives the traceback, stack_info the stack."""
    marker = object()
    lone = "\udcff"
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus, attach_to=logger),
        ):
            nested: dict[str, Any] = {"a": [1, 2.5, None, True], "t": (1, "x")}
            try:
                raise ValueError("bad value")
            except ValueError:
                logger.exception(
                    "failed for %s",
                    "ann",
                    extra={
                        "user": "ann",
                        "n": 3,
                        "nested": nested,
                        "obj": marker,
                        "big": 2**70,
                        "when": datetime(2024, 1, 2, tzinfo=UTC),
                        "text": lone,
                    },
                )
            nested["a"].append("changed after logging")
            logger.info("where am I", stack_info=True)
            failed, where = await receive_all(sub, 2)
    assert failed.topic == f"log.error.{logger.name}"
    assert failed.data["message"] == "failed for ann"
    exception = failed.data["exception"]
    assert exception.startswith("Traceback (most recent call last):")
    assert exception.endswith("ValueError: bad value")
    assert failed.data["extra"] == {
        "user": "ann",
        "n": 3,
        "nested": {"a": [1, 2.5, None, True], "t": [1, "x"]},
        "obj": repr(marker),
        "big": repr(2**70),
        "when": repr(datetime(2024, 1, 2, tzinfo=UTC)),
        "text": "\\udcff",
    }
    assert where.data["exception"] is None
    assert where.data["stack"].startswith("Stack (most recent call last):")


async def test_a_message_that_cannot_be_formatted_is_reported_not_raised(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record whose message fails to format goes to logging's error report, as with any
    handler; the caller goes on and the handler keeps working."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus) as handler,
        ):
            bad = logger.makeRecord(logger.name, logging.INFO, "", 0, "%d apples", ("three",), None)
            handler.handle(bad)
            handler.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, "fine", (), None))
            event = await sub.receive()
    assert event.data["message"] == "fine"
    assert "--- Logging error ---" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Overflow: drop and count, never block


async def test_a_flood_from_a_foreign_thread_is_dropped_and_counted_without_blocking(
    logger: logging.Logger,
) -> None:
    """With the publisher stuck, a thread logging more than the queue holds finishes at once;
    the queue keeps the first records, the rest are counted as dropped."""

    def flood() -> None:
        for i in range(1000):
            logger.info("flood %d", i)

    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus, bus.subscribe("log.>", max_buffer_size=100) as sub:
            channel = GatedChannel(bus)
            async with open_event_log_handler(
                cast("EventChannel", channel), attach_to=logger, max_queue=10
            ) as handler:
                logger.info("first")
                await trio.testing.wait_all_tasks_blocked()  # the publisher holds it, stuck
                thread = threading.Thread(target=flood)
                thread.start()
                await trio.to_thread.run_sync(thread.join)
                assert handler.statistics() == EventLogStatistics(
                    queued=11, published=0, dropped=990, failed=0
                )
                assert handler.dropped == 990
                channel.gate.set()
            events = await receive_all(sub, 11)
    assert [e.data["message"] for e in events] == ["first"] + [f"flood {i}" for i in range(10)]
    assert handler.statistics() == EventLogStatistics(queued=0, published=11, dropped=990, failed=0)


async def test_a_flood_from_trio_tasks_and_workers_never_blocks(logger: logging.Logger) -> None:
    """Logging in a Trio task and in worker threads returns at once when the queue is full."""
    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus:
            channel = GatedChannel(bus)
            async with open_event_log_handler(
                cast("EventChannel", channel), attach_to=logger, max_queue=5
            ) as handler:
                logger.info("first")
                await trio.testing.wait_all_tasks_blocked()
                for i in range(100):
                    logger.info("task %d", i)

                def work() -> None:
                    for _ in range(100):
                        logger.info("worker")

                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(trio.to_thread.run_sync, work)
                assert handler.statistics().queued == 6
                assert handler.dropped == 495
                channel.gate.set()
    assert handler.statistics() == EventLogStatistics(queued=0, published=6, dropped=495, failed=0)


async def test_leaving_the_block_flushes_for_a_bounded_time(
    logger: logging.Logger, autojump_clock: trio.abc.Clock
) -> None:
    """Leaving the block waits flush_timeout at most for a stuck publisher, then drops and
    counts what is left; records after that are dropped too."""
    async with open_bus() as bus:
        channel = GatedChannel(bus)
        async with open_event_log_handler(
            cast("EventChannel", channel), attach_to=logger, flush_timeout=2.5
        ) as handler:
            for i in range(3):
                logger.info("stuck %d", i)
            start = trio.current_time()
        assert trio.current_time() - start == 2.5
        assert handler.statistics() == EventLogStatistics(
            queued=0, published=0, dropped=3, failed=0
        )
        handler.handle(logger.makeRecord(logger.name, logging.INFO, "", 0, "late", (), None))
        assert handler.dropped == 4


async def test_leaving_the_block_publishes_what_is_queued(
    logger: logging.Logger, autojump_clock: trio.abc.Clock
) -> None:
    """Records queued when the block ends are published before it returns, even when the
    block is cancelled."""
    async with open_bus() as bus, bus.subscribe("log.>") as sub:
        with trio.CancelScope() as scope:
            async with open_event_log_handler(bus, attach_to=logger) as handler:
                for i in range(3):
                    logger.info("queued %d", i)
                scope.cancel()
                await trio.sleep_forever()
        assert handler.statistics().published == 3
        events = await receive_all(sub, 3)
    assert [e.data["message"] for e in events] == [f"queued {i}" for i in range(3)]


async def test_a_closed_channel_stops_the_handler_quietly(logger: logging.Logger) -> None:
    """When the channel closes before the handler, the record it could not take is counted as
    failed, later records as dropped, and the block ends without error."""
    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus:
            pass
        async with open_event_log_handler(bus, attach_to=logger) as handler:
            logger.info("to a closed bus")
            await trio.testing.wait_all_tasks_blocked()
            logger.info("after")
    assert handler.statistics() == EventLogStatistics(queued=0, published=0, dropped=1, failed=1)


# ---------------------------------------------------------------------------------------------
# No recursion


async def test_what_the_publish_path_logs_is_not_published(logger: logging.Logger) -> None:
    """A channel whose publish logs on the handler's own logger does not feed the handler:
    the warnings reach other handlers, only the application's records are published."""
    recorder = Recorder()
    logger.addHandler(recorder)
    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus, bus.subscribe("log.>") as sub:
            channel = ChattyChannel(bus, logger)
            async with open_event_log_handler(
                cast("EventChannel", channel), attach_to=logger
            ) as handler:
                for i in range(5):
                    logger.info("app %d", i)
                events = await receive_all(sub, 5)
                await trio.testing.wait_all_tasks_blocked()
            assert handler.statistics() == EventLogStatistics(
                queued=0, published=5, dropped=0, failed=0
            )
            assert sub.statistics().buffered == 0
    assert [e.data["message"] for e in events] == [f"app {i}" for i in range(5)]
    warnings = [r for r in recorder.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5


@event_type("test.logging.unfit", topic="log.warning.trio_realtime")
@attrs.frozen
class Unfit:
    """A payload on the topic of the bus's own warnings, which no log record's data fits."""

    points: list[int]


async def test_a_subscriber_that_makes_the_bus_log_does_not_loop() -> None:
    """A typed subscriber on the topic of the bus's own warnings makes the bus warn, inline,
    for each log event it cannot take: the warning raised by the handler's publish is not
    published again, so one unfit event gives one log event, not an endless chain."""
    bus_logger = logging.getLogger("trio_realtime")
    recorder = Recorder()
    bus_logger.addHandler(recorder)
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                open_bus() as bus,
                bus.subscribe("log.>") as sub,
                bus.subscribe(Unfit),
                open_event_log_handler(bus, attach_to=bus_logger) as handler,
            ):
                await bus.publish("log.warning.trio_realtime", {"message": "not a log record"})
                first, logged = await receive_all(sub, 2)
                await trio.testing.wait_all_tasks_blocked()
                assert sub.statistics().buffered == 0
        assert first.data == {"message": "not a log record"}
        assert logged.topic == "log.warning.trio_realtime"
        assert "does not fit" in logged.data["message"]
        assert handler.statistics().published == 1
        assert ["does not fit" in r.getMessage() for r in recorder.records] == [True, True]
    finally:
        bus_logger.removeHandler(recorder)


async def test_a_formatter_that_logs_does_not_recurse(logger: logging.Logger) -> None:
    """A formatter that logs while the handler formats a record does not re-enter it."""

    class Chatty(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            logger.info("formatting %s", record.msg)
            return super().format(record)

    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.subscribe("log.>") as sub,
            open_event_log_handler(bus, attach_to=logger) as handler,
        ):
            handler.setFormatter(Chatty())
            logger.info("outer")
            event = await sub.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert sub.statistics().buffered == 0
    assert event.data["message"] == "outer"
    assert handler.statistics().published == 1


async def test_a_record_logged_after_the_block_is_counted_as_dropped(
    logger: logging.Logger,
) -> None:
    """A handler added by hand and left attached drops (and counts) what it gets afterwards."""
    with trio.fail_after(TIMEOUT):
        async with open_bus() as bus, open_event_log_handler(bus) as handler:
            logger.addHandler(handler)
        logger.info("too late")
    assert handler.dropped == 1


def test_there_is_no_public_constructor() -> None:
    """EventLogHandler is made by open_event_log_handler only."""
    with pytest.raises(TypeError, match="open_event_log_handler"):
        EventLogHandler()  # type: ignore[call-arg]


async def test_bad_arguments_are_refused() -> None:
    """max_queue must be a positive int, flush_timeout not negative."""
    async with open_bus() as bus:
        with pytest.raises(ValueError, match="max_queue"):
            async with open_event_log_handler(bus, max_queue=0):
                pass  # pragma: no cover
        with pytest.raises(ValueError, match="flush_timeout"):
            async with open_event_log_handler(bus, flush_timeout=-1):
                pass  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Through a broker


async def test_records_reach_a_broker_through_a_client(
    live_broker: RunningBroker, logger: logging.Logger
) -> None:
    """Through open_client, records from a task, a worker and a foreign thread reach another
    client's log.> subscription on the broker."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_client(live_broker.url, name="app") as client,
            open_client(live_broker.url) as tail,
            tail.subscribe("log.>") as sub,
            open_event_log_handler(client, attach_to=logger) as handler,
        ):
            logger.info("from a task")
            await trio.to_thread.run_sync(logger.warning, "from a worker")
            thread = threading.Thread(target=logger.error, args=("from a thread",))
            thread.start()
            await trio.to_thread.run_sync(thread.join)
            events = await receive_all(sub, 3)
    assert [(e.topic, e.data["message"], e.source) for e in events] == [
        (f"log.info.{logger.name}", "from a task", "app"),
        (f"log.warning.{logger.name}", "from a worker", "app"),
        (f"log.error.{logger.name}", "from a thread", "app"),
    ]
    assert handler.statistics() == EventLogStatistics(queued=0, published=3, dropped=0, failed=0)


# ---------------------------------------------------------------------------------------------
# The topic mapping


@given(level=st.text(), name=st.text())
def test_any_level_and_logger_name_give_a_valid_topic(level: str, name: str) -> None:
    """log_topic makes a publishable topic under log. from any level and logger name."""
    topic = log_topic(level, name)
    assert validate_topic(topic) == topic
    assert topic.startswith("log.")


_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
    min_size=1,
    max_size=20,
)


@given(level=_token, tokens=st.lists(_token, min_size=1, max_size=10))
def test_a_dotted_name_of_valid_tokens_is_kept(level: str, tokens: list[str]) -> None:
    """A logger name made of valid tokens maps to itself, after the lowercased level."""
    name = ".".join(tokens)
    assert log_topic(level, name) == f"log.{level.lower()}.{name}"
