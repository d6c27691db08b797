"""A remote ``block`` subscription never stalls its connection (issue 8).

A full ``block`` subscription on a client takes events past its buffer, up to as many again;
beyond that it falls behind: stored events come back from the store once its consumer made
room (in order, exactly once), events that are not stored are counted as missed. Meanwhile
the connection's other subscriptions, replies and acknowledgements go on.
"""

from __future__ import annotations

import trio
from conftest import running_broker

from trio_realtime import Client, Event, Subscription, open_client
from trio_realtime.store import MemoryStore

TIMEOUT = 10
SLOW = 50  # events published to the slow subscription (its buffer holds 2)


def drain(sub: Subscription) -> list[Event]:
    """Every event buffered in *sub* now."""
    events = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except trio.WouldBlock:
            return events


async def flood_then_check_the_rest_goes_on(publisher: Client, client: Client) -> None:
    """Publish SLOW events to the slow subscription of *client*, then check that its other
    subscription, a request and an acknowledged publish are all served."""
    async with (
        client.subscribe("fast.x") as fast,
        publisher.serve("rpc.add", lambda event: sum(event.data)),
    ):
        for i in range(SLOW):
            await publisher.publish("slow.x", i)
        await publisher.publish("fast.x", "after the flood", ack=True)
        # (1) another subscription of the same connection receives
        assert (await fast.receive()).data == "after the flood"
        # (2) a request gets its reply
        reply = await client.request("rpc.add", [2, 3], timeout=TIMEOUT)
        assert reply.data == 5
        # (3) an acknowledged publish is acknowledged
        acked = await client.publish("other.x", "acked", ack=True)
        assert acked.topic == "other.x"


async def test_without_a_store_a_full_block_subscription_keeps_twice_its_buffer() -> None:
    """A slow block subscription stalls nothing else; it keeps what fit (twice its buffer)
    and counts the rest in missed."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url, name="publisher") as publisher,
            open_client(served.url, name="slow") as client,
            client.subscribe("slow.x", max_buffer_size=2, overflow="block") as slow,
        ):
            await flood_then_check_the_rest_goes_on(publisher, client)
            kept = [event.data for event in drain(slow)]
            assert kept == list(range(4))  # the buffer, and as many again
            assert slow.missed == SLOW - len(kept)
            assert client.statistics().reconnects == 0
            # once it has room, it takes events again
            await publisher.publish("slow.x", "later", ack=True)
            assert (await slow.receive()).data == "later"
            assert slow.missed == SLOW - len(kept)


async def test_with_a_store_a_slow_block_subscription_catches_up_exactly_once() -> None:
    """A slow block subscription of stored events stalls nothing else, and once consumed
    gets every stored event exactly once, in order, with nothing missed."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker(store=MemoryStore()) as served,
            open_client(served.url, name="publisher") as publisher,
            open_client(served.url, name="slow") as client,
            client.subscribe("slow.x", max_buffer_size=2, overflow="block") as slow,
        ):
            await flood_then_check_the_rest_goes_on(publisher, client)
            assert slow.statistics().buffered == 4  # behind: the rest waits in the store
            got = [(await slow.receive()) for _ in range(SLOW)]
            assert [event.data for event in got] == list(range(SLOW))
            seqs = [event.seq or 0 for event in got]
            assert 0 not in seqs
            assert seqs == sorted(seqs)
            assert len(set(seqs)) == SLOW
            assert slow.missed == 0
            assert client.statistics().catch_ups >= 1
            # nothing more, nothing twice; then live again
            await publisher.publish("slow.x", "live", ack=True)
            assert (await slow.receive()).data == "live"
            assert drain(slow) == []
            assert slow.missed == 0


async def test_a_block_subscription_consumed_as_events_arrive_loses_nothing() -> None:
    """A consumer that keeps up with a burst larger than twice its buffer loses nothing,
    store or not: the reader lets it drain before it takes more than twice its buffer."""
    with trio.fail_after(TIMEOUT):
        async with (
            running_broker() as served,
            open_client(served.url) as publisher,
            open_client(served.url) as client,
            client.subscribe("burst.x", max_buffer_size=1, overflow="block") as sub,
            trio.open_nursery() as nursery,
        ):
            received: list[int] = []

            async def consume() -> None:
                while len(received) < 100:
                    received.append((await sub.receive()).data)

            nursery.start_soon(consume)
            for i in range(100):
                await publisher.publish("burst.x", i)
    assert received == list(range(100))
    assert sub.missed == 0
