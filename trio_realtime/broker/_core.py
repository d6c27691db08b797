"""The broker's base: its settings, and what becomes of each connection.

:class:`BrokerCore` is the base of :class:`~trio_realtime.Broker`. Its ``__init__`` checks
the broker's settings (their defaults are here) and sets up the state every part of the
broker shares. Each connection the listener accepts runs here as a
:class:`~trio_realtime.broker._session.Session`: counted in and out, given its publish-rate
buckets (its own, and its user's, which all the user's connections share), told on
``$sys.connect``, ``$sys.disconnect`` and ``$sys.auth.failed``, and, should it fail with a bug
of the broker's, logged with its traceback once per place it failed. At shutdown every session
is closed with code 1001. Serving (the listener, the bus, actors, webhooks, the cluster,
``$sys.stats``) is :mod:`trio_realtime.broker._broker`'s.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import trio

from .._event import Event
from .._nodes import MAX_NODES, check_urls
from .._transport import LOCAL_ORIGINS, ConnectionGate
from ..bus._bus import Bus
from ..bus._channel import OverflowLike
from ..cluster import Backplane, ClusterOptions
from ..protocol import CLOSE_GOING_AWAY
from ..security import Authenticator
from ..store import Store
from ._limits import BrokerCounters, SessionLimits, TokenBucket
from ._session import Session, SessionContext

if TYPE_CHECKING:
    from ..integrations._webhook_delivery import WebhookDelivery

__all__ = ["Actor", "ActorSpec", "BrokerCore", "default_max_connections", "descriptor_limit"]

logger = logging.getLogger("trio_realtime.broker")

#: Seconds between heartbeats, by default: a client silent for two of them is closed.
DEFAULT_HEARTBEAT: Final = 30.0
#: Largest message a client may send, by default (bigger ones close it with 1009).
DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024
#: Events queued for one client before the slow-consumer policy applies, by default.
DEFAULT_SESSION_BUFFER: Final = 10_000
#: Bytes of frames queued for one client before the slow-consumer policy applies to its
#: events and the broker stops reading its requests, by default.
DEFAULT_MAX_PENDING_BYTES: Final = 16 * 1024 * 1024
#: Subscriptions one connection may hold, by default.
DEFAULT_MAX_SUBSCRIPTIONS: Final = 4096
#: ``since`` replays one connection may have under way at once, by default; further ones
#: wait their turn.
DEFAULT_MAX_REPLAYS: Final = 4
#: Bytes an event frame may add around its event (type, ``subs``, punctuation): an event
#: whose encoding is larger than ``max_message_size`` less this (less half of it, for a
#: small limit) is refused as ``too_large``.
EVENT_FRAME_RESERVE: Final = 1024
#: The smallest ``max_message_size`` a broker accepts.
MIN_MESSAGE_SIZE: Final = 512
#: File descriptors left for other uses (the store, listeners, logs, refusals under way) when
#: ``max_connections`` is derived from the process's descriptor limit.
FD_RESERVE: Final = 128
#: The most connections by default, whatever the descriptor limit (as NATS's default).
MAX_CONNECTIONS_CAP: Final = 65_536


#: Distinct internal failures whose traceback the broker logs (each once).
MAX_FAILURES_LOGGED: Final = 100


def _failure_site(exc: BaseException) -> tuple[str, str, int]:
    """What makes a failure the same as another: its type and where it was raised."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return (type(exc).__qualname__, "", 0)
    return (type(exc).__qualname__, tb.tb_frame.f_code.co_filename, tb.tb_lineno)


def descriptor_limit() -> int | None:
    """The process's soft limit on open file descriptors, or None if unlimited or unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    """``max_connections`` when not given: below the descriptor limit, at most 65,536."""
    limit = descriptor_limit()
    if limit is None:
        return MAX_CONNECTIONS_CAP
    return max(1, min(MAX_CONNECTIONS_CAP, limit - FD_RESERVE))


Actor = Callable[[Event], Awaitable[Any] | Any]


def _check_advertised(urls: Sequence[str]) -> tuple[str, ...]:
    """*advertise_urls*, checked (see :class:`Broker`)."""
    if isinstance(urls, str):
        raise ValueError(f"advertise_urls must be a list of URLs, not the string {urls!r}")
    checked = check_urls(urls, what="advertise_urls")
    if len(checked) > MAX_NODES:
        raise ValueError(
            f"advertise_urls holds {len(checked)} URLs: a client takes {MAX_NODES} at most"
        )
    return checked


@attrs.define
class ActorSpec:
    """An actor registered with ``@broker.on``: its subscription and its handler."""

    pattern: str
    group: str | None
    handler: Actor
    max_buffer_size: float
    overflow: OverflowLike


class BrokerCore:
    """A broker's settings and state, and what becomes of each connection (see the module's
    docstring). Made only as a :class:`~trio_realtime.Broker`."""

    def __init__(
        self,
        *,
        bus: Bus | None = None,
        store: Store | None = None,
        persist: Sequence[str] | None = None,
        name: str = "trio-realtime",
        heartbeat: float = DEFAULT_HEARTBEAT,
        handshake_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_connections: int | None = None,
        max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
        max_retained: int | None = None,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_replays: int = DEFAULT_MAX_REPLAYS,
        session_buffer: int = DEFAULT_SESSION_BUFFER,
        slow_consumer: Literal["drop_oldest", "disconnect"] = "drop_oldest",
        stats_interval: float | None = 5.0,
        shutdown_timeout: float = 5.0,
        auth: Authenticator | None = None,
        allowed_origins: Sequence[str] | None = None,
        publish_rate: float | None = None,
        user_publish_rate: float | None = None,
        publish_burst: int = 100,
        advertise_urls: Sequence[str] = (),
        cluster: ClusterOptions | None = None,
    ) -> None:
        if bus is not None and (
            store is not None or persist is not None or max_retained is not None
        ):
            raise ValueError(
                "pass store=, persist= and max_retained= to open_bus() when you pass a bus"
            )
        if slow_consumer not in ("drop_oldest", "disconnect"):
            raise ValueError(
                f"slow_consumer must be 'drop_oldest' or 'disconnect', not {slow_consumer!r}"
            )
        for value, what in ((heartbeat, "heartbeat"), (handshake_timeout, "handshake_timeout")):
            if not value > 0:
                raise ValueError(f"{what} must be positive, not {value!r}")
        for count, what in (
            (session_buffer, "session_buffer"),
            (max_subscriptions, "max_subscriptions"),
            (max_replays, "max_replays"),
            (max_connections if max_connections is not None else 1, "max_connections"),
            (max_retained if max_retained is not None else 1, "max_retained"),
        ):
            if count < 1:
                raise ValueError(f"{what} must be at least 1, not {count!r}")
        if isinstance(allowed_origins, str):
            raise ValueError(
                f"allowed_origins must be a list of patterns, not the string {allowed_origins!r}"
            )
        if max_message_size < MIN_MESSAGE_SIZE:
            raise ValueError(
                f"max_message_size must be at least {MIN_MESSAGE_SIZE} bytes, "
                f"not {max_message_size!r}"
            )
        if max_pending_bytes < max_message_size:
            raise ValueError(
                f"max_pending_bytes ({max_pending_bytes}) must be at least max_message_size "
                f"({max_message_size})"
            )
        self._bus = bus
        self._store = store
        self._persist = persist
        self.name: Final = name
        self.heartbeat: Final = float(heartbeat)
        self.handshake_timeout: Final = float(handshake_timeout)
        self.max_message_size: Final = max_message_size
        #: The largest event (its JSON encoding, in bytes) a client may publish: what always
        #: fits in one ``event`` frame.
        self.max_event_size: Final = max_message_size - min(
            EVENT_FRAME_RESERVE, max_message_size // 2
        )
        self.max_connections: Final = (
            max_connections if max_connections is not None else default_max_connections()
        )
        self.max_subscriptions: Final = max_subscriptions
        self._max_retained = max_retained
        self.max_pending_bytes: Final = max_pending_bytes
        self.max_replays: Final = max_replays
        self.session_buffer: Final = session_buffer
        self.slow_consumer: Final = slow_consumer
        self.stats_interval: Final = stats_interval
        self.shutdown_timeout: Final = float(shutdown_timeout)
        self.auth: Final = auth
        for what, rate in (
            ("publish_rate", publish_rate),
            ("user_publish_rate", user_publish_rate),
        ):
            if rate is not None and not rate > 0:
                raise ValueError(f"{what} must be positive, or None, not {rate!r}")
        if publish_burst < 1:
            raise ValueError(f"publish_burst must be at least 1, not {publish_burst!r}")
        #: The URLs of the cluster's other nodes that clients are told (``welcome.nodes``).
        self.advertise_urls: Final = _check_advertised(advertise_urls)
        # user -> (the bucket all its connections share, how many connections it has)
        self._user_buckets: dict[str, tuple[TokenBucket, int]] = {}
        #: The origin patterns a browser's handshake must match (None: any origin).
        self.allowed_origins: Final[tuple[str, ...] | None] = (
            tuple(allowed_origins)
            if allowed_origins is not None
            else LOCAL_ORIGINS
            if auth is None
            else None
        )
        self._actors: list[ActorSpec] = []
        self._webhooks: dict[str, WebhookDelivery] = {}
        self._sessions: dict[str, Session] = {}
        self._no_sessions = trio.Event()
        self._no_sessions.set()
        self._session_ids = itertools.count(1)
        self._session_prefix = secrets.token_hex(3)
        self._connections_total = 0
        self._actor_errors = 0
        #: What sessions count (errors, limits hit, events in and out), with the broker.
        self._counters = BrokerCounters()
        #: The settings sessions apply.
        self._session_limits = SessionLimits(
            name=name,
            heartbeat=self.heartbeat,
            handshake_timeout=self.handshake_timeout,
            shutdown_timeout=self.shutdown_timeout,
            max_message_size=max_message_size,
            max_event_size=self.max_event_size,
            max_pending_bytes=max_pending_bytes,
            max_subscriptions=max_subscriptions,
            max_replays=max_replays,
            session_buffer=session_buffer,
            slow_consumer=slow_consumer,
            publish_rate=publish_rate,
            user_publish_rate=user_publish_rate,
            publish_burst=publish_burst,
            nodes=self.advertise_urls,
        )
        #: What every session gets from the broker (made when it serves: its bus).
        self._session_context: SessionContext | None = None
        self._failures_logged: set[tuple[str, str, int]] = set()
        self._gate = ConnectionGate(self.max_connections, allowed_origins=self.allowed_origins)
        self._serving = False
        self._shutting_down = False
        self._listening = False  # (readiness: listening, and not draining)
        #: How the broker joins a cluster (None: it does not).
        self.cluster: Final = cluster
        self._backplane: Backplane | None = None
        self._sys_send: trio.MemorySendChannel[tuple[str, Any]] | None = None

    async def _close_sessions(self) -> None:
        self._shutting_down = True
        async with trio.open_nursery() as nursery:
            for session in list(self._sessions.values()):
                nursery.start_soon(session.close, CLOSE_GOING_AWAY, "broker shutting down")
        await self._no_sessions.wait()

    async def _handle_connection(self, transport: Any) -> None:
        session_id = f"{self._session_prefix}-{next(self._session_ids)}"
        context = self._session_context
        assert context is not None  # (connections are accepted while serving)
        try:
            await Session(context, transport, session_id).run()
        except Exception as exc:
            # A bug of the broker's. Its traceback is logged the first time only: a client
            # that can trigger it must not be able to flood the log with it.
            self._count_error("internal")
            site = _failure_site(exc)
            if site in self._failures_logged:
                logger.warning("session %s failed (%r, logged before)", session_id, exc)
            else:
                if len(self._failures_logged) < MAX_FAILURES_LOGGED:
                    self._failures_logged.add(site)
                logger.exception("session %s failed", session_id)
            await transport.aclose(1011, "internal error", timeout=self.shutdown_timeout)

    async def _session_started(self, session: Session) -> bool:
        """Count *session* in; False if the broker is shutting down (it must leave)."""
        if self._shutting_down:
            return False
        self._sessions[session.id] = session
        if self._no_sessions.is_set():
            self._no_sessions = trio.Event()
        self._connections_total += 1
        session.rate_buckets = self._rate_buckets(session)
        logger.info(
            "client %r connected from %s as %s",
            session.client,
            session.address,
            session.id,
            extra=_log_context(session),
        )
        self._publish_sys("$sys.connect", session)
        return True

    def _rate_buckets(self, session: Session) -> tuple[TokenBucket, ...]:
        """The publish-rate buckets *session* draws from: its own, and its user's."""
        limits = self._session_limits
        now = trio.current_time()
        buckets = []
        if limits.publish_rate is not None:
            buckets.append(TokenBucket(limits.publish_rate, limits.publish_burst, now))
        user = session.user
        if limits.user_publish_rate is not None and user is not None:
            shared = self._user_buckets.get(user)
            if shared is None:
                shared = (TokenBucket(limits.user_publish_rate, limits.publish_burst, now), 0)
            self._user_buckets[user] = (shared[0], shared[1] + 1)
            buckets.append(shared[0])
        return tuple(buckets)

    def _release_user_bucket(self, session: Session) -> None:
        """*session* ended: its user's shared bucket has one connection fewer."""
        user = session.user
        shared = None if user is None else self._user_buckets.get(user)
        if user is None or shared is None or shared[0] not in session.rate_buckets:
            return
        if shared[1] <= 1:
            del self._user_buckets[user]  # its last connection: forget it
        else:
            self._user_buckets[user] = (shared[0], shared[1] - 1)

    async def _session_ended(self, session: Session) -> None:
        self._release_user_bucket(session)
        self._sessions.pop(session.id, None)
        if not self._sessions:
            self._no_sessions.set()
        logger.info(
            "client %r (%s) disconnected", session.client, session.id, extra=_log_context(session)
        )
        self._publish_sys("$sys.disconnect", session)

    def _auth_failed(self, session: Session, reason: str) -> None:
        """The authenticator refused *session*'s client: log it and tell ``$sys.auth.failed``
        (the reason never holds token material)."""
        logger.info(
            "client %r from %s (%s) failed to authenticate: %s",
            session.client,
            session.address,
            session.id,
            reason,
            extra=_log_context(session),
        )
        self._publish_sys("$sys.auth.failed", session, reason=reason)

    def _publish_sys(self, topic: str, session: Session, **extra: str) -> None:
        """Queue a ``$sys`` event about *session*; sessions never wait for its subscribers."""
        data = {"client": session.client, "session": session.id, "address": session.address}
        if session.user is not None:
            data["user"] = session.user
        data.update(extra)
        self._sys_event(topic, data)

    def _sys_event(self, topic: str, data: dict[str, Any]) -> None:
        """Queue a ``$sys`` event; the caller never waits for its subscribers."""
        if self._sys_send is None:
            return
        try:
            self._sys_send.send_nowait((topic, data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # shutting down: nobody is left to tell

    def _count_error(self, code: str) -> None:
        self._counters.count_error(code)


def _log_context(session: Session) -> dict[str, str | None]:
    """What a log line about *session* carries besides its message (the record's extras: the
    JSON log format writes them as fields)."""
    return {
        "session": session.id,
        "client": session.client,
        "user": session.user,
        "address": session.address,
    }
