"""``trio-realtime bench``: publishers and subscribers against a broker, like ``nats bench``.

Each publisher and each subscriber is a connection of its own, all in this process, so that
one clock times an event from its publish to its delivery. The data of an event is a string
of ``--size`` characters that starts with the time it was published.
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
import time
from typing import TYPE_CHECKING, Final

import attrs
import orjson
import trio

from .._util import open_service_nursery
from ._common import connect, write

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..bus._channel import Subscription

__all__ = ["bench", "percentile"]

#: Seconds a subscriber waits for the next event once every publisher is done, before it
#: counts the rest as lost.
DRAIN_TIMEOUT: Final = 5.0
#: Seconds between two redraws of the progress line (on a terminal only).
PROGRESS_INTERVAL: Final = 0.2
#: The percentiles of the latency line.
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


@attrs.define
class _Side:
    """What one publisher or subscriber did: how many events, over which span of time."""

    count: int = 0
    first: float | None = None
    last: float | None = None

    def tick(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1

    @property
    def seconds(self) -> float:
        if self.first is None or self.last is None:
            return 0.0
        return self.last - self.first


def percentile(ordered: Sequence[float], p: float) -> float:
    """The *p*-th percentile of *ordered* (sorted, not empty), by the nearest rank."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


def _span(sides: Sequence[_Side]) -> float:
    firsts = [s.first for s in sides if s.first is not None]
    lasts = [s.last for s in sides if s.last is not None]
    return max(lasts) - min(firsts) if firsts and lasts else 0.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _describe(name: str, sides: Sequence[_Side], size: int) -> list[str]:
    total = sum(s.count for s in sides)
    span = _span(sides)
    rate = _rate(total, span)
    lines = [
        (
            f"{name} stats: {rate:,.0f} msgs/s ~ {rate * size / 2**20:,.2f} MiB/s "
            f"({total:,} msgs in {span:.3f} s)"
        )
    ]
    if len(sides) > 1:
        for n, side in enumerate(sides, 1):
            lines.append(
                f" [{n}] {_rate(side.count, side.seconds):,.0f} msgs/s ({side.count:,} msgs)"
            )
    return lines


def _latency(name: str, samples: list[float]) -> str:
    if not samples:
        return f"{name}: no samples"
    samples.sort()
    parts = [f"min {_ms(samples[0])}"]
    parts += [f"p{p:g} {_ms(percentile(samples, p))}" for p in PERCENTILES]
    parts.append(f"max {_ms(samples[-1])}")
    return f"{name}: " + ", ".join(parts)


async def bench(args: argparse.Namespace) -> None:
    """Publish ``--msgs`` events from ``--pub`` publishers to ``--sub`` subscribers."""
    topic = args.topic or f"bench.{secrets.token_hex(4)}"
    per_pub = [args.msgs // args.pub + (n < args.msgs % args.pub) for n in range(args.pub)]
    publishers = [_Side() for _ in range(args.pub)]
    subscribers = [_Side() for _ in range(args.sub)]
    latencies: list[float] = []
    acks: list[float] = []
    published = trio.Event()
    #: Each subscriber's wait for its next event, given a deadline once publishing is done.
    waiting: dict[int, trio.CancelScope] = {}
    pad = "x" * args.size

    async def publish(n: int) -> None:
        side = publishers[n]
        async with connect(args, f"bench pub {n + 1}") as client:
            with args.interrupt.catch():
                for left in range(per_pub[n] - 1, -1, -1):
                    sent = time.perf_counter()
                    # The data: the time it was sent, then padding up to --size characters.
                    stamp = f"{sent!r} "
                    data = stamp + pad[: max(0, args.size - len(stamp))]
                    # The last is acked in any case: the broker then has every one before it.
                    await client.publish(topic, data, ack=args.ack or not left)
                    now = time.perf_counter()
                    if args.ack:
                        acks.append(now - sent)
                    side.tick(now)

    async def subscribe(n: int, *, task_status: trio.TaskStatus[None]) -> None:
        side = subscribers[n]
        async with (
            connect(args, f"bench sub {n + 1}") as client,
            client.subscribe(topic, max_buffer_size=args.msgs, overflow="block") as sub,
        ):
            task_status.started()
            with args.interrupt.catch():
                await receive(sub, side, n)

    async def receive(sub: Subscription, side: _Side, n: int) -> None:
        while side.count < args.msgs:
            event = None
            with trio.CancelScope() as waiting[n]:
                if published.is_set():
                    waiting[n].deadline = trio.current_time() + DRAIN_TIMEOUT
                event = await sub.receive()
            if event is None:  # pragma: no cover - events lost on the way
                return
            now = time.perf_counter()
            latencies.append(now - float(str(event.data).split(" ", 1)[0]))
            side.tick(now)

    write(
        f"bench: {args.msgs:,} msgs of {args.size:,} B on {topic} from {args.pub} "
        f"publisher(s) to {args.sub} subscriber(s), ack {'on' if args.ack else 'off'}\n"
    )
    async with open_service_nursery() as progress_nursery:
        if sys.stderr.isatty():
            progress_nursery.start_soon(_progress, publishers, subscribers, args.msgs)
        async with trio.open_nursery() as nursery:  # until every subscriber is done
            for n in range(args.sub):
                await nursery.start(subscribe, n)
            async with trio.open_nursery() as pubs:
                for n in range(args.pub):
                    pubs.start_soon(publish, n)
            published.set()
            for scope in waiting.values():
                scope.deadline = min(scope.deadline, trio.current_time() + DRAIN_TIMEOUT)
        progress_nursery.cancel_scope.cancel()
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")

    lines = _describe("pub", publishers, args.size)
    if subscribers:
        lines += _describe("sub", subscribers, args.size)
        lost = sum(args.msgs - s.count for s in subscribers)
        if lost:
            lines.append(f"lost: {lost:,} msgs did not reach a subscriber")
        lines.append(_latency("latency (publish to delivery)", latencies))
    if args.ack:
        lines.append(_latency("ack latency (publish to ack)", acks))
    if args.json:
        write(
            orjson.dumps(_summary(args, topic, publishers, subscribers, latencies, acks)).decode()
        )
        write("\n")
    else:
        write("".join(line + "\n" for line in lines))


def _summary(
    args: argparse.Namespace,
    topic: str,
    publishers: list[_Side],
    subscribers: list[_Side],
    latencies: list[float],
    acks: list[float],
) -> dict[str, object]:
    """The figures as one JSON object (``--json``); latencies in seconds."""

    def side(sides: list[_Side]) -> dict[str, object]:
        total = sum(s.count for s in sides)
        return {
            "msgs": total,
            "seconds": _span(sides),
            "msgs_per_second": _rate(total, _span(sides)) if total else 0.0,
        }

    def quantiles(samples: list[float]) -> dict[str, float] | None:
        if not samples:
            return None
        samples.sort()
        found = {f"p{p:g}": percentile(samples, p) for p in PERCENTILES}
        return {"min": samples[0], **found, "max": samples[-1]}

    return {
        "topic": topic,
        "msgs": args.msgs,
        "size": args.size,
        "publishers": args.pub,
        "subscribers": args.sub,
        "ack": args.ack,
        "pub": side(publishers),
        "sub": side(subscribers) if subscribers else None,
        "latency": quantiles(latencies),
        "ack_latency": quantiles(acks),
    }


async def _progress(publishers: list[_Side], subscribers: list[_Side], total: int) -> None:
    """Redraw a progress line on standard error until cancelled."""
    width = 30
    while True:
        sent = sum(s.count for s in publishers)
        received = sum(s.count for s in subscribers) / max(1, len(subscribers))
        done = min(sent, received) if subscribers else sent
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(
            f"\r[{bar}] published {sent:,}/{total:,}"
            + (f", received {int(received):,}/{total:,} each" if subscribers else "")
        )
        sys.stderr.flush()
        await trio.sleep(PROGRESS_INTERVAL)
