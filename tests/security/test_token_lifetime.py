"""A credential's lifetime on a real broker: expiry, ``refresh``, and the client's callable token.

The broker authenticates JWTs (HS256) whose ``exp`` is a few minutes of wall-clock time ahead;
it turns that into a deadline on the Trio clock, so these tests run on virtual time
(``loopback_clock``) and a credential expires without waiting. The raw peer writes its
frames by hand, as JSON, over the package's WebSocket transport (which runs on the virtual
clock too, and closes its socket when the broker closes the connection).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import jwt
import pytest
import trio
import trio.testing
from conftest import FAST, TIMEOUT, RunningBroker, running_broker

from trio_realtime import ClientState, ConnectionClosed, Event, PermissionDenied, open_client
from trio_realtime._transport import WebSocketTransport
from trio_realtime._transport_client import open_transport
from trio_realtime.broker._limits import (
    REFRESH_BURST,
    REFRESH_RATE,
    REFRESH_REFUSALS_BEFORE_CLOSE,
)
from trio_realtime.security import JWTAuthenticator, JWTKey

SECRET: Final = b"a-secret-of-at-least-32-bytes-for-hs256!"
LIFETIME: Final = 120  # seconds of a token's life
ORDERS: Final = {"publish": {"allow": ["orders.>"]}, "subscribe": {"allow": ["orders.*"]}}
NARROW: Final = {"publish": {"allow": ["orders.>"]}, "subscribe": {"allow": ["orders.a"]}}


def token(sub: str = "alice", perm: dict[str, Any] | None = None, life: float = LIFETIME) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time() + life)}
    claims["perm"] = ORDERS if perm is None else perm
    return jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "k1"})


@asynccontextmanager
async def jwt_broker() -> AsyncIterator[RunningBroker]:
    auth = JWTAuthenticator(keys=[JWTKey("k1", secret=SECRET)], algorithms=["HS256"])
    # (the raw peers do not answer pings while a test sleeps)
    async with running_broker(auth=auth, heartbeat=LIFETIME * 10) as served:
        yield served


class RawPeer:
    """A hand-written protocol peer over trio-websocket."""

    def __init__(self, ws: WebSocketTransport) -> None:
        self.ws = ws
        self._frames: deque[dict[str, Any]] = deque()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def receive(self) -> dict[str, Any]:
        """The next frame (a batch is unpacked)."""
        if not self._frames:
            message = json.loads(await self.ws.receive())
            self._frames.extend(message if isinstance(message, list) else [message])
        return self._frames.popleft()

    async def expect(self, kind: str) -> dict[str, Any]:
        frame = await self.receive()
        while frame["type"] == "ping":
            await self.send({"type": "pong"})
            frame = await self.receive()
        assert frame["type"] == kind, frame
        return frame


@asynccontextmanager
async def raw_peer(url: str, credential: str) -> AsyncIterator[tuple[RawPeer, dict[str, Any]]]:
    async with open_transport(url) as ws:
        peer = RawPeer(ws)
        await peer.send({"type": "hello", "token": credential})
        yield peer, await peer.expect("welcome")


# ---------------------------------------------------------------------------------------------
# The broker


async def test_expiry_mid_stream_closes_with_auth_expired(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """`welcome.expires_in` is the time left to the token's `exp`; when it passes with no
    refresh, the broker
    sends `auth_expired` and closes 1008, counted; a neighbour with a longer token is served."""
    with trio.fail_after(LIFETIME * 3):
        async with (
            jwt_broker() as served,
            open_client(served.url, token=token("bob", life=LIFETIME * 2)) as neighbour,
            neighbour.subscribe("orders.*") as seen,
            raw_peer(served.url, token()) as (peer, welcome),
        ):
            assert welcome["user"] == "alice"
            assert LIFETIME - 5 < welcome["expires_in"] <= LIFETIME
            await peer.send({"type": "subscribe", "id": 1, "pattern": "orders.*"})
            await peer.expect("subscribed")
            started = trio.current_time()
            await peer.send({"type": "publish", "ref": 2, "event": {"topic": "orders.a"}})
            await peer.expect("event")
            await peer.expect("ack")
            error = await peer.expect("error")
            assert error["code"] == "auth_expired"
            assert LIFETIME - 5 < trio.current_time() - started <= LIFETIME + 1
            with pytest.raises(ConnectionClosed) as closed:
                await peer.receive()
            assert closed.value.code == 1008
            assert served.broker.statistics().errors["auth_expired"] == 1
            assert (await seen.receive()).topic == "orders.a"
            await neighbour.publish("orders.b", 1)
            assert (await seen.receive()).topic == "orders.b"


async def test_refresh_moves_the_expiry(loopback_clock: trio.testing.MockClock) -> None:
    """A `refresh` with a good token for the same user is answered `refreshed` (its new
    `expires_in`), and the connection outlives the first token."""
    with trio.fail_after(LIFETIME * 5):
        async with jwt_broker() as served, raw_peer(served.url, token()) as (peer, _):
            for ref in range(1, 4):
                await trio.sleep(LIFETIME - 10)
                await peer.send({"type": "refresh", "ref": ref, "token": token()})
                refreshed = await peer.expect("refreshed")
                assert (refreshed["ref"], refreshed["user"]) == (ref, "alice")
                assert LIFETIME - 5 < refreshed["expires_in"] <= LIFETIME
            await peer.send({"type": "ping"})
            await peer.expect("pong")
            assert "auth_expired" not in served.broker.statistics().errors


@pytest.mark.parametrize(
    ("credential", "why"),
    [
        (lambda: token("mallory"), "names user 'mallory'"),
        (lambda: "garbage", "not a JWT"),
        (lambda: token(life=-10), "expired"),
    ],
    ids=["another user", "garbage", "expired"],
)
async def test_a_refused_refresh_keeps_the_connection_until_expiry(
    loopback_clock: trio.testing.MockClock, credential: Callable[[], str], why: str
) -> None:
    """A refresh naming another user (or a bad token) is `auth_failed` with its ref, told on
    `$sys.auth.failed` with the reason; the connection stays alice's, and still expires."""
    with trio.fail_after(LIFETIME * 3):
        async with (
            jwt_broker() as served,
            served.broker.bus.subscribe("$sys.auth.failed") as failures,
            raw_peer(served.url, token()) as (peer, _),
        ):
            await peer.send({"type": "refresh", "ref": 7, "token": credential()})
            refusal = await peer.expect("error")
            assert (refusal["code"], refusal["ref"]) == ("auth_failed", 7)
            failure = await failures.receive()
            assert why in failure.data["reason"], failure.data
            assert failure.data["user"] == "alice"
            await peer.send({"type": "publish", "ref": 8, "event": {"topic": "orders.x"}})
            ack = await peer.expect("ack")  # still alice, with her permissions
            assert ack["ref"] == 8
            assert (await peer.expect("error"))["code"] == "auth_expired"


async def test_refused_refreshes_in_a_row_close_the_connection(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """Each refused refresh costs the authenticator's work and a log line: the tenth in a
    row closes the connection (`auth_failed`, 1008); a good one between resets the count."""
    with trio.fail_after(LIFETIME * 2):  # (virtual time)
        async with jwt_broker() as served, raw_peer(served.url, token(life=1000)) as (peer, _):
            for ref in range(1, REFRESH_REFUSALS_BEFORE_CLOSE):
                await trio.sleep(1 / REFRESH_RATE)  # (within the refresh rate)
                await peer.send({"type": "refresh", "ref": ref, "token": "garbage"})
                assert (await peer.expect("error"))["ref"] == ref
            await trio.sleep(1 / REFRESH_RATE)
            await peer.send({"type": "refresh", "ref": 99, "token": token()})
            await peer.expect("refreshed")
            for ref in range(1, REFRESH_REFUSALS_BEFORE_CLOSE + 1):
                await trio.sleep(1 / REFRESH_RATE)
                await peer.send({"type": "refresh", "ref": ref, "token": "garbage"})
                error = await peer.expect("error")
                assert (error["code"], error["ref"]) == ("auth_failed", ref)
            with pytest.raises(ConnectionClosed) as closed:
                await peer.receive()
            assert closed.value.code == 1008
            refused = 2 * REFRESH_REFUSALS_BEFORE_CLOSE - 1  # (each error is counted)
            assert served.broker.statistics().errors["auth_failed"] == refused


async def test_refreshing_too_fast_is_rate_limited(loopback_clock: trio.testing.MockClock) -> None:
    """Past a burst of refreshes, one more is refused `rate_limited` without the
    authenticator being asked (nothing is told on `$sys.auth.failed`); a while later the next
    is taken. A refresh without a ref is answered without one."""
    with trio.fail_after(TIMEOUT * 3):
        async with (
            jwt_broker() as served,
            served.broker.bus.subscribe("$sys.auth.failed") as failures,
            open_client(served.url, token=token("bob")) as neighbour,
            neighbour.subscribe("orders.*") as seen,
            raw_peer(served.url, token()) as (peer, _),
        ):
            for _ in range(REFRESH_BURST):
                await peer.send({"type": "refresh", "token": token()})
                assert (await peer.expect("refreshed"))["ref"] is None
            await peer.send({"type": "refresh", "ref": 1, "token": "garbage"})
            error = await peer.expect("error")
            assert (error["code"], error["ref"]) == ("rate_limited", 1)
            await trio.sleep(1 / REFRESH_RATE)
            await peer.send({"type": "refresh", "ref": 2, "token": token()})
            assert (await peer.expect("refreshed"))["ref"] == 2
            assert served.broker.statistics().errors == {"rate_limited": 1}
            with trio.move_on_after(1):
                await failures.receive()
                pytest.fail("a rate-limited refresh reached the authenticator")
            await neighbour.publish("orders.n", 1)  # the neighbour is served throughout
            assert (await seen.receive()).data == 1


async def test_a_token_accepted_within_the_leeway_expires_after_it(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A JWT whose `exp` passed but within the configured leeway is accepted, and is good for
    the rest of the leeway (`expires_in`), not closed at once."""
    auth = JWTAuthenticator(keys=[JWTKey("k1", secret=SECRET)], algorithms=["HS256"], leeway=60)
    with trio.fail_after(TIMEOUT * 10):
        async with (
            running_broker(auth=auth, heartbeat=600) as served,
            raw_peer(served.url, token(life=-20)) as (peer, welcome),
        ):
            assert 30 < welcome["expires_in"] <= 40
            started = trio.current_time()
            assert (await peer.expect("error"))["code"] == "auth_expired"
            assert 30 < trio.current_time() - started <= 40


async def test_refresh_ends_the_subscriptions_no_longer_allowed(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """New permissions that no longer cover a subscription end it with `unsubscribed` and a
    reason; the ones still allowed go on, and the id is free again."""
    with trio.fail_after(TIMEOUT):
        async with jwt_broker() as served, raw_peer(served.url, token()) as (peer, _):
            await peer.send({"type": "subscribe", "id": 1, "pattern": "orders.*"})
            await peer.expect("subscribed")
            await peer.send({"type": "subscribe", "id": 2, "pattern": "orders.a"})
            await peer.expect("subscribed")
            await peer.send({"type": "refresh", "ref": 3, "token": token(perm=NARROW)})
            ended = await peer.expect("unsubscribed")
            assert ended["id"] == 1
            assert "no longer allow it" in ended["reason"]
            await peer.expect("refreshed")
            await peer.send({"type": "publish", "ref": 4, "event": {"topic": "orders.a"}})
            assert (await peer.expect("event"))["subs"] == [2]
            await peer.expect("ack")
            await peer.send({"type": "subscribe", "id": 1, "pattern": "orders.b"})
            assert (await peer.expect("error"))["code"] == "forbidden"  # (id 1 is free)


async def test_refresh_brings_new_deny_rules_to_kept_subscriptions(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A subscription the new permissions still allow, but now with a deny rule it overlaps,
    is kept and filtered from then on."""
    secret = {"publish": {"allow": ["orders.>"]}, "subscribe": {"allow": ["orders.*"]}}
    secret["subscribe"]["deny"] = ["orders.secret"]
    with trio.fail_after(TIMEOUT):
        async with jwt_broker() as served, raw_peer(served.url, token()) as (peer, _):
            await peer.send({"type": "subscribe", "id": 1, "pattern": "orders.*"})
            await peer.expect("subscribed")
            await peer.send({"type": "publish", "ref": 2, "event": {"topic": "orders.secret"}})
            assert (await peer.expect("event"))["event"]["topic"] == "orders.secret"
            await peer.expect("ack")
            await peer.send({"type": "refresh", "ref": 3, "token": token(perm=secret)})
            await peer.expect("refreshed")
            await peer.send({"type": "publish", "ref": 4, "event": {"topic": "orders.secret"}})
            await peer.send({"type": "publish", "ref": 5, "event": {"topic": "orders.open"}})
            await peer.expect("ack")  # (4: not delivered)
            assert (await peer.expect("event"))["event"]["topic"] == "orders.open"
            await peer.expect("ack")


async def test_a_refresh_without_allow_responses_revokes_the_leave_to_reply(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A request received gives leave to reply; refreshed permissions without
    `allow_responses` take it back."""
    answering = {"subscribe": {"allow": ["svc.price"]}, "allow_responses": True}
    silent = {"subscribe": {"allow": ["svc.price"]}}
    reply_to = "_inbox.requester.1"
    with trio.fail_after(TIMEOUT):
        async with (
            jwt_broker() as served,
            raw_peer(served.url, token(perm=answering)) as (peer, _),
        ):
            await peer.send({"type": "subscribe", "id": 1, "pattern": "svc.price"})
            await peer.expect("subscribed")
            await served.broker.bus.publish_event(Event(topic="svc.price", reply_to=reply_to))
            assert (await peer.expect("event"))["event"]["reply_to"] == reply_to
            await peer.send({"type": "refresh", "ref": 2, "token": token(perm=silent)})
            await peer.expect("refreshed")
            await peer.send({"type": "publish", "ref": 3, "event": {"topic": reply_to}})
            refusal = await peer.expect("error")
            assert (refusal["code"], refusal["ref"]) == ("forbidden", 3)
            assert "may not answer requests" in refusal["message"]


async def test_refresh_on_a_broker_without_authentication(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """Without an authenticator there is nothing to expire: `refresh` is answered
    `refreshed` without a user or an expiry."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, raw_peer(served.url, "anything") as (peer, w):
            assert (w["user"], w["expires_in"]) == (None, None)
            await peer.send({"type": "refresh", "ref": 1, "token": "x"})
            assert await peer.expect("refreshed") == {
                "type": "refreshed",
                "ref": 1,
                "user": None,
                "expires_in": None,
            }


# ---------------------------------------------------------------------------------------------
# The client


async def test_a_callable_token_is_refreshed_before_expiry(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """`open_client(token=callable)` asks it at connect and shortly before each expiry; the
    client never reconnects, and `Client.expires` follows."""
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return token()

    with trio.fail_after(LIFETIME * 10):
        async with (
            jwt_broker() as served,
            open_client(served.url, token=get_token) as client,
            client.subscribe("orders.*") as sub,
        ):
            first_expiry = client.expires
            assert first_expiry is not None
            await trio.sleep(LIFETIME * 5)
            await client.publish("orders.a", 1)
            assert (await sub.receive()).data == 1
            assert calls >= 5
            assert client.statistics().reconnects == 0
            assert client.expires is not None
            assert "auth_expired" not in served.broker.statistics().errors


async def test_a_fixed_token_that_expires_closes_the_client(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A str token cannot be renewed: at expiry the client is closed for good (1008)."""
    with trio.fail_after(LIFETIME * 3):
        async with jwt_broker() as served, open_client(served.url, token=token()) as client:
            async with client.subscribe("orders.*") as sub:
                with pytest.raises(ConnectionClosed) as closed:
                    await sub.receive()
            assert closed.value.code == 1008
            assert "auth_expired" in str(closed.value)
            assert client.state is ClientState.CLOSED


async def test_after_a_failed_refresh_the_client_reconnects_with_a_fresh_token(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """While the token callable fails, the credential expires (`auth_expired`); the client
    then reconnects with a fresh token from it, and its subscription resumes."""
    failing = False

    def get_token() -> str:
        if failing:
            raise RuntimeError("the identity provider is down")
        return token()

    with trio.fail_after(LIFETIME * 5):
        async with (
            jwt_broker() as served,
            open_client(served.url, token=get_token, **FAST) as client,
            client.subscribe("orders.*") as sub,
        ):
            failing = True
            await trio.sleep(LIFETIME + 1)  # expired, reconnecting, while the callable fails
            failing = False
            assert client.state is not ClientState.CONNECTED
            await client.wait_connected()
            assert client.statistics().reconnects == 1
            assert served.broker.statistics().errors["auth_expired"] == 1
            await client.publish("orders.a", 2)
            assert (await sub.receive()).data == 2


async def test_a_subscription_ended_by_a_refresh_raises_permission_denied(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """The client's subscription that the refreshed permissions no longer allow ends with
    PermissionDenied; the others go on."""
    tokens = iter([token(), token(perm=NARROW)])

    with trio.fail_after(LIFETIME * 3):
        async with (
            jwt_broker() as served,
            open_client(served.url, token=lambda: next(tokens)) as client,
            client.subscribe("orders.a") as narrow,
            client.subscribe("orders.*") as wide,
        ):
            with pytest.raises(PermissionDenied, match="no longer allow it"):
                await wide.receive()
            await client.publish("orders.a", 3)
            assert (await narrow.receive()).data == 3
