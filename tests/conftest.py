"""The shared harness: a broker serving in process on 127.0.0.1, port 0.

Every test that needs an in-process broker gets it from :func:`running_broker` (an async
context manager, for brokers with options or several brokers in one test) or from the
:func:`live_broker` fixture (a default broker for the whole test). A real
``trio-realtime serve`` process is another thing: see ``_broker_process.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import pytest
import trio
import trio.testing

from trio_realtime._util import open_service_nursery
from trio_realtime.broker._broker import Broker, BrokerServer

#: Checks at the end of a whole run that the docs' error and close codes were all produced.
pytest_plugins = ["_wire_codes"]

#: The host every in-process broker listens on.
HOST: Final = "127.0.0.1"
#: Hang guard (seconds) for a test that talks over loopback sockets.
TIMEOUT: Final = 10
#: Real seconds a test over loopback sockets must stay idle before :func:`loopback_clock`
#: jumps: all tasks blocked is not quite all quiet while the kernel still carries a segment.
LOOPBACK_SETTLE: Final = 0.02
#: Reconnect quickly in client tests.
FAST: Final[dict[str, Any]] = {"backoff_initial": 0.01, "backoff_max": 0.05}


class RunningBroker:
    """A broker serving in a task of its own (from :func:`running_broker` or :func:`start_broker`).

    The serving task can be stopped before its block ends (:meth:`stop`), so that a test
    watches the broker shut down while its clients live on.
    """

    def __init__(self, broker: Broker, *, record_crash: bool = False) -> None:
        self.broker = broker
        #: What ended serving on its own, when the crash is recorded rather than raised.
        self.crash: Exception | None = None
        self._record_crash = record_crash
        #: Set once serving ended (stopped, or the block left).
        self.stopped = trio.Event()
        self._scope = trio.CancelScope()
        self._server: BrokerServer | None = None

    @property
    def server(self) -> BrokerServer:
        """Where the broker listens."""
        assert self._server is not None, "not serving yet"
        return self._server

    @property
    def url(self) -> str:
        """The broker's ``ws://`` URL."""
        return self.server.url

    @property
    def port(self) -> int:
        """The port the broker listens on (a free one, chosen by the system)."""
        return self.server.port

    @property
    def serving(self) -> bool:
        """Whether the broker still serves."""
        return self._server is not None and not self.stopped.is_set()

    def stop_nowait(self) -> float:
        """Cancel serving (the broker closes its clients with 1001); the time it was asked."""
        self._scope.cancel()
        return trio.current_time()

    async def stop(self) -> None:
        """Stop serving and wait until the broker has closed its clients."""
        self.stop_nowait()
        await self.stopped.wait()

    async def _serve(self, port: int, *, task_status: trio.TaskStatus[BrokerServer]) -> None:
        try:
            with self._scope:
                await self.broker.serve(HOST, port, task_status=task_status)
        except Exception as exc:
            if not self._record_crash or self._server is None:
                raise
            self.crash = exc
        finally:
            self.stopped.set()

    def __repr__(self) -> str:
        where = self._server.url if self._server is not None else "not started"
        return f"<RunningBroker {where} serving={self.serving}>"


async def start_broker(
    nursery: trio.Nursery,
    broker: Broker | None = None,
    *,
    port: int = 0,
    record_crash: bool = False,
    **options: Any,
) -> RunningBroker:
    """Start *broker*, or ``Broker(**options)``, serving on 127.0.0.1:*port* in *nursery*.

    For a broker whose life is not one block: one that stops while its clients live on, and
    serves again (on the same port) later. A broker built here publishes no ``$sys.stats``
    unless *options* ask for it. With *record_crash*, a failure of serving once started is
    kept in :attr:`RunningBroker.crash` instead of failing *nursery* (for a test that names
    what made the broker crash).
    """
    if broker is None:
        options.setdefault("stats_interval", None)
        broker = Broker(**options)
    elif options:
        raise TypeError(f"options {sorted(options)} are for a broker built here")
    running = RunningBroker(broker, record_crash=record_crash)
    running._server = await nursery.start(running._serve, port)
    return running


@asynccontextmanager
async def running_broker(
    broker: Broker | None = None, *, port: int = 0, **options: Any
) -> AsyncIterator[RunningBroker]:
    """*broker*, or ``Broker(**options)``, serving on 127.0.0.1:*port* for the block.

    Leaving the block stops it (clients get 1001). A failure in the block comes out as
    itself, not wrapped in an ExceptionGroup; a crash of the broker fails the test. See
    :func:`start_broker` for the options.
    """
    async with open_service_nursery() as nursery:
        yield await start_broker(nursery, broker, port=port, **options)


@pytest.fixture
async def live_broker() -> AsyncIterator[RunningBroker]:
    """A default broker (no store, no ``$sys.stats``) serving for the test."""
    async with running_broker() as running:
        yield running


@pytest.fixture
def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for a test over loopback sockets: it jumps to the next deadline once
    every task has been blocked, with nothing to read, for :data:`LOOPBACK_SETTLE`.

    The timeouts under test (heartbeats, handshake and request timeouts) then take no real
    time and fire in a known order; the hang guard (``trio.fail_after``) is virtual too, and
    fires as soon as a test waits for something that cannot come.
    """
    return trio.testing.MockClock(autojump_threshold=LOOPBACK_SETTLE)
