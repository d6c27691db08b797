"""The EventChannel conformance suite against the in-process bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from trio_realtime import Bus, EventChannel, open_bus
from trio_realtime.testing import check_channel


async def test_bus_passes_check_channel() -> None:
    """The bus meets the whole EventChannel contract."""
    async with open_bus() as bus:

        @asynccontextmanager
        async def same_bus() -> AsyncIterator[EventChannel]:
            yield bus

        await check_channel(same_bus, open_owned=open_bus)


def test_bus_is_an_event_channel() -> None:
    """Bus satisfies the EventChannel protocol at runtime."""
    assert issubclass(Bus, EventChannel)
