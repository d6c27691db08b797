"""open_channel: one entry point for every EventChannel, picked by the URL's scheme.

Application code and its configuration name a URL, nothing else, and move between the
in-process bus, a trio_realtime broker and plain NATS by changing it (see the Transports page
of the docs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

from .bus._bus import open_bus
from .bus._channel import EventChannel
from .client._client import open_client
from .natschannel._channel import open_nats_channel

__all__ = ["SCHEMES", "open_channel"]

#: The URL schemes :func:`open_channel` knows, and what each opens.
SCHEMES: Final = {
    "memory": "an in-process bus (open_bus)",
    "ws": "a client of a trio_realtime broker (open_client)",
    "wss": "a client of a trio_realtime broker over TLS (open_client)",
    "nats": "the EventChannel over NATS (open_nats_channel)",
    "tls": "the EventChannel over NATS, with TLS (open_nats_channel)",
}


def _scheme(url: str | Sequence[str]) -> str:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError(f"open_channel() takes a URL (or a list of URLs), not {url!r}")
    schemes = {urlsplit(u.split(",", 1)[0].strip()).scheme.lower() for u in urls}
    if len(schemes) != 1:
        raise ValueError(f"the URLs must all have one scheme, not {sorted(schemes)}")
    [scheme] = schemes
    if scheme not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise ValueError(f"unknown URL scheme in {url!r}: expected one of {known}")
    return scheme


@asynccontextmanager
async def open_channel(url: str | Sequence[str], **options: Any) -> AsyncIterator[EventChannel]:
    """Open the :class:`~trio_realtime.EventChannel` that *url* names, for the ``async with``
    block; leaving it closes the channel.

    =======================  ==========================================================
    ``memory://``            an in-process bus of its own: :func:`~trio_realtime.open_bus`
    ``ws://``, ``wss://``    a client of a trio_realtime broker:
                             :func:`~trio_realtime.open_client`
    ``nats://``, ``tls://``  the channel straight over NATS:
                             :func:`~trio_realtime.natschannel.open_nats_channel`
    =======================  ==========================================================

    ::

        async with open_channel(os.environ.get("EVENTS_URL", "memory://")) as channel:
            await channel.publish("orders.created", {"id": 7})

    *options* go to the function that opens it (``store=`` for a bus, ``stream=`` for a
    NATS channel, ``token=`` for a client…). Several URLs (a list, or comma-separated) name
    the nodes of a cluster of brokers, or NATS servers. Each ``memory://`` channel is a bus
    of its own: share the channel, not the URL, within a process.

    Raises:
        ValueError: if the scheme is none of these (or a ``memory://`` URL names more).
        TypeError: if an option is not one the opening function takes.
    """
    scheme = _scheme(url)
    if scheme == "memory":
        if not isinstance(url, str) or url.rstrip("/") != "memory:":
            raise ValueError(
                f"an in-process bus is opened with 'memory://' and nothing more, not {url!r}"
            )
        async with open_bus(**options) as bus:
            yield bus
    elif scheme in ("ws", "wss"):
        urls = [url] if isinstance(url, str) else list(url)
        urls = [u.strip() for item in urls for u in item.split(",") if u.strip()]
        async with open_client(urls if len(urls) > 1 else urls[0], **options) as client:
            yield client
    else:
        async with open_nats_channel(url, **options) as channel:
            yield channel
