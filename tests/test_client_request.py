"""The remote client's request/reply: ``request()`` against ``serve()`` on another client."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from conftest import TIMEOUT, RunningBroker

from trio_realtime import (
    Event,
    NoResponders,
    RequestFailed,
)
from trio_realtime.client._client import open_client


async def test_request_reply_between_clients(live_broker: RunningBroker) -> None:
    """request() gets serve()'s reply; failures and no responders raise."""

    async def double(event: Event) -> Any:
        return event.data * 2

    def fail(event: Event) -> Any:
        raise ValueError("cannot do that")

    with trio.fail_after(TIMEOUT):
        async with (
            open_client(live_broker.url) as a,
            open_client(live_broker.url) as b,
            b.serve("rpc.double", double),
            b.serve("rpc.fail", fail),
        ):
            assert (await a.request("rpc.double", 21)).data == 42
            with pytest.raises(RequestFailed, match="cannot do that"):
                await a.request("rpc.fail", 1)
            with pytest.raises(NoResponders):
                await a.request("rpc.nobody", 1)
            assert [(await a.request("rpc.double", i)).data for i in range(3)] == [0, 2, 4]
            assert b.statistics().subscriptions == 2


async def test_request_to_a_stalled_responder_times_out(
    live_broker: RunningBroker, loopback_clock: trio.testing.MockClock
) -> None:
    """A request whose responder never answers raises TooSlowError after its timeout, not
    before; the requester goes on."""
    answered = trio.Event()

    async def stall(event: Event) -> Any:
        answered.set()
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with (
            open_client(live_broker.url) as a,
            open_client(live_broker.url) as b,
            b.serve("rpc.stall", stall),
        ):
            start = trio.current_time()
            with pytest.raises(trio.TooSlowError):
                await a.request("rpc.stall", timeout=5.0)
            assert trio.current_time() - start == pytest.approx(5.0)
            assert answered.is_set()
            await a.publish("after.x", 1, ack=True)
