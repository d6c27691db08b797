"""How a broker joins a cluster: :class:`ClusterOptions` (``Broker(cluster=…)``).

Also the few names both ends of the backplane agree on: the NATS subjects of a prefix, the
NATS queue name of a queue group, and the NATS headers the backplane sets.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import attrs

from .._nats import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_PENDING, DEFAULT_RECONNECT_WAIT
from .._topics import validate_topic

__all__ = [
    "DEFAULT_PREFIX",
    "SERVED_HEADER",
    "ClusterOptions",
    "default_node_name",
    "queue_name",
]

#: The subject prefix of a cluster, by default: events travel on ``tr.<topic>``, retained
#: values are kept on ``trr.<topic>`` and persisted events (the JetStream store) on
#: ``trs.<topic>``.
DEFAULT_PREFIX: Final = "tr"
#: The NATS header listing the queue groups a member of which on the publishing node took an
#: event (their :func:`queue_name`, comma-separated): other nodes' members skip it.
SERVED_HEADER: Final = "tr-served"
#: The NATS header naming the node a retained value came from.
NODE_HEADER: Final = "tr-node"
#: The NATS header that marks a retained value as cleared (the message has no payload).
CLEAR_HEADER: Final = "tr-clear"
#: The longest node name.
MAX_NODE_NAME: Final = 128
#: The URL schemes of NATS servers.
NATS_SCHEMES: Final = ("nats", "tls")

_PLAIN_QUEUE: Final = re.compile(r"[A-Za-z0-9_-]+")
_NODE_NAME: Final = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


def default_node_name() -> str:
    """``<host name>-<process id>``: unique among the processes of a cluster."""
    return f"{socket.gethostname()}-{os.getpid()}"


def queue_name(group: str) -> str:
    """The NATS queue group of the queue group *group*: itself when it is made of ``A-Z a-z
    0-9 _ -`` only, else ``~`` and its UTF-8 in URL-safe base64 (any name, the same on every
    node, never with a character NATS or the :data:`SERVED_HEADER` list would misread)."""
    if _PLAIN_QUEUE.fullmatch(group):
        return group
    import base64

    return "~" + base64.urlsafe_b64encode(group.encode()).decode().rstrip("=")


def _servers(value: str | Sequence[str]) -> tuple[str, ...]:
    urls = [value] if isinstance(value, str) else list(value)
    found: list[str] = []
    for item in urls:
        if not isinstance(item, str):
            raise TypeError(f"cluster servers must be URLs (strings), not {item!r}")
        for url in item.split(","):
            url = url.strip()
            if url:
                found.append(url)
    return tuple(found)


def _check_servers(_: object, __: object, servers: tuple[str, ...]) -> None:
    if not servers:
        raise ValueError("a cluster needs at least one NATS server URL (nats://HOST:PORT)")
    for url in servers:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in NATS_SCHEMES or not parts.hostname or port == -1:
            raise ValueError(
                f"cluster server {url!r}: expected nats://HOST[:PORT] or tls://HOST[:PORT] "
                "(user:password@ or token@ before the host, if the server wants them)"
            )


def _check_node(_: object, __: object, node: object) -> None:
    if not isinstance(node, str) or not _NODE_NAME.fullmatch(node) or len(node) > MAX_NODE_NAME:
        raise ValueError(
            f"node name must be 1 to {MAX_NODE_NAME} printable ASCII characters without "
            f"spaces, not {node!r}"
        )


def _check_prefix(_: object, __: object, prefix: str) -> None:
    validate_topic(prefix)
    if prefix.startswith(("$", "_")):
        raise ValueError(f"cluster prefix {prefix!r} must not start with '$' or '_'")


def _check_positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen(kw_only=True)
class ClusterOptions:
    """How a broker shares its events with the other brokers of a cluster, through NATS.

    ::

        Broker(cluster=ClusterOptions(servers="nats://127.0.0.1:4222", node="eu-1"))

    Attributes:
        servers: NATS server URLs (``nats://HOST:PORT``, or ``tls://``), as a list or one
            string (comma-separated URLs allowed). ``user:password@`` or ``token@`` before
            the host authenticate, as NATS URLs do.
        node: This broker's name in the cluster: unique among its nodes (the retained values
            it shares say they are its own by it). By default ``<host name>-<pid>``.
        prefix: The subject prefix: events travel on ``<prefix>.<topic>``, retained values
            are kept on ``<prefix>r.<topic>``. Deployments sharing one NATS need different
            prefixes. ``tr`` by default.
        tls: The TLS context for ``tls://`` servers (a client certificate in it, if the
            server asks for one). None: the system's defaults for ``tls://``.
        user: User name for NATS, with *password* (or put them in the URL).
        password: Password for NATS.
        token: Authentication token for NATS.
        max_pending: Events queued for NATS, while it is slow or unreachable, before further
            ones are not shared (counted as ``not_shared``).
        retained: Share retained values through a JetStream stream (one message per topic).
            Off, or without JetStream, each node keeps its own.
        connect_timeout: Seconds one connection attempt may take.
        reconnect_wait: Seconds between attempts to reach a server.
    """

    servers: tuple[str, ...] = attrs.field(converter=_servers, validator=_check_servers)
    node: str = attrs.field(factory=default_node_name, validator=_check_node)
    prefix: str = attrs.field(default=DEFAULT_PREFIX, validator=_check_prefix)
    tls: ssl.SSLContext | None = None
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    token: str | None = attrs.field(default=None, repr=False)
    max_pending: int = attrs.field(default=DEFAULT_MAX_PENDING)
    retained: bool = True
    connect_timeout: float = attrs.field(default=DEFAULT_CONNECT_TIMEOUT, validator=_check_positive)
    reconnect_wait: float = attrs.field(default=DEFAULT_RECONNECT_WAIT, validator=_check_positive)

    @max_pending.validator
    def _check_max_pending(self, _: object, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_pending must be a positive int, not {value!r}")

    @property
    def retained_stream(self) -> str:
        """The name of the JetStream stream of retained values: ``TR_RETAINED_<PREFIX>``
        (the prefix in upper case, ``.`` as ``_``)."""
        return "TR_RETAINED_" + self.prefix.upper().replace(".", "_")

    def shown_servers(self) -> str:
        """The server URLs without their credentials, for logs and the start-up line."""
        shown = []
        for url in self.servers:
            parts = urlsplit(url)
            host = parts.hostname or ""
            host = f"[{host}]" if ":" in host else host
            shown.append(f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else ""))
        return ", ".join(shown)
