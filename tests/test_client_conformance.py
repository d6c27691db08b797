"""The EventChannel conformance suite against remote clients of a real broker on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from conftest import running_broker

from trio_realtime import EventChannel
from trio_realtime.broker._broker import Broker
from trio_realtime.client._client import open_client
from trio_realtime.store import SQLiteStore
from trio_realtime.testing import check_channel


async def run_check(broker: Broker, *, stored: bool) -> None:
    """Serve *broker* on 127.0.0.1 and run check_channel with clients of it."""
    with trio.fail_after(120):
        async with running_broker(broker) as served:

            @asynccontextmanager
            async def connect() -> AsyncIterator[EventChannel]:
                async with open_client(served.url, name="check") as client:
                    yield client

            await check_channel(connect, stored=stored)


async def test_remote_client_passes_check_channel() -> None:
    """Clients of a broker meet the same EventChannel contract as the bus."""
    await run_check(Broker(stats_interval=None), stored=False)


async def test_remote_client_passes_check_channel_with_a_store(tmp_path: Path) -> None:
    """With a SQLite store behind the broker, history and since work remotely too."""
    await run_check(
        Broker(store=SQLiteStore(tmp_path / "events.db"), stats_interval=None), stored=True
    )
