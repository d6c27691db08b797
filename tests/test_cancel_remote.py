"""Cancellable requests across a broker: a requester that gives up cancels the handler of
another client, and the broker checks that a connection cancels only its own requests.

A real broker on loopback, Python clients, and raw peers that speak the protocol by hand (to
see the ``cancel`` frames, and to send hostile ones). Every test runs on the mock clock
(``loopback_clock``).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from conftest import TIMEOUT, running_broker
from test_cancel import Stalled

from trio_realtime import Event, open_bus, open_client
from trio_realtime._transport import WebSocketTransport
from trio_realtime._transport_client import open_transport
from trio_realtime.broker._cancels import DeliveredRequests
from trio_realtime.broker._limits import CANCEL_BURST
from trio_realtime.bus._requests import TIMEOUT_HEADER
from trio_realtime.security import Permissions, StaticUsers, User, token_sha256

Frame = dict[str, Any]


class RawPeer:
    """A peer that speaks the protocol by hand over trio-websocket (batches unpacked, pings
    answered)."""

    def __init__(self, ws: WebSocketTransport, welcome: Frame | None = None) -> None:
        self.ws = ws
        self.welcome: Frame = welcome or {}
        self._frames: deque[Frame] = deque()

    async def send(self, frames: Frame | list[Frame]) -> None:
        await self.ws.send(json.dumps(frames))

    async def receive(self) -> Frame:
        while True:
            if not self._frames:
                message = json.loads(await self.ws.receive())
                self._frames.extend(message if isinstance(message, list) else [message])
            frame = self._frames.popleft()
            if frame["type"] != "ping":
                return frame
            await self.send({"type": "pong"})

    async def expect(self, kind: str) -> Frame:
        frame = await self.receive()
        assert frame["type"] == kind, frame
        return frame

    async def before_pong(self) -> list[Frame]:
        """Send ``ping``: the frames that came before its ``pong``."""
        await self.send({"type": "ping"})
        frames = []
        while (frame := await self.receive())["type"] != "pong":
            frames.append(frame)
        return frames

    @property
    def inbox(self) -> str:
        inbox = self.welcome["inbox"]
        assert isinstance(inbox, str)
        return inbox


@asynccontextmanager
async def raw_peer(url: str, token: str | None = None) -> AsyncIterator[RawPeer]:
    async with open_transport(url) as ws:
        peer = RawPeer(ws)
        await peer.send({"type": "hello", "protocol": 1, "client": "raw", "token": token})
        peer.welcome = await peer.expect("welcome")
        yield peer


async def subscribe(peer: RawPeer, sub_id: int, pattern: str, **fields: Any) -> None:
    await peer.send({"type": "subscribe", "id": sub_id, "pattern": pattern, **fields})
    assert (await peer.expect("subscribed"))["id"] == sub_id


def cancel_of(request: Frame) -> Frame:
    """The ``cancel`` frame for the request event *request* (a JSON object)."""
    return {
        "type": "cancel",
        "id": request["id"],
        "topic": request["topic"],
        "reply_to": request["reply_to"],
    }


async def test_a_cancelled_request_cancels_the_handler_in_another_client(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """The requester's cancel scope fires while the responder's handler (in another client,
    across the broker) awaits: the handler sees Cancelled and finishes, its reply is never
    sent, and the responder counts it."""
    handler = Stalled()
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as responder,
            open_client(served.url) as requester,
            responder.serve("svc.slow", handler),
        ):
            start = trio.current_time()
            with trio.move_on_after(1):
                await requester.request("svc.slow", "q", timeout=30)
            await handler.done.wait()
            assert trio.current_time() - start == pytest.approx(1.0, abs=0.1)
            assert [e.id for e in handler.started] == handler.cancelled == handler.finished
            assert handler.started[0].headers[TIMEOUT_HEADER] == "30000"
            stats = responder.statistics()
            assert (stats.requests_cancelled, stats.requests_expired) == (1, 0)
            # The requester goes on; nothing came back for the cancelled request.
            async with responder.serve("svc.echo", lambda event: event.data):
                assert (await requester.request("svc.echo", 5)).data == 5
            assert requester.statistics().late_replies == 0


async def test_a_client_cancels_a_handler_serving_on_the_brokers_own_bus(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A responder in the broker's process (serving on its bus) is cancelled by a remote
    requester's cancel, as a client's is."""
    handler = Stalled()
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            bus.serve("svc.inside", handler),
            running_broker(bus=bus) as served,
            open_client(served.url) as requester,
        ):
            with trio.move_on_after(1):
                await requester.request("svc.inside", timeout=30)
            await handler.done.wait()
            assert [e.id for e in handler.started] == handler.cancelled
            assert bus.statistics().requests_cancelled == 1


async def test_a_timeout_sends_a_cancel_and_the_late_reply_is_dropped(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A request that times out: the responder (a raw peer) receives ``cancel`` naming it;
    the reply it sends all the same reaches no request, and the requester counts it."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as requester,
            raw_peer(served.url) as responder,
        ):
            await subscribe(responder, 1, "svc.raw")

            async def ask() -> None:
                with pytest.raises(trio.TooSlowError):
                    await requester.request("svc.raw", 5, timeout=1.5)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                request = (await responder.expect("event"))["event"]
                assert request["headers"][TIMEOUT_HEADER] == "1500"
                assert await responder.expect("cancel") == cancel_of(request)
            # Too late: the reply is routed, and dropped by the requester.
            late = {"topic": request["reply_to"], "data": "late"}
            await responder.send({"type": "publish", "ref": 2, "event": late})
            assert (await responder.expect("ack"))["ref"] == 2
            # (A second request, answered in time, orders the two replies.)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(responder_answers, responder)
                assert (await requester.request("svc.raw", 6)).data == "on time"
            assert requester.statistics().late_replies == 1


async def responder_answers(responder: RawPeer) -> None:
    """Answer the next request *responder* receives with ``"on time"``."""
    request = (await responder.expect("event"))["event"]
    reply = {"topic": request["reply_to"], "data": "on time"}
    await responder.send({"type": "publish", "event": reply})


async def test_a_remote_request_past_its_deadline_is_not_started(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A request that arrives with no time left (``rttimeout`` 0) is not started by the
    responder's serve block; the next one is answered."""
    seen: list[Any] = []

    def echo(event: Event) -> Any:
        seen.append(event.data)
        return event.data

    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as responder,
            responder.serve("svc.deadline", echo),
            raw_peer(served.url) as requester,
        ):
            inbox = requester.inbox
            await subscribe(requester, 1, f"{inbox}.>")
            for n, timeout in ((1, "0"), (2, "5000")):
                event = {
                    "topic": "svc.deadline",
                    "data": n,
                    "reply_to": f"{inbox}.{n}",
                    "headers": {TIMEOUT_HEADER: timeout},
                }
                await requester.send({"type": "publish", "ref": n, "event": event})
                assert (await requester.expect("ack"))["ref"] == n
            reply = (await requester.expect("event"))["event"]
            assert (reply["topic"], reply["data"]) == (f"{inbox}.2", 2)
            assert seen == [2]
            assert responder.statistics().requests_expired == 1


async def test_the_cancel_reaches_the_queue_group_member_that_has_the_request(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """Two members of a queue group (a client and a raw peer) get a request each; both are
    cancelled: each member is told of its own request only."""
    handler = Stalled()
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as member,
            member.serve("svc.q", handler, group="workers"),
            raw_peer(served.url) as other,
            open_client(served.url) as requester,
        ):
            await subscribe(other, 1, "svc.q", group="workers")

            async def ask(n: int) -> None:
                with trio.move_on_after(1):
                    await requester.request("svc.q", n, timeout=30)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, 1)
                nursery.start_soon(ask, 2)
                request = (await other.expect("event"))["event"]
                await handler.running.wait()
                assert {request["data"], handler.started[0].data} == {1, 2}
                assert await other.expect("cancel") == cancel_of(request)
            await handler.done.wait()
            assert handler.cancelled == [handler.started[0].id]
            assert await other.before_pong() == []  # no cancel for the member's request
            assert member.statistics().requests_cancelled == 1


async def test_a_cancel_for_someone_elses_request_is_refused(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A connection that saw another's request (it subscribes to the topic) cannot cancel
    it: with the request's reply_to it gets ``forbidden``; with a reply_to in its own inbox
    it names no request of its own, and nothing happens. The handler goes on and replies."""
    handler = Stalled(reply="done")
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as responder,
            responder.serve("svc.victim", handler),
            open_client(served.url) as victim,
            raw_peer(served.url) as attacker,
        ):
            await subscribe(attacker, 1, "svc.>")
            async with trio.open_nursery() as nursery:
                replies: list[Event] = []

                async def ask() -> None:
                    replies.append(await victim.request("svc.victim", 1, timeout=30))

                nursery.start_soon(ask)
                request = (await attacker.expect("event"))["event"]
                await handler.running.wait()
                await attacker.send(cancel_of(request))
                error = await attacker.expect("error")
                assert (error["code"], error["ref"]) == ("forbidden", None)
                assert "own requests" in error["message"]
                spoofed = {**cancel_of(request), "reply_to": f"{attacker.inbox}.1"}
                await attacker.send(spoofed)
                assert await attacker.before_pong() == []  # no request of its own: ignored
                assert handler.cancelled == []
                handler.release.set()
            assert [reply.data for reply in replies] == ["done"]
            assert responder.statistics().requests_cancelled == 0
            assert served.broker.statistics().errors["forbidden"] == 1


async def test_a_flood_of_cancels_is_limited_and_the_neighbours_are_served(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A connection sends more cancels at once than its burst allows: the rest are refused
    ``rate_limited`` (counted), and requests between other clients go on meanwhile."""
    extra = 50
    handler = Stalled(reply="served")
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as responder,
            responder.serve("svc.work", handler),
            open_client(served.url) as neighbour,
            raw_peer(served.url) as flooder,
        ):
            async with trio.open_nursery() as nursery:
                replies: list[Event] = []

                async def ask() -> None:
                    replies.append(await neighbour.request("svc.work", 1, timeout=30))

                nursery.start_soon(ask)
                await handler.running.wait()
                flood = [
                    {
                        "type": "cancel",
                        "id": f"id-{i}",
                        "topic": "svc.work",
                        "reply_to": f"{flooder.inbox}.{i}",
                    }
                    for i in range(CANCEL_BURST + extra)
                ]
                await flooder.send(flood)
                answers = await flooder.before_pong()
                assert {(a["type"], a["code"]) for a in answers} == {("error", "rate_limited")}
                assert len(answers) == extra
                handler.release.set()
            assert [reply.data for reply in replies] == ["served"]
            assert handler.cancelled == []
            stats = served.broker.statistics()
            assert stats.limits["cancel_rate"] == extra
            assert stats.errors["rate_limited"] == extra


async def test_hostile_cancel_frames_are_answered_and_the_connection_goes_on(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """A cancel with a field of the wrong type is ``bad_frame``; one with a bad topic
    ``invalid_topic``; one on a ``$`` topic ``forbidden``; one for a request nobody has gets
    no answer. None of them ends the connection."""
    with trio.fail_after(TIMEOUT):
        async with running_broker() as served, raw_peer(served.url) as peer:
            own = f"{peer.inbox}.1"
            cases: list[tuple[Frame, str | None]] = [
                ({"type": "cancel", "id": 7, "topic": "svc.x", "reply_to": own}, "bad_frame"),
                ({"type": "cancel", "id": "a", "topic": "svc.x"}, "bad_frame"),
                (
                    {"type": "cancel", "id": "a", "topic": "svc..x", "reply_to": own},
                    "invalid_topic",
                ),
                (
                    {"type": "cancel", "id": "a", "topic": "svc.x", "reply_to": "_in*"},
                    "invalid_topic",
                ),
                ({"type": "cancel", "id": "a", "topic": "$sys.x", "reply_to": own}, "forbidden"),
                ({"type": "cancel", "id": "unknown", "topic": "svc.x", "reply_to": own}, None),
            ]
            for frame, code in cases:
                await peer.send(frame)
                answers = await peer.before_pong()
                assert [a.get("code") for a in answers] == ([] if code is None else [code]), frame
            await subscribe(peer, 1, "still.here")


def restricted_users() -> StaticUsers:
    """A requester that may publish on ``svc.>``, a service that answers there, and another
    user that may publish on ``news.>`` only."""
    rules: dict[str, tuple[str, dict[str, Any]]] = {
        "requester": ("requester-token-0123456789", {"publish": {"allow": ["svc.>"]}}),
        "service": (
            "service-token-0123456789",
            {"subscribe": {"allow": ["svc.>"]}, "allow_responses": True},
        ),
        "other": ("other-token-0123456789", {"publish": {"allow": ["news.>"]}}),
    }
    return StaticUsers(
        [
            User(name, token_sha256(token), Permissions.from_dict(permissions))
            for name, (token, permissions) in rules.items()
        ]
    )


async def test_under_permissions_a_cancel_goes_only_where_the_user_may_publish(
    loopback_clock: trio.testing.MockClock,
) -> None:
    """With restricted users, a requester's cancel still cancels the service's handler; a
    cancel on a topic the user may not publish to is ``forbidden``, even for a reply_to in
    its own inbox."""
    handler = Stalled()
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(auth=restricted_users()) as served,
            open_client(served.url, token="service-token-0123456789") as service,
            service.serve("svc.slow", handler),
            open_client(served.url, token="requester-token-0123456789") as requester,
            raw_peer(served.url, "other-token-0123456789") as other,
        ):
            with trio.move_on_after(1):
                await requester.request("svc.slow", timeout=30)
            await handler.done.wait()
            assert len(handler.cancelled) == 1
            assert service.statistics().requests_cancelled == 1
            await other.send(
                {"type": "cancel", "id": "a", "topic": "svc.slow", "reply_to": f"{other.inbox}.1"}
            )
            [error] = await other.before_pong()
            assert error["code"] == "forbidden"
            assert "may not publish to 'svc.slow'" in error["message"]


def test_the_requests_a_connection_was_delivered_are_bounded() -> None:
    """Per connection, the broker keeps the requests delivered and not answered, by
    reply_to, at most its limit (the oldest goes); a cancel takes one once, and a reply
    forgets it."""
    delivered = DeliveredRequests(2)
    assert not delivered.add("a", "_inbox.r.1")
    assert not delivered.add("b", "_inbox.r.2")
    assert delivered.add("c", "_inbox.r.3")  # forgot a
    assert not delivered.take("a", "_inbox.r.1")
    assert not delivered.take("x", "_inbox.r.3")  # the same reply_to, another request
    assert delivered.take("c", "_inbox.r.3")
    assert not delivered.take("c", "_inbox.r.3")
    delivered.answered("_inbox.r.2")
    assert len(delivered) == 0
    with pytest.raises(ValueError, match="at least 1"):
        DeliveredRequests(0)
