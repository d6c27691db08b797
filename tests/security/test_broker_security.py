"""Authentication and permissions on a real broker, attacked with an independent client.

Each attack asserts the refusal *and* that nothing leaked, and that a neighbour connection is
still served. The authenticator is the built-in static-users one; the permissions those of
``alice``: she may publish under ``orders.>`` but not ``orders.audit.>``, and subscribe to
``orders.*`` but not ``orders.secret``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import pytest
import trio
import trio.testing
from conftest import TIMEOUT, RunningBroker, running_broker
from test_interop import in_thread, open_peer
from websockets.sync.client import connect

from trio_realtime import Bus, PermissionDenied, Subscription, open_bus, open_client
from trio_realtime.broker._history import MAX_HISTORY_PAGES, MIN_HISTORY_PAGE
from trio_realtime.protocol import USER_HEADER
from trio_realtime.security import Permissions, StaticUsers, User, token_sha256
from trio_realtime.store import MemoryStore

ALICE_TOKEN: Final = "alice-token-0123456789abcdef"
BOB_TOKEN: Final = "bob-token-0123456789abcdef"
ALICE: Final = Permissions.from_dict(
    {
        "publish": {"allow": ["orders.>"], "deny": ["orders.audit.>"]},
        "subscribe": {"allow": ["orders.*"], "deny": ["orders.secret"]},
    }
)


def users() -> StaticUsers:
    return StaticUsers(
        [
            User(name="alice", token_sha256=token_sha256(ALICE_TOKEN), permissions=ALICE),
            User(
                name="bob",
                token_sha256=token_sha256(BOB_TOKEN),
                permissions=Permissions.everything(),
            ),
        ]
    )


@asynccontextmanager
async def secured() -> AsyncIterator[tuple[Bus, RunningBroker]]:
    """A broker authenticating with static users, over a bus with a store that the test
    also uses in process (trusted code)."""
    async with (
        open_bus(store=MemoryStore()) as bus,
        running_broker(bus=bus, auth=users()) as served,
    ):
        yield bus, served


def hello_and_close_code(url: str, token: Any) -> tuple[dict[str, Any], int]:
    """Send `hello` with *token*; the error frame answered, and the close code."""
    with open_peer(url, hello=False) as peer:
        peer.send({"type": "hello", "protocol": 1, "token": token, "client": "attacker"})
        error = peer.expect("error")
        return error, peer.close_code()


@pytest.mark.parametrize(
    "token",
    [None, "", "garbage", "x" * 100_000, 42],
    ids=["missing", "empty", "garbage", "oversized", "not a string"],
)
async def test_a_bad_token_is_refused_with_auth_failed_then_1008(token: Any) -> None:
    """No, a wrong, a huge or a non-string token: `auth_failed`, close 1008, counted, told
    on `$sys.auth.failed` without the token; a neighbour is served meanwhile."""
    with trio.fail_after(TIMEOUT):
        async with (
            secured() as (bus, served),
            bus.subscribe("$sys.auth.failed") as failures,
            open_client(served.url, token=ALICE_TOKEN) as alice,
            alice.subscribe("orders.*") as orders,
        ):
            error, code = await in_thread(lambda: hello_and_close_code(served.url, token))
            if isinstance(token, str) or token is None:
                assert (error["code"], code) == ("auth_failed", 1008)
                assert served.broker.statistics().errors["auth_failed"] == 1
                failure = await failures.receive()
                assert failure.data["client"] == "attacker"
                assert failure.data["reason"]
                if token:  # no token material in what is told
                    assert token[:16] not in json.dumps(failure.data)
            else:  # not a string: the frame itself is bad
                assert (error["code"], code) == ("protocol", 4000)  # (a bad hello)
            await alice.publish("orders.new", 1)
            assert (await orders.receive()).data == 1


async def test_the_welcome_names_the_user_and_events_carry_it() -> None:
    """`welcome.user` is the authenticated user; every event a client publishes carries it in
    the user header, and a value the client forged there is replaced."""
    with trio.fail_after(TIMEOUT):
        async with secured() as (bus, served), bus.subscribe("orders.>") as seen:

            def run() -> dict[str, Any]:
                with connect(served.url, open_timeout=5) as ws:
                    ws.send(json.dumps({"type": "hello", "token": ALICE_TOKEN}))
                    welcome = json.loads(ws.recv(timeout=5))
                    event = {"topic": "orders.new", "headers": {USER_HEADER: "root"}}
                    ws.send(json.dumps({"type": "publish", "ref": 1, "event": event}))
                    assert json.loads(ws.recv(timeout=5))["type"] == "ack"
                    return welcome  # type: ignore[no-any-return]

            welcome = await in_thread(run)
            assert (welcome["type"], welcome["user"]) == ("welcome", "alice")
            event = await seen.receive()
            assert event.headers[USER_HEADER] == "alice"


@pytest.mark.parametrize("topic", ["orders.audit.x", "other", "orders"])
async def test_a_publish_outside_the_permissions_is_forbidden_and_not_routed(topic: str) -> None:
    """Outside `publish.allow`, or inside `publish.deny`: `forbidden`, not routed, not stored;
    the connection goes on."""
    with trio.fail_after(TIMEOUT):
        async with (
            secured() as (bus, served),
            bus.subscribe(">") as everything,
            open_client(served.url, token=ALICE_TOKEN) as alice,
        ):
            with pytest.raises(PermissionDenied):
                await alice.publish(topic, 1, ack=True)
            fine = await alice.publish("orders.new", 2, ack=True)
            got = await everything.receive()
            while got.topic.startswith("$"):  # ($sys events, in process)
                got = await everything.receive()
            assert (got.topic, got.id) == ("orders.new", fine.id)  # the refused one never came
            assert [e.topic for e in await bus.history(">")] == ["orders.new"]
            assert served.broker.statistics().errors["forbidden"] == 1


@pytest.mark.parametrize("pattern", ["orders.>", ">", "*.new", "orders.secret", "$sys.>"])
async def test_a_subscription_wider_than_allowed_is_forbidden(pattern: str) -> None:
    """A pattern no allow entry covers (wider, a leading wildcard, `$` topics) or inside a
    deny entry is refused with `forbidden`."""
    with trio.fail_after(TIMEOUT):
        async with secured() as (_, served), open_client(served.url, token=ALICE_TOKEN) as alice:
            with pytest.raises(PermissionDenied):
                async with alice.subscribe(pattern):
                    pass
            async with alice.subscribe("orders.new") as allowed:
                await alice.publish("orders.new", 1)
                assert (await allowed.receive()).data == 1


async def test_a_subscription_overlapping_a_deny_entry_never_sees_its_events() -> None:
    """`orders.*` overlaps the denied `orders.secret`: no live event, no retained value and
    no replayed event of it is delivered; the others are."""
    with trio.fail_after(TIMEOUT):
        async with secured() as (bus, served), open_client(served.url, token=ALICE_TOKEN) as alice:
            await bus.publish("orders.secret", "retained", retain=True)
            await bus.publish("orders.secret", "stored")
            await bus.publish("orders.open", "stored")
            async with alice.subscribe("orders.*", since=0) as sub:
                await bus.publish("orders.secret", "live")
                await bus.publish("orders.open", "live")
                got = [(await sub.receive()).data for _ in range(2)]
                assert got == ["stored", "live"]
                # The marker comes after everything published before it: nothing else came.
                await bus.publish("orders.open", "marker")
                assert (await sub.receive()).data == "marker"


async def test_a_queue_group_passes_over_a_member_denied_the_topic() -> None:
    """Alice and bob share a queue group on `orders.*`: each event goes to one of them, but
    `orders.secret`, denied to alice, always to bob; none is lost."""
    received: dict[str, list[str]] = {"alice": [], "bob": []}
    all_in = trio.Event()

    async def collect(name: str, sub: Subscription) -> None:
        async for event in sub:
            received[name].append(event.topic)
            if sum(map(len, received.values())) == 6:
                all_in.set()

    with trio.fail_after(TIMEOUT):
        async with (
            secured() as (bus, served),
            open_client(served.url, token=ALICE_TOKEN) as alice,
            open_client(served.url, token=BOB_TOKEN) as bob,
            alice.subscribe("orders.*", group="g") as alice_sub,
            bob.subscribe("orders.*", group="g") as bob_sub,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(collect, "alice", alice_sub)
            nursery.start_soon(collect, "bob", bob_sub)
            for topic in ["orders.secret", "orders.open"] * 3:
                await bus.publish(topic)
            await all_in.wait()
            nursery.cancel_scope.cancel()
    assert "orders.secret" not in received["alice"]
    assert received["bob"].count("orders.secret") == 3
    assert (
        sorted(received["alice"] + received["bob"]) == ["orders.open"] * 3 + ["orders.secret"] * 3
    )


async def test_history_of_a_pattern_overlapping_a_deny_entry_is_filtered() -> None:
    """`history` is read under the subscribe permissions: a pattern inside a deny entry is
    refused, and one overlapping it leaves the denied events out."""
    with trio.fail_after(TIMEOUT):
        async with secured() as (bus, served), open_client(served.url, token=ALICE_TOKEN) as alice:
            await bus.publish("orders.secret", 1)
            await bus.publish("orders.open", 2)
            await bus.publish("orders.secret", 3)
            await bus.publish("orders.open", 4)
            assert [e.data for e in await alice.history("orders.*")] == [2, 4]
            assert [e.data for e in await alice.history("orders.*", limit=1)] == [2]
            with pytest.raises(PermissionDenied):
                await alice.history("orders.secret")
            assert [e.data for e in await alice.history("orders.open")] == [2, 4]


async def test_history_resumes_past_the_events_it_left_out() -> None:
    """Past MAX_HISTORY_PAGES pages of denied events, an answer stops with `more` and a
    `resume` seq beyond its last event (here: none), so the next read does not scan them
    again; the client follows it to the events it may read."""
    denied = MAX_HISTORY_PAGES * MIN_HISTORY_PAGE + 5
    with trio.fail_after(TIMEOUT):
        async with secured() as (bus, served), open_client(served.url, token=ALICE_TOKEN) as alice:
            await bus.publish("orders.open", "first")
            for n in range(denied):
                await bus.publish("orders.secret", n)
            last = await bus.publish("orders.open", "last")

            def read() -> dict[str, Any]:
                with open_peer(served.url, hello=False) as peer:
                    peer.send({"type": "hello", "token": ALICE_TOKEN})
                    peer.expect("welcome")
                    peer.send({"type": "history", "ref": 1, "pattern": "orders.*", "limit": 2})
                    return peer.expect("history_result")

            page = await in_thread(read)
            assert [e["data"] for e in page["events"]] == ["first"]
            assert page["more"] is True
            assert page["resume"] == MAX_HISTORY_PAGES * MIN_HISTORY_PAGE  # the last seq read
            got = await alice.history("orders.*", limit=2)
            assert [(e.data, e.seq) for e in got] == [("first", 1), ("last", last.seq)]


async def test_full_permissions_change_nothing() -> None:
    """A user with every permission publishes and subscribes anywhere, `$sys` included."""
    with trio.fail_after(TIMEOUT):
        async with (
            secured() as (_, served),
            open_client(served.url, token=BOB_TOKEN) as bob,
            bob.subscribe(">") as everything,
            bob.subscribe("$sys.>"),
        ):
            assert bob.user == "bob"
            await bob.publish("anything.at.all", 1)
            assert (await everything.receive()).headers[USER_HEADER] == "bob"
