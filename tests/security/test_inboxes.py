"""Inboxes and replies on a real broker, attacked with an independent client.

Each connection gets its own unguessable inbox (``welcome.inbox``). Under permissions it may
subscribe there and nowhere else under ``_inbox``, a request's ``reply_to`` must lie there,
and a reply into another connection's inbox needs a request received from it and
``allow_responses``. The attacker is a `websockets` peer speaking the protocol by hand; the
honest parties use the package's own client.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import attrs
import pytest
import trio
import trio.testing
from conftest import TIMEOUT, RunningBroker, running_broker
from hypothesis import given
from hypothesis import strategies as st
from test_interop import Frame, Peer, in_thread, open_peer

from trio_realtime import Client, Event, PermissionDenied, open_bus, open_client
from trio_realtime.security import Permissions, ResponsePermission, StaticUsers, User, token_sha256
from trio_realtime.security._inboxes import ResponseGrants, in_inbox, new_connection_inbox
from trio_realtime.store import MemoryStore

REQUESTER: Final = "requester-token-0123456789"
SERVICE: Final = "service-token-0123456789"
MALLORY: Final = "mallory-token-0123456789"
AUDITOR: Final = "auditor-token-0123456789"

PERMISSIONS: Final[dict[str, dict[str, Any]]] = {
    # asks for prices, reads orders
    "requester": {"publish": {"allow": ["svc.>"]}, "subscribe": {"allow": ["orders.*"]}},
    # answers svc.price in its queue group: one reply per request, within 60 s
    "service": {
        "subscribe": {"allow": ["svc.price group=pricing"]},
        "allow_responses": {"max": 1, "expires": 60},
    },
    # may publish and subscribe anywhere, and answer what it receives
    "mallory": {
        "publish": {"allow": [">"]},
        "subscribe": {"allow": [">"]},
        "allow_responses": True,
    },
    # may watch svc.price, in its own queue group only
    "auditor": {"subscribe": {"allow": ["svc.price group=audit"]}},
}


def users() -> StaticUsers:
    tokens = {"requester": REQUESTER, "service": SERVICE, "mallory": MALLORY, "auditor": AUDITOR}
    return StaticUsers(
        [
            User(name, token_sha256(token), Permissions.from_dict(PERMISSIONS[name]))
            for name, token in tokens.items()
        ]
    )


@asynccontextmanager
async def secured() -> AsyncIterator[RunningBroker]:
    async with open_bus() as bus, running_broker(bus=bus, auth=users()) as served:
        yield served


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[RunningBroker, Client]]:
    """The secured broker, with the service answering svc.price in its queue group, and a
    client of the requester's."""
    async with (
        secured() as served,
        open_client(served.url, token=SERVICE) as service,
        service.serve("svc.price", answer, group="pricing"),
        open_client(served.url, token=REQUESTER) as requester,
    ):
        yield served, requester


@contextmanager
def peer_as(url: str, token: str) -> Iterator[tuple[Peer, Frame]]:
    """A `websockets` peer past the handshake with *token*; its welcome."""
    with open_peer(url, hello=False) as peer:
        peer.send({"type": "hello", "protocol": 1, "token": token, "client": "peer"})
        yield peer, peer.expect("welcome")


def answer(event: Event) -> dict[str, Any]:
    return {"price": 42, "for": event.data}


# ---------------------------------------------------------------------------------------------
# The inbox in the welcome


async def test_each_connection_gets_its_own_unguessable_inbox() -> None:
    """`welcome.inbox` is `_inbox.` and 32 hex digits, different for every connection, with
    or without authentication."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served:

            def run() -> list[str]:
                inboxes = []
                for _ in range(3):
                    with open_peer(served.url, hello=False) as peer:
                        peer.send({"type": "hello"})
                        inboxes.append(peer.expect("welcome")["inbox"])
                return inboxes

            inboxes = await in_thread(run)
    assert all(re.fullmatch(r"_inbox\.[0-9a-f]{32}", inbox) for inbox in inboxes)
    assert len(set(inboxes)) == 3


async def test_request_and_reply_between_restricted_users() -> None:
    """The requester's replies come to its own inbox; the service, in its queue group,
    answers with `allow_responses` and no publish permission at all."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (served, requester):
            for n in range(3):
                reply = await requester.request("svc.price", n, timeout=5)
                assert reply.data == {"price": 42, "for": n}
                assert reply.headers["rtuser"] == "service"
            assert served.broker.statistics().errors == {}


# ---------------------------------------------------------------------------------------------
# Attacks


@pytest.mark.parametrize(
    "pattern", ["_inbox.>", "_inbox.*", "_inbox.*.>", "_inbox", "INBOX", "_inbox.*.1"]
)
async def test_snooping_on_inboxes_is_refused(pattern: str) -> None:
    """Mallory, who may subscribe to `>`, may not subscribe under `_inbox` (but her own inbox;
    `INBOX` stands for the requester's); a neighbour's request gets its reply all the same."""
    with trio.fail_after(TIMEOUT):
        async with serving() as (served, requester):
            await requester.request("svc.price", 0, timeout=5)  # (the inbox exists)
            target = pattern.replace("INBOX", requester._replies.prefix)

            def attack() -> Frame:
                with peer_as(served.url, MALLORY) as (peer, welcome):
                    peer.send({"type": "subscribe", "id": 1, "pattern": target})
                    refusal = peer.expect("error")
                    own = f"{welcome['inbox']}.>"
                    peer.send({"type": "subscribe", "id": 2, "pattern": own})
                    peer.expect("subscribed")
                    return refusal

            refusal = await in_thread(attack)
            assert (refusal["code"], refusal["ref"]) == ("forbidden", 1)
            assert "only to its own inbox" in refusal["message"]
            assert (await requester.request("svc.price", 1, timeout=5)).data["for"] == 1


async def test_a_wide_subscription_sees_no_reply_and_no_sys_topic() -> None:
    """Mallory's `>` receives the requests she may read, but neither the replies (inbox
    topics) nor `$sys.connect` about the next connection."""
    with trio.fail_after(TIMEOUT):
        async with (
            secured() as served,
            open_client(served.url, token=SERVICE) as service,
            service.serve("svc.price", answer, group="pricing"),
        ):
            ready = trio.Event()
            done = trio.Event()

            def watch() -> list[Frame]:
                with peer_as(served.url, MALLORY) as (peer, _):
                    peer.subscribe(1, ">")
                    trio.from_thread.run_sync(ready.set)
                    trio.from_thread.run(done.wait)
                    peer.send({"type": "publish", "event": {"topic": "marker"}})
                    return peer.until(
                        lambda f: f["type"] == "event" and f["event"]["topic"] == "marker"
                    )

            async with trio.open_nursery() as nursery:
                seen: list[list[Frame]] = []

                async def run_watch() -> None:
                    seen.append(await in_thread(watch))

                nursery.start_soon(run_watch)
                await ready.wait()
                async with open_client(served.url, token=REQUESTER) as requester:
                    reply = await requester.request("svc.price", 7, timeout=5)
                    assert reply.data["for"] == 7
                done.set()
            topics = [f["event"]["topic"] for f in seen[0] if f["type"] == "event"]
            assert "svc.price" in topics  # the request: mallory may read svc.>
            assert not [t for t in topics if t.startswith(("_inbox.", "$"))], topics


async def test_a_reply_to_outside_the_own_inbox_is_refused() -> None:
    """A request whose `reply_to` is another connection's inbox, or any other topic, is
    `forbidden` and not routed; one into its own inbox is accepted."""
    with trio.fail_after(TIMEOUT):
        async with secured() as served:

            def run() -> list[Frame]:
                with peer_as(served.url, MALLORY) as (peer, welcome):
                    answers = []
                    for ref, reply_to in enumerate(
                        [new_connection_inbox() + ".1", "orders.x", f"{welcome['inbox']}x.1"],
                        start=1,
                    ):
                        event = {"topic": "svc.other", "reply_to": reply_to}
                        peer.send({"type": "publish", "ref": ref, "event": event})
                        answers.append(peer.receive())
                    own = {"topic": "svc.other", "reply_to": f"{welcome['inbox']}.1"}
                    peer.send({"type": "subscribe", "id": 9, "pattern": "svc.other"})
                    peer.expect("subscribed")
                    peer.send({"type": "publish", "ref": 4, "event": own})
                    answers += peer.until(lambda f: f["type"] == "ack")
                    return answers

            answers = await in_thread(run)
    assert [(a["type"], a.get("code")) for a in answers[:3]] == [("error", "forbidden")] * 3
    assert "is not in this connection's inbox" in answers[0]["message"]
    assert answers[-1]["type"] == "ack"


@attrs.define
class Asked:
    """A request on its way: the requester waits for its reply in *nursery* (collected in
    *replies*), and the service received it but has not answered."""

    served: RunningBroker
    requester: Client
    service: Client
    request: Event
    reply_to: str
    nursery: trio.Nursery
    replies: list[Event]


@asynccontextmanager
async def asked(timeout: float = 5) -> AsyncIterator[Asked]:
    """The requester asks `svc.price`; the service's plain subscription in its queue group
    receives the request. Leaving the block waits for the requester's answer (cancel
    ``nursery`` not to)."""
    async with (
        secured() as served,
        open_client(served.url, token=REQUESTER) as requester,
        open_client(served.url, token=SERVICE) as service,
        service.subscribe("svc.price", group="pricing") as requests,
        trio.open_nursery() as nursery,
    ):
        replies: list[Event] = []

        async def ask() -> None:
            replies.append(await requester.request("svc.price", 1, timeout=timeout))

        nursery.start_soon(ask)
        request = await requests.receive()
        assert request.reply_to is not None
        yield Asked(served, requester, service, request, request.reply_to, nursery, replies)


async def test_a_forged_reply_into_another_inbox_is_refused() -> None:
    """Mallory, with `allow_responses`, publishes into the requester's inbox without having
    received its request: `forbidden`, and the requester gets the service's reply only."""
    with trio.fail_after(TIMEOUT):
        async with asked() as it:
            reply_to = it.reply_to

            def forge() -> Frame:
                with peer_as(it.served.url, MALLORY) as (peer, _):
                    event = {"topic": reply_to, "data": {"price": 0}}
                    peer.send({"type": "publish", "ref": 1, "event": event})
                    return peer.receive()

            refusal = await in_thread(forge)
            assert (refusal["type"], refusal["code"]) == ("error", "forbidden")
            assert "only replies to a request this connection received" in refusal["message"]
            await it.service.publish(reply_to, {"price": 42})
        assert [r.data for r in it.replies] == [{"price": 42}]
        assert it.served.broker.statistics().errors == {"forbidden": 1}


async def test_a_second_reply_beyond_max_is_refused() -> None:
    """The service may answer each request it received once (`max = 1`): the second reply to
    the same `reply_to` is `forbidden`."""
    with trio.fail_after(TIMEOUT):
        async with asked() as it:
            assert in_inbox(it.reply_to, it.requester._replies.prefix)
            await it.service.publish(it.reply_to, "first", ack=True)
            with pytest.raises(PermissionDenied, match="1 per request within 60 s"):
                await it.service.publish(it.reply_to, "second", ack=True)
        assert [r.data for r in it.replies] == ["first"]


async def test_a_reply_after_expires_is_refused(loopback_clock: trio.testing.MockClock) -> None:
    """A reply more than `expires` seconds after the request arrived is `forbidden`."""
    with trio.fail_after(TIMEOUT + 61):  # (virtual time)
        async with asked(timeout=120) as it:
            await trio.sleep(61)
            with pytest.raises(PermissionDenied):
                await it.service.publish(it.reply_to, "late", ack=True)
            it.nursery.cancel_scope.cancel()


async def test_a_request_delivered_again_gives_no_new_leave_to_reply() -> None:
    """Only a request delivered as it is routed gives leave to reply: the same request again,
    as a retained value or from a `since` replay, does not renew the `max` replies (nor
    the time)."""
    watcher = Permissions.from_dict(
        {"subscribe": {"allow": ["svc.price"]}, "allow_responses": {"max": 1, "expires": 60}}
    )
    auth = StaticUsers([User("watcher", token_sha256(SERVICE), watcher)])
    reply_to = "_inbox.requester.1"
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus(store=MemoryStore()) as bus,
            running_broker(bus=bus, auth=auth) as served,
            open_client(served.url, token=SERVICE) as service,
            bus.subscribe("_inbox.requester.>") as replies,  # (in process: trusted)
        ):
            async with service.subscribe("svc.price") as live:
                request = Event(topic="svc.price", data=1, reply_to=reply_to)
                await bus.publish_event(request, retain=True)
                assert (await live.receive()).id == request.id
                await service.publish(reply_to, "first", ack=True)
                with pytest.raises(PermissionDenied):
                    await service.publish(reply_to, "second", ack=True)
            for since in (None, 0):
                async with service.subscribe("svc.price", since=since) as again:
                    assert (await again.receive()).id == request.id
                    with pytest.raises(PermissionDenied):
                        await service.publish(reply_to, f"again since={since}", ack=True)
            await bus.publish("_inbox.requester.marker")
            got = [(await replies.receive()).data for _ in range(2)]
            assert got == ["first", None]  # (then the marker)


@pytest.mark.parametrize("group", [None, "pricing"])
async def test_joining_a_service_queue_group_is_refused(group: str | None) -> None:
    """The auditor may watch `svc.price` in its own group only: neither without a group (every
    request) nor in the service's group (taking requests from it); the requester not at all.
    The service goes on answering."""
    with trio.fail_after(TIMEOUT):
        async with (
            secured() as served,
            open_client(served.url, token=REQUESTER) as requester,
            open_client(served.url, token=AUDITOR) as auditor,
            open_client(served.url, token=SERVICE) as service,
            service.serve("svc.price", answer, group="pricing"),
        ):
            for who in (requester, auditor):
                with pytest.raises(PermissionDenied, match="may not subscribe"):
                    async with who.subscribe("svc.price", group=group):
                        pass
            async with auditor.subscribe("svc.price", group="audit") as watched:
                assert (await requester.request("svc.price", 3, timeout=5)).data["for"] == 3
                assert (await watched.receive()).data == 3


# ---------------------------------------------------------------------------------------------
# ResponseGrants


def test_grants_allow_max_replies_until_they_expire() -> None:
    grants = ResponseGrants(ResponsePermission(max=2, expires=10))
    assert not grants.take("_inbox.a.1", 0)
    grants.grant("_inbox.a.1", 0)
    assert grants.allows("_inbox.a.1", 10)
    assert grants.take("_inbox.a.1", 1)
    assert grants.take("_inbox.a.1", 2)
    assert not grants.take("_inbox.a.1", 3)
    grants.grant("_inbox.a.2", 0)
    assert not grants.allows("_inbox.a.2", 10.5)
    assert not grants.take("_inbox.a.2", 10.5)
    assert len(grants) == 0


def test_grants_forget_expired_then_the_biggest_inbox_oldest_when_full() -> None:
    grants = ResponseGrants(ResponsePermission(max=1, expires=10), limit=4, per_inbox=3)
    assert not grants.grant("_inbox.a.0", 0)
    assert not grants.grant("_inbox.a.1", 1)
    assert not grants.grant("_inbox.b.0", 2)
    assert not grants.grant("_inbox.c.0", 3)
    assert not grants.grant("_inbox.c.1", 10.5)  # a.0 expired (at 10): room without dropping
    assert grants.grant("_inbox.d.0", 11)  # full of live ones: c (the most) loses its oldest
    assert grants.dropped == 1
    assert not grants.allows("_inbox.c.0", 11)
    alive = ["_inbox.a.1", "_inbox.b.0", "_inbox.c.1", "_inbox.d.0"]
    assert all(grants.allows(topic, 11) for topic in alive)
    assert len(grants) == 4


def test_one_requester_cannot_crowd_out_the_others() -> None:
    """Past its per-inbox share, a requester's new requests push out its own old ones only."""
    grants = ResponseGrants(ResponsePermission(max=1, expires=60), limit=10, per_inbox=3)
    assert not grants.grant("_inbox.victim.1", 0)
    for n in range(100):
        grants.grant(f"_inbox.flood.{n}", 1)
    assert grants.allows("_inbox.victim.1", 2)
    assert [n for n in range(100) if grants.allows(f"_inbox.flood.{n}", 2)] == [97, 98, 99]
    assert len(grants) == 4
    assert grants.dropped == 97


def test_only_inbox_topics_are_granted() -> None:
    """A reply_to outside _inbox needs no leave (the publish rules decide): nothing kept."""
    grants = ResponseGrants(ResponsePermission())
    grants.grant("orders.replies", 0)
    assert len(grants) == 0
    assert not grants.allows("orders.replies", 0)


def test_granting_again_renews() -> None:
    grants = ResponseGrants(ResponsePermission(max=1, expires=10))
    grants.grant("_inbox.a.1", 0)
    assert grants.take("_inbox.a.1", 1)
    grants.grant("_inbox.a.1", 5)
    assert grants.allows("_inbox.a.1", 14)
    assert grants.take("_inbox.a.1", 14)


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["grant", "take", "allows"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 5),
        st.floats(0, 4),
    ),
    max_size=60,
)


@given(OPERATIONS)
def test_grants_keep_their_bounds_and_answer_as_a_plain_model(
    operations: list[tuple[str, str, int, float]],
) -> None:
    """Whatever the sequence: never more than `limit` grants, nor `per_inbox` per inbox; and
    while nothing is dropped, every answer is that of a plain dict of [left, deadline]."""
    grants = ResponseGrants(ResponsePermission(max=2, expires=5), limit=8, per_inbox=4)
    model: dict[str, list[float]] = {}
    now = 0.0
    for operation, inbox, n, step in operations:
        now += step
        topic = f"_inbox.{inbox}.{n}"
        if operation == "grant":
            grants.grant(topic, now)
            model[topic] = [2, now + 5]
        elif grants.dropped == 0:
            grant = model.get(topic)
            expected = grant is not None and now <= grant[1] and grant[0] > 0
            if operation == "allows":
                assert grants.allows(topic, now) == expected
            else:
                assert grants.take(topic, now) == expected
                if expected:
                    model[topic][0] -= 1
        assert len(grants) <= 8
        for prefix in "abcd":
            assert sum(grants.allows(f"_inbox.{prefix}.{k}", -1) for k in range(6)) <= 4


@pytest.mark.parametrize(
    ("topic", "inbox", "inside"),
    [
        ("_inbox.a", "_inbox.a", True),
        ("_inbox.a.1", "_inbox.a", True),
        ("_inbox.ab", "_inbox.a", False),
        ("_inbox.b.1", "_inbox.a", False),
        ("_inbox", "_inbox.a", False),
    ],
)
def test_in_inbox(topic: str, inbox: str, inside: bool) -> None:
    assert in_inbox(topic, inbox) is inside
