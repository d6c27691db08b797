"""Publish rate limits, per connection and per user, on a real broker.

The buckets run on the Trio clock: the refill is tested on a mock clock moved by hand; the
refusals with a rate so low that nothing refills during the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import pytest
import trio
import trio.testing
from _broker_process import open_broker_process
from conftest import TIMEOUT, running_broker
from test_interop import in_thread, open_peer
from websockets.exceptions import ConnectionClosed

from trio_realtime import Refused, open_client
from trio_realtime.broker._limits import RATE_REFUSALS_BEFORE_CLOSE, TokenBucket
from trio_realtime.security import Permissions, StaticUsers, User, token_sha256

#: A rate at which no token comes back while a test runs.
NEVER: Final = 1e-6
TOKEN: Final = "carol-token-0123456789abcdef"


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    """Tokens come back at the rate, never beyond the burst."""
    bucket = TokenBucket(2.0, 3, now=0.0)
    for _ in range(3):
        assert bucket.has_token(0.0)
        bucket.take()
    assert not bucket.has_token(0.0)
    assert not bucket.has_token(0.4)  # 0.8 of a token
    assert bucket.has_token(0.5)
    bucket.take()
    assert bucket.has_token(100.0)
    assert bucket.tokens == 3.0
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0.0, 1, now=0.0)
    with pytest.raises(ValueError, match="at least 1"):
        TokenBucket(1.0, 0, now=0.0)


async def test_a_publish_over_the_rate_is_refused_and_the_neighbour_is_not() -> None:
    """Past its burst, a connection's publish gets `rate_limited` (a Refused on ack=True) and
    is not routed; another connection has a bucket of its own."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(publish_rate=NEVER, publish_burst=3) as served,
            open_client(served.url) as fast,
            open_client(served.url) as neighbour,
            neighbour.subscribe("rl.>") as seen,
        ):
            for i in range(3):
                await fast.publish("rl.fast", i, ack=True)
            with pytest.raises(Refused) as info:
                await fast.publish("rl.fast", 3, ack=True)
            assert info.value.code == "rate_limited"
            await neighbour.publish("rl.neighbour", "n", ack=True)
            got = [(await seen.receive()).data for _ in range(4)]
            assert got == [0, 1, 2, "n"]  # the refused one was never routed
            assert served.broker.statistics().errors["rate_limited"] == 1


async def test_the_bucket_refills_with_time(mock_clock: trio.testing.MockClock) -> None:
    """One second later, the rate's worth of publishes goes through again (a mock clock)."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(publish_rate=2.0, publish_burst=2) as served,
            open_client(served.url) as client,
        ):
            for i in range(2):
                await client.publish("rl.x", i, ack=True)
            with pytest.raises(Refused):
                await client.publish("rl.x", 2, ack=True)
            mock_clock.jump(1.0)
            for i in range(2):
                await client.publish("rl.x", i, ack=True)
            with pytest.raises(Refused):
                await client.publish("rl.x", 4, ack=True)


async def test_the_connections_of_one_user_share_its_rate() -> None:
    """user_publish_rate is one bucket for all of a user's connections."""
    users = StaticUsers(
        [User(name="carol", token_sha256=token_sha256(TOKEN), permissions=Permissions.everything())]
    )
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(auth=users, user_publish_rate=NEVER, publish_burst=3) as served,
            open_client(served.url, token=TOKEN) as one,
            open_client(served.url, token=TOKEN) as two,
        ):
            await one.publish("rl.x", 1, ack=True)
            await two.publish("rl.x", 2, ack=True)
            await one.publish("rl.x", 3, ack=True)
            for client in (one, two):
                with pytest.raises(Refused, match="rate"):
                    await client.publish("rl.x", 4, ack=True)
            assert served.broker._user_buckets["carol"][1] == 2
        assert served.broker._user_buckets == {}  # forgotten with its last connection


async def test_a_connection_that_keeps_going_is_closed_with_1008() -> None:
    """After many refusals in a row, the connection is told `rate_limited` and closed with
    1008; a neighbour is served."""
    publishes = [
        {"type": "publish", "event": {"topic": "rl.flood", "data": i}}
        for i in range(RATE_REFUSALS_BEFORE_CLOSE + 10)
    ]

    def flood(url: str) -> tuple[list[dict[str, Any]], int]:
        with open_peer(url) as peer:
            peer.send_text(json.dumps(publishes))
            errors: list[dict[str, Any]] = []
            try:
                while True:
                    frame = peer.receive()
                    if frame["type"] == "error":
                        errors.append(frame)
            except ConnectionClosed as exc:
                close = exc.rcvd
            return errors, -1 if close is None else close.code

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(publish_rate=NEVER, publish_burst=5) as served,
            open_client(served.url) as neighbour,
        ):
            errors, code = await in_thread(lambda: flood(served.url))
            assert code == 1008
            assert {e["code"] for e in errors} == {"rate_limited"}
            assert "in a row" in errors[-1]["message"]  # the close, announced
            assert served.broker.statistics().errors["rate_limited"] == RATE_REFUSALS_BEFORE_CLOSE
            assert (await neighbour.publish("rl.ok", 1, ack=True)).topic == "rl.ok"


async def test_serve_takes_the_rate_limits_from_flags_and_the_config_file(tmp_path: Path) -> None:
    """`serve --publish-rate/--publish-burst` (or `[server]` in the config file) limit a real
    broker process; the start line says so."""
    config = tmp_path / "broker.toml"
    config.write_text('[server]\nstore = "memory"\npublish_burst = 2\nuser_publish_rate = 5.0\n')
    with trio.fail_after(30):
        async with open_broker_process(
            "--config", str(config), "--publish-rate", "0.000001"
        ) as broker:
            async with open_client(broker.url) as client:
                for i in range(2):
                    await client.publish("rl.x", i, ack=True)
                with pytest.raises(Refused, match="rate"):
                    await client.publish("rl.x", 2, ack=True)
            assert "publish_rate=1e-06/s, user_publish_rate=5/s, publish_burst=2" in (
                broker.stdout()
            )
