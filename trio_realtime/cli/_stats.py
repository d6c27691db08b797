"""``trio-realtime stats``: the broker's live figures, from its ``$sys.stats`` events.

The broker publishes :class:`~trio_realtime.BrokerStatistics` on ``$sys.stats`` every few
seconds (``stats_interval``, 5 by default). On a terminal the figures are redrawn in place;
otherwise each update is a block of lines and a blank line, or with ``--json`` one line of
JSON; both with the rates per second since the update before.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from typing import Any, Final

import orjson

from ._common import connect, write

__all__ = ["render", "stats"]

logger = logging.getLogger("trio_realtime.cli")

#: The counters that grow, whose rate per second is shown beside them.
COUNTERS: Final = ("events_in", "events_out", "published", "stored", "dropped")
#: Terminal control: move the cursor up to the first line of the previous block, and clear
#: from there to the end of the screen.
_UP_AND_CLEAR: Final = "\x1b[{}F\x1b[J"


def rates(
    current: dict[str, Any], previous: dict[str, Any] | None, seconds: float
) -> dict[str, float]:
    """The rate per second of each of :data:`COUNTERS` between two updates (none for the
    first, or if no time passed)."""
    if previous is None or seconds <= 0:
        return {}
    return {
        name: (current.get(name, 0) - previous.get(name, 0)) / seconds
        for name in COUNTERS
        if isinstance(current.get(name), int)
    }


def _pairs(counts: object) -> str:
    if not isinstance(counts, dict) or not counts:
        return "none"
    return ", ".join(f"{key} {value:,}" for key, value in sorted(counts.items()))


def render(url: str, time: datetime, figures: dict[str, Any], per_second: dict[str, float]) -> str:
    """The figures as a block of lines, for a person."""
    lines = [f"{url} at {time:%H:%M:%S}"]
    lines.append(
        f"  connections     {figures.get('connections', 0):>12,} "
        f"({figures.get('connections_total', 0):,} since start)"
    )
    lines.append(f"  subscriptions   {figures.get('subscriptions', 0):>12,}")
    for name in COUNTERS:
        rate = f"  {per_second[name]:,.1f}/s" if name in per_second else ""
        lines.append(f"  {name.replace('_', ' '):<15} {figures.get(name, 0):>12,}{rate}")
    lines.append(f"  actor errors    {figures.get('actor_errors', 0):>12,}")
    lines.append(f"  errors          {_pairs(figures.get('errors'))}")
    lines.append(f"  limits hit      {_pairs(figures.get('limits'))}")
    return "\n".join(lines) + "\n"


async def stats(args: argparse.Namespace) -> None:
    """Print each ``$sys.stats`` update until interrupted, or ``--count`` of them."""
    in_place = not args.json and sys.stdout.isatty()
    previous: tuple[datetime, dict[str, Any]] | None = None
    drawn = 0
    async with (
        connect(args, "stats", reconnect=True) as client,
        client.subscribe("$sys.stats", max_buffer_size=16, overflow="drop_oldest") as sub,
    ):
        logger.info("watching $sys.stats on %s", client.url)
        if args.count == 0:
            return
        received = 0
        with args.interrupt.catch():
            async for event in sub:
                figures = event.data if isinstance(event.data, dict) else {}
                per_second = rates(
                    figures,
                    previous[1] if previous else None,
                    (event.time - previous[0]).total_seconds() if previous else 0.0,
                )
                previous = (event.time, figures)
                if args.json:
                    line = {"time": event.time.isoformat(), **figures, "per_second": per_second}
                    write(orjson.dumps(line).decode() + "\n")
                else:
                    block = render(client.url, event.time.astimezone(), figures, per_second)
                    if in_place and drawn:
                        block = _UP_AND_CLEAR.format(drawn) + block
                    drawn = block.count("\n")
                    write(block if in_place else block + "\n")
                received += 1
                if args.count is not None and received >= args.count:
                    return
