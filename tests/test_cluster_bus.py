"""The bus's side of a backplane (bus/_remote.py): interest, forwarding, remote delivery.

A recording backplane stands in for the NATS one here; tests/test_cluster.py runs the real one.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest
import trio

from trio_realtime import Event, NoResponders, RequestFailed, open_bus
from trio_realtime.bus._requests import REPLY_CODE_HEADER
from trio_realtime.store import MemoryStore


@attrs.define
class Forwarded:
    """One call of :meth:`RecordingRemote.forward`."""

    topic: str
    served: list[str]
    routed: bool
    retain: bool


class RecordingRemote:
    """A backplane that records what the bus tells it."""

    def __init__(self, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self.interest: dict[tuple[str, str | None], int] = {}
        self.forwarded: list[Forwarded] = []
        self.cleared: list[str] = []
        self.shared_retained: list[Event] = []

    def interest_added(self, pattern: str, group: str | None) -> None:
        key = (pattern, group)
        self.interest[key] = self.interest.get(key, 0) + 1

    def interest_removed(self, pattern: str, group: str | None) -> None:
        key = (pattern, group)
        self.interest[key] -= 1
        if not self.interest[key]:
            del self.interest[key]

    def forward(self, event: Event, *, served: Sequence[str], routed: bool, retain: bool) -> None:
        self.forwarded.append(Forwarded(event.topic, list(served), routed, retain))

    def share_retained(self, event: Event) -> None:
        self.shared_retained.append(event)

    def clear_retained(self, topic: str) -> None:
        self.cleared.append(topic)


async def test_interest_follows_the_sinks() -> None:
    """The backplane learns the sinks there are when it attaches, then each added and
    removed, with their groups; once detached it hears nothing more."""
    remote = RecordingRemote()
    async with open_bus() as bus, bus.subscribe("a.>"):
        bus.attach_remote(remote)
        assert remote.interest == {("a.>", None): 1}
        with pytest.raises(RuntimeError, match="attached to this bus already"):
            bus.attach_remote(RecordingRemote())
        async with bus.subscribe("a.>"), bus.subscribe("b.*", group="g"):
            assert remote.interest == {("a.>", None): 2, ("b.*", "g"): 1}
        assert remote.interest == {("a.>", None): 1}
        bus.detach_remote(RecordingRemote())  # not the attached one: no effect
        bus.detach_remote(remote)
        async with bus.subscribe("c"):
            pass
        assert remote.interest == {("a.>", None): 1}


async def test_local_publishes_are_forwarded_with_the_groups_served() -> None:
    """Every publish is forwarded once, saying which queue groups a local member took and
    whether anything here took it; retained publishes say so."""
    remote = RecordingRemote()
    async with (
        open_bus() as bus,
        bus.subscribe("a.>", group="g1"),
        bus.subscribe("a.b", group="g2"),
        bus.subscribe("a.*"),
    ):
        bus.attach_remote(remote)
        await bus.publish("a.b", 1, retain=True)
        await bus.publish("a.c.d", 2)
        await bus.publish("z", 3)
    assert remote.forwarded == [
        Forwarded("a.b", ["g1", "g2"], True, True),
        Forwarded("a.c.d", ["g1"], True, False),
        Forwarded("z", [], False, False),
    ]


async def test_persisted_events_are_forwarded_once_stored() -> None:
    """With a store of its own, a node forwards its persisted events once they are stored."""
    remote = RecordingRemote()
    async with open_bus(store=MemoryStore()) as bus:
        bus.attach_remote(remote)
        event = await bus.publish("p.q", 1, retain=True)
        assert event.seq == 1
    assert remote.forwarded == [Forwarded("p.q", [], False, True)]


async def test_remote_events_reach_local_sinks_only() -> None:
    """route_remote delivers to the sinks without a group, or to one member of the named
    group; route_local to both; neither forwards, stores, retains or counts a publish."""
    remote = RecordingRemote()
    async with (
        open_bus(store=MemoryStore()) as bus,
        bus.subscribe("r.>") as single,
        bus.subscribe("r.>", group="g", max_buffer_size=10) as m1,
        bus.subscribe("r.*", group="g", max_buffer_size=10) as m2,
    ):
        bus.attach_remote(remote)
        assert await bus.route_remote(Event(topic="r.x", data="singles")) == 1
        assert await bus.route_remote(Event(topic="r.x", data="group"), group="g") == 1
        assert await bus.route_remote(Event(topic="r.x", data="nobody"), group="other") == 0
        await bus.route_local(Event(topic="r.x", data="all"))
        assert [single.receive_nowait().data for _ in range(2)] == ["singles", "all"]
        got = [m.receive_nowait().data for m in (m1, m2) for _ in range(m.buffered)]
        assert sorted(got) == ["all", "group"]
        assert remote.forwarded == []
        stats = bus.statistics()
        assert (stats.published, stats.stored, stats.retained) == (0, 0, 0)
        assert stats.delivered == 4
    assert await bus.route_remote(Event(topic="r.x")) == 0  # closed: nothing takes it


async def test_remote_delivery_waits_for_room() -> None:
    """A full ``block`` subscription makes remote delivery wait, as a local publish does."""
    async with open_bus() as bus, bus.subscribe("w", max_buffer_size=1) as sub:
        await bus.route_remote(Event(topic="w", data=1))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bus.route_remote, Event(topic="w", data=2))
            await trio.testing.wait_all_tasks_blocked()
            assert sub.buffered == 1
            assert sub.receive_nowait().data == 1
        assert sub.receive_nowait().data == 2


async def test_unrouted_request_goes_to_a_reachable_backplane() -> None:
    """A request nothing here takes is forwarded (not routed) while the backplane can send
    it on; NoResponders at once when it cannot, as on a lone bus."""
    remote = RecordingRemote()
    async with open_bus() as bus:
        bus.attach_remote(remote)
        request = Event(topic="svc.far", reply_to="_inbox.x.1")
        await bus.publish_event(request)
        assert remote.forwarded == [Forwarded("svc.far", [], False, False)]
        remote.reachable = False
        with pytest.raises(NoResponders):
            await bus.publish_event(request)
        assert len(remote.forwarded) == 1


async def test_no_responders_reply_raises_no_responders() -> None:
    """A reply made by the backplane with error_code no_responders makes the request raise
    NoResponders; a plain error reply stays RequestFailed. Remote replies are not forwarded."""
    remote = RecordingRemote()
    async with open_bus() as bus:
        bus.attach_remote(remote)
        async with bus.subscribe("svc.>") as requests:

            async def relay(headers: dict[str, str]) -> None:
                request = await requests.receive()
                assert request.reply_to is not None
                await bus.route_remote(Event(topic=request.reply_to, headers=headers))

            for code, raised in (("no_responders", NoResponders), (None, RequestFailed)):
                headers = {"error": "no responders for it"}
                if code is not None:
                    headers[REPLY_CODE_HEADER] = code
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(relay, headers)
                    with pytest.raises(raised):
                        await bus.request("svc.far", timeout=5)
        assert [f.topic for f in remote.forwarded] == ["svc.far", "svc.far"]


async def test_remote_retained_values() -> None:
    """A backplane keeps other nodes' retained values; clearing one here tells it."""
    remote = RecordingRemote()
    async with open_bus() as bus:
        bus.attach_remote(remote)
        bus.set_remote_retained(Event(topic="t.a", data=1), "t.a")
        async with bus.subscribe("t.>") as sub:
            assert sub.receive_nowait().data == 1
        bus.set_remote_retained(None, "t.a")
        assert bus.retained() == []
        bus.set_remote_retained(Event(topic="t.b", data=2), "t.b")
        assert bus.clear_retained("t.b")
        assert remote.cleared == ["t.b"]
        assert remote.forwarded == []
