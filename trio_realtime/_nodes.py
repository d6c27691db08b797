"""The nodes of a cluster, by URL: the brokers a client may connect to, and fail over between.

A client is given one broker URL or several (:func:`~trio_realtime.open_client`); the brokers
it connects to may advertise more (``welcome.nodes``, as NATS's INFO ``connect_urls``, set by
``Broker(advertise_urls=…)``). :class:`Nodes` keeps a client's: the URLs it was given first,
in their order, then the advertised ones. What a broker advertises is checked and bounded
(:data:`MAX_NODES`, :data:`MAX_URL_LENGTH`, the given URLs' scheme), so that a broker cannot
make a client hold or dial an unbounded number of URLs or malformed ones, nor move a
``wss://`` client to plain ``ws://``.

:func:`check_urls` checks a list of URLs given by a user (to a broker to advertise, or to
the client: :func:`given_urls`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from ._transport_client import parse_url

__all__ = [
    "MAX_NODES",
    "MAX_URL_LENGTH",
    "Learned",
    "Nodes",
    "check_urls",
    "given_urls",
    "node_key",
]

#: The most advertised URLs a client keeps (from one ``welcome``), and the most a broker
#: advertises.
MAX_NODES: Final = 32
#: The longest advertised URL a client takes, in characters.
MAX_URL_LENGTH: Final = 1024


def node_key(url: str) -> tuple[str, int, str]:
    """What makes two URLs the same node: host (in lower case), port and resource.

    Raises:
        ValueError: if *url* is not a WebSocket URL.
    """
    host, port, resource, _ = parse_url(url)
    return host, port, resource


def check_urls(urls: Iterable[object], *, what: str) -> tuple[str, ...]:
    """*urls*, checked: WebSocket URLs, all ``ws://`` or all ``wss://``; without repeats
    (the first of two URLs for the same node is kept). *what* names them in messages.

    Raises:
        TypeError: if one is not a str.
        ValueError: if one is not a ``ws://`` or ``wss://`` URL with a host, or they mix
            the two schemes.
    """
    kept: list[str] = []
    seen: set[tuple[str, int, str]] = set()
    schemes: dict[bool, str] = {}
    for url in urls:
        if not isinstance(url, str):
            raise TypeError(f"{what} must be URL strings, not {type(url).__name__} {url!r}")
        host, port, resource, tls = parse_url(url)
        schemes.setdefault(tls, url)
        key = (host, port, resource)
        if key not in seen:
            seen.add(key)
            kept.append(url)
    if len(schemes) > 1:
        raise ValueError(
            f"{what} mix ws:// and wss:// ({schemes[False]!r}, {schemes[True]!r}): give them "
            "all one scheme, so that failing over from one node to another never drops TLS"
        )
    return tuple(kept)


def given_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """``open_client``'s *url*, checked: one URL, or several (see :func:`check_urls`).

    Raises:
        TypeError: if it is neither a str nor a sequence of str.
        ValueError: if a URL is not a WebSocket URL, the sequence is empty, or it mixes
            ``ws://`` and ``wss://``.
    """
    if isinstance(url, str):
        parse_url(url)
        return (url,)
    urls = check_urls(url, what="the broker URLs")
    if not urls:
        raise ValueError("open_client needs at least one broker URL, not an empty list")
    return urls


@attrs.frozen
class Learned:
    """What :meth:`Nodes.learn` made of a broker's ``welcome.nodes``.

    Attributes:
        kept: The URLs taken (duplicates and given URLs aside).
        invalid: Items refused: not a string, too long, not printable, not a WebSocket URL,
            or of the other scheme than the URLs the client was given.
        excess: Items past the first :data:`MAX_NODES`, left unread.
    """

    kept: int
    invalid: int
    excess: int


def _acceptable(item: object, tls: bool) -> str | None:
    """*item* as an advertised URL the client may dial, or None."""
    if type(item) is not str or len(item) > MAX_URL_LENGTH:
        return None
    if not item.isprintable() or any(c.isspace() for c in item):
        return None
    try:
        if parse_url(item)[3] is not tls:
            return None
    except ValueError:
        return None
    return item


class Nodes:
    """A client's rotation of broker URLs: the given ones, then those brokers advertised.

    It is never empty: at least one URL is given.
    """

    __slots__ = ("_given_keys", "advertised", "given", "tls")

    def __init__(self, given: Sequence[str]) -> None:
        if not given:
            raise ValueError("give at least one broker URL")
        #: The URLs given to the client, in their order: always first.
        self.given: Final = tuple(given)
        #: Whether they are ``wss://`` (an advertised URL must be too).
        self.tls: Final = parse_url(self.given[0])[3]
        self._given_keys: Final = frozenset(node_key(url) for url in self.given)
        #: The URLs the last broker that advertised any advertised (checked, bounded).
        self.advertised: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<Nodes given={list(self.given)} advertised={list(self.advertised)}>"

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL, in the order they are tried: the given ones, then the advertised."""
        return self.given + self.advertised

    def learn(self, nodes: Sequence[object]) -> Learned:
        """Take the URLs a broker advertised (``welcome.nodes``) in place of those advertised
        before; an empty list changes nothing (that broker advertises none).

        Only the first :data:`MAX_NODES` items are read (a broker advertises no more); of
        those, the given URLs and repeats are skipped, and what is not a WebSocket URL of the
        given URLs' scheme (at most :data:`MAX_URL_LENGTH` printable characters, without
        white space) is refused.
        """
        if not nodes:
            return Learned(0, 0, 0)
        kept: list[str] = []
        seen = set(self._given_keys)
        invalid = 0
        for item in nodes[:MAX_NODES]:
            url = _acceptable(item, self.tls)
            if url is None:
                invalid += 1
                continue
            key = node_key(url)
            if key not in seen:
                seen.add(key)
                kept.append(url)
        self.advertised = tuple(kept)
        return Learned(len(kept), invalid, max(0, len(nodes) - MAX_NODES))

    def after(self, url: str) -> str:
        """The URL to try after *url*: the next one, round the rotation; the first one if
        *url* is no longer in it (a node no longer advertised)."""
        urls = self.urls
        try:
            index = urls.index(url)
        except ValueError:
            return urls[0]
        return urls[(index + 1) % len(urls)]
