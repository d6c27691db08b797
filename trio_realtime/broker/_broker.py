"""The broker: a bus exposed over WebSocket, plus what acts on every event.

``Broker.serve`` listens for clients; each connection is a
:class:`~trio_realtime.broker._session.Session` in its own nursery. The broker also runs
actors (``@broker.on``), publishes ``$sys.`` events about what it sees, and shuts down
gracefully: cancelling ``serve`` closes every client with close code 1001 within
``shutdown_timeout``, then stops whatever is left.

The broker's settings, and what becomes of each connection, are its base's
(:class:`~trio_realtime.broker._core.BrokerCore`); this module serves: the listener, the bus,
actors, webhooks, the cluster's backplane, ``$sys`` events and statistics.
"""

from __future__ import annotations

import inspect
import logging
import math
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypedDict, Unpack

import attrs
import trio

from .._topics import validate_pattern
from .._transport import bind, listen
from .._util import only_leaf
from ..bus._bus import Bus, open_bus
from ..bus._channel import DEFAULT_BUFFER_SIZE, Overflow, OverflowLike
from ..cluster import Backplane, ClusterOptions, ClusterStatistics, open_backplane
from ..integrations import _webhooks as hooks
from ..security import Authenticator
from ..store import Store  # at run time too: BrokerOptions's hints resolve (get_type_hints)
from ..store._base import StoreStatistics
from ._core import Actor, ActorSpec, BrokerCore
from ._http import HttpServer, serve_http
from ._limits import HeartbeatTimers
from ._session import SessionContext

if TYPE_CHECKING:
    import httpx

__all__ = ["Broker", "BrokerOptions", "BrokerServer", "BrokerStatistics", "serve_broker"]

logger = logging.getLogger("trio_realtime.broker")


@attrs.frozen(kw_only=True)
class BrokerServer:
    """Where a serving broker listens (what ``await nursery.start(broker.serve, …)`` returns).

    Attributes:
        host: The host it was asked to listen on.
        port: The port it listens on (the real one, when asked for port 0).
        url: ``ws://host:port`` (``wss://`` with TLS), for clients.
    """

    host: str
    port: int
    url: str


@attrs.frozen(kw_only=True)
class BrokerStatistics:
    """What the broker has seen (the same figures it publishes on ``$sys.stats``).

    Attributes:
        connections: Clients connected now.
        connections_total: Clients that connected since the broker started.
        subscriptions: Subscriptions on the bus now (remote and in process).
        events_in: Events clients published.
        events_out: Events sent to clients.
        bytes_in: Bytes of the messages clients sent (their UTF-8 text).
        bytes_out: Bytes of the messages sent to clients.
        published: Events published on the bus (from clients and in process).
        dropped: Events lost to overflow (slow remote clients and local subscriptions).
        stored: Events stored.
        actor_errors: Exceptions raised by actors.
        errors: Bad input and failures by error code (``bad_frame``, ``invalid_topic`` …),
            and ``handshake_timeout``, ``heartbeat_timeout``, ``origin_refused`` (a web page
            not in *allowed_origins*) and ``accept_failed`` (the listener could not accept a
            connection, such as when out of file descriptors).
        limits: How often each configured limit was hit, by the setting's name
            (``max_connections``: connections refused; ``max_subscriptions``,
            ``max_event_size``: frames refused; ``max_retained``: retained values evicted;
            ``max_pending_bytes`` and ``session_buffer``: events dropped, or clients
            disconnected, for reading too slowly).
        webhooks: The figures of each webhook endpoint (:meth:`Broker.webhook`), by name.
        cluster: The figures of the cluster backplane, with a cluster (else None).
    """

    connections: int
    connections_total: int
    subscriptions: int
    events_in: int
    events_out: int
    bytes_in: int
    bytes_out: int
    published: int
    dropped: int
    stored: int
    actor_errors: int
    errors: dict[str, int]
    limits: dict[str, int]
    webhooks: dict[str, hooks.WebhookStatistics] = attrs.field(factory=dict)
    cluster: ClusterStatistics | None = None


class Broker(BrokerCore):
    """An event broker: a :class:`~trio_realtime.Bus` exposed over WebSocket.

    ::

        broker = Broker()

        @broker.on("orders.>")
        async def audit(event):
            ...

        async with trio.open_nursery() as nursery:
            server = await nursery.start(broker.serve, "127.0.0.1", 8765)
            print("clients connect to", server.url)

    Args:
        bus: An open bus to expose (it then keeps its own store). By default the broker opens
            its own bus while it serves, with *store* and *persist*.
        store: Where persisted events are kept (see :func:`~trio_realtime.open_bus`).
        persist: Patterns of the topics to store (default: all but ``$…`` and ``_inbox.…``).
        name: The broker's name, sent to clients in ``welcome``.
        heartbeat: Seconds between heartbeats; a client silent for two is closed.
        handshake_timeout: Seconds a new connection has to complete the WebSocket handshake
            and send ``hello``.
        max_message_size: Largest message (bytes) a client may send, and the largest the
            broker sends; a bigger one received closes the connection (1009). An event must
            fit in one message: one whose encoding exceeds :attr:`max_event_size` is refused.
        max_connections: Most connections at once; one more is refused at the handshake with
            HTTP 503. By default, the process's file-descriptor limit less 128 (for the
            store, the listeners and refusals under way), at most 65,536.
        max_subscriptions: Most subscriptions one connection may hold; one more is refused
            with error code ``limit``.
        max_retained: Most retained values (by topic); retaining one more evicts the value
            updated longest ago. By default 100,000 (pass it to :func:`open_bus` when you
            pass a *bus*).
        max_pending_bytes: Bytes of frames queued for one client. Past it, its events meet
            *slow_consumer*, and the broker reads no more of its requests until it reads
            the answers.
        max_replays: ``since`` replays one connection may have under way at once; a
            further ``subscribe`` with ``since`` waits for one to finish (and the broker
            reads nothing else from that client meanwhile). ``history`` requests are
            answered one at a time.
        session_buffer: Events queued for one client before *slow_consumer* applies.
        slow_consumer: ``"drop_oldest"`` (the client loses the oldest queued events and gets a
            ``gap`` frame with the count) or ``"disconnect"`` (it is closed with code 4001).
        stats_interval: Seconds between ``$sys.stats`` events (None: never).
        shutdown_timeout: Seconds to close clients gracefully when ``serve`` is cancelled.
        auth: An :class:`~trio_realtime.security.Authenticator` that checks each client's
            ``hello`` token and says who it is and what it may do (see :doc:`security`).
            None (the default): every client is anonymous, with full access. A client it
            refuses gets error code ``auth_failed``, then close code 1008; the refusal is
            counted (``errors["auth_failed"]``) and published on ``$sys.auth.failed``.
        publish_rate: Publishes per second one connection may make, or None (no limit). A
            token bucket of *publish_burst*: a publish over it is refused with error code
            ``rate_limited`` (not routed; counted in ``errors["rate_limited"]``), and a
            connection that goes on regardless (1,000 refusals in a row) is closed with 1008.
        user_publish_rate: Publishes per second all the connections of one authenticated
            user may make together, or None; refused the same way.
        publish_burst: Publishes a connection (or a user) may make at once above the rate.
        allowed_origins: Glob patterns (``*`` any characters, ``?`` one; case does not
            count) of the web pages that may connect: a handshake with an ``Origin`` header
            (sent by browsers) that matches none is refused with HTTP 403 and counted
            (``errors["origin_refused"]``); one without an ``Origin`` (a program, not a
            browser) is not checked. None (the default): without *auth*, only pages from
            this machine (``http`` or ``https`` on ``localhost``, ``127.0.0.1`` or
            ``[::1]``, any port); with *auth*, any origin. See :doc:`security`.
        advertise_urls: The ``ws://`` (or all ``wss://``) URLs of the cluster's other nodes,
            as clients reach them, at most 32: sent in every ``welcome`` (``nodes``), and
            added by clients to the brokers they fail over to (see :func:`open_client`). The
            same list on every node is fine (a client skips the URLs it already has).
        cluster: Join a cluster through NATS (see :doc:`cluster`): events published here
            reach the subscribers of the other brokers given the same NATS servers and
            prefix, and theirs reach these. The broker is not :attr:`ready` while NATS is
            unreachable, and its ``$sys`` events carry its node name (``node``). Needs the
            ``nats`` extra.
    """

    @property
    def bus(self) -> Bus:
        """The broker's bus: publish and subscribe in process alongside remote clients.

        Raises:
            RuntimeError: if the broker opens its own bus and is not serving.
        """
        if self._bus is None:
            raise RuntimeError("the broker's bus exists only while the broker serves")
        return self._bus

    def on(
        self,
        pattern: str,
        *,
        group: str | None = None,
        max_buffer_size: float = DEFAULT_BUFFER_SIZE,
        overflow: OverflowLike = Overflow.BLOCK,
    ) -> Callable[[Actor], Actor]:
        """Register an actor: a handler run for each event matching *pattern*, as a decorator.

        The handler (a function or coroutine function taking the :class:`Event`) runs under
        the broker's supervision while it serves, one event at a time in order. An exception
        in it is logged and counted and never stops the broker or other actors. It can
        publish through :attr:`bus`. With *group*, actors sharing a group share the events.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
        """
        validate_pattern(pattern)
        if self._serving:
            raise RuntimeError("register actors before the broker serves")

        def register(handler: Actor) -> Actor:
            self._actors.append(ActorSpec(pattern, group, handler, max_buffer_size, overflow))
            return handler

        return register

    def webhook(
        self,
        name: str,
        url: str,
        patterns: str | Sequence[str],
        *,
        secret: str | bytes | Sequence[str | bytes],
        timeout: float = hooks.DEFAULT_TIMEOUT,
        attempts: int = hooks.DEFAULT_ATTEMPTS,
        backoff: float = hooks.DEFAULT_BACKOFF,
        max_backoff: float = hooks.DEFAULT_MAX_BACKOFF,
        buffer: int = hooks.DEFAULT_BUFFER,
        max_pending: int = hooks.DEFAULT_MAX_PENDING,
        concurrency: int = hooks.DEFAULT_CONCURRENCY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> hooks.Webhook:
        """Post the events matching *patterns* to *url* while the broker serves (a webhook).

        Each event is a ``POST`` of a structured CloudEvent, signed as Standard Webhooks
        says, retried with backoff; events of stored topics are delivered at least once
        (the endpoint keeps a cursor in the store), others at most once. See
        :doc:`integrations` for the whole story. Needs the ``webhooks`` extra.

        Args:
            name: The endpoint's name (letters, digits, ``_``, ``-``; at most 64).
            url: An ``http://`` or ``https://`` URL. Redirects are not followed.
            patterns: A pattern, or a list of them.
            secret: The signing secret (``whsec_<base64>``, as
                :func:`~trio_realtime.integrations.new_webhook_secret` makes), or a list of
                them while rotating: every request is signed with each.
            timeout: Seconds one attempt may take, answer included.
            attempts: Attempts at one event, the first included.
            backoff: The longest wait before the first retry; it doubles for each later one,
                up to *max_backoff*, and each wait is drawn at random below it.
            max_backoff: The longest wait between attempts, and the most a ``Retry-After``
                is honoured.
            buffer: Events waiting for their first attempt; past it, stored events are read
                from the store later and others are dropped (counted).
            max_pending: Events under way (sent, or waiting for a retry) at once.
            concurrency: Requests open at once.
            transport: An httpx transport to post through (a proxy, client certificates, or
                ``httpx.MockTransport`` in tests); by default httpx's own.

        Raises:
            ValueError: for a setting that is wrong (TypeError for one of the wrong type), or
                a name already used.
            RuntimeError: if the broker is serving.
            ImportError: without the ``webhooks`` extra.
        """
        hook = hooks.Webhook.build(
            name,
            url,
            patterns,
            secret=secret,
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            buffer=buffer,
            max_pending=max_pending,
            concurrency=concurrency,
        )
        if self._serving:
            raise RuntimeError("add webhooks before the broker serves")
        if hook.name in self._webhooks:
            raise ValueError(f"name: there is already a webhook named {hook.name!r}")
        try:
            from ..integrations._webhook_delivery import WebhookDelivery
        except ImportError as exc:
            raise ImportError(
                f"webhooks need httpx and tenacity ({exc}): pip install 'trio-realtime[webhooks]'"
            ) from exc
        self._webhooks[hook.name] = WebhookDelivery(hook, transport=transport)
        return hook

    # -- serving --------------------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[BrokerServer] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Serve clients on *host*:*port* until cancelled; a startable task.

        ``server = await nursery.start(broker.serve, host, port)`` returns once the broker
        listens, with its :class:`BrokerServer` (``server.port`` is the real port when *port*
        is 0). Cancelling it closes every client with code 1001 within ``shutdown_timeout``.

        Raises:
            OSError: if it cannot listen on *host*:*port*.
            RuntimeError: if the broker is already serving.
        """
        if self._serving:
            raise RuntimeError("this broker is already serving")
        # Bound before the store is opened: a port in use fails first (and an SQLite store
        # leaves no new file behind).
        bound = await bind(host, port)
        self._serving = True
        self._shutting_down = False
        try:
            if self._bus is not None:
                await self._serve(self._bus, host, port, bound, ssl_context, task_status)
            async with open_bus(
                source=self.name,
                store=self._store,
                persist=self._persist,
                max_retained=self._max_retained,
            ) as bus:
                self._bus = bus
                try:
                    await self._serve(bus, host, port, bound, ssl_context, task_status)
                finally:
                    self._bus = None
        except BaseExceptionGroup as group:
            # Failing to listen (say, the port is taken) is one OSError: raise it as such.
            leaf = only_leaf(group)
            if isinstance(leaf, OSError):
                raise leaf from group
            raise
        finally:
            self._serving = False
            with trio.CancelScope(shield=True):
                for listener in bound:  # (closed by the accept loops once they ran)
                    await listener.aclose()

    async def _serve(
        self,
        bus: Bus,
        host: str,
        port: int,
        bound: list[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        task_status: trio.TaskStatus[BrokerServer],
    ) -> NoReturn:
        if self.cluster is None:
            await self._serve_bus(bus, host, port, bound, ssl_context, task_status)
        async with open_backplane(bus, self.cluster) as backplane:
            self._backplane = backplane
            try:
                await self._serve_bus(bus, host, port, bound, ssl_context, task_status)
            finally:
                self._backplane = None

    async def _serve_bus(
        self,
        bus: Bus,
        host: str,
        port: int,
        bound: list[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        task_status: trio.TaskStatus[BrokerServer],
    ) -> NoReturn:
        async with trio.open_nursery() as nursery:
            # Sessions live in a shielded scope so that cancelling serve() does not kill
            # them outright: first they are closed gracefully (1001), then the scope is
            # cancelled.
            sessions_scope = trio.CancelScope(shield=True)
            listener_scope = trio.CancelScope()
            server: BrokerServer = await nursery.start(
                self._run_sessions, host, port, bound, ssl_context, sessions_scope, listener_scope
            )
            self._sys_send, receive = trio.open_memory_channel[tuple[str, Any]](math.inf)
            await nursery.start(self._run_sys_events, bus, receive)
            for spec in self._actors:
                await nursery.start(self._run_actor, bus, spec)
            for delivery in self._webhooks.values():
                await nursery.start(delivery.serve, bus, self._sys_event)
            if self.stats_interval is not None:
                nursery.start_soon(self._publish_stats, bus, self.stats_interval)
            logger.info("broker %r listening on %s", self.name, server.url)
            self._listening = True
            task_status.started(server)
            try:
                await trio.sleep_forever()
            finally:
                self._listening = False
                with trio.CancelScope(shield=True):
                    listener_scope.cancel()
                    with trio.move_on_after(self.shutdown_timeout):
                        await self._close_sessions()
                    sessions_scope.cancel()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_sessions(
        self,
        host: str,
        port: int,
        bound: list[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        sessions_scope: trio.CancelScope,
        listener_scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[BrokerServer],
    ) -> None:
        with sessions_scope:
            async with trio.open_nursery() as sessions:
                # The sessions' heartbeats: one task for all, living as long as they do.
                heartbeats = HeartbeatTimers()
                await sessions.start(heartbeats.serve)
                self._session_context = SessionContext(
                    bus=self.bus,
                    limits=self._session_limits,
                    counters=self._counters,
                    started=self._session_started,
                    ended=self._session_ended,
                    heartbeats=heartbeats,
                    auth=self.auth,
                    auth_failed=self._auth_failed,
                )
                bound_port: int = await sessions.start(
                    self._listen, host, port, bound, ssl_context, sessions, listener_scope
                )
                scheme = "wss" if ssl_context is not None else "ws"
                shown = f"[{host}]" if ":" in host else host
                task_status.started(
                    BrokerServer(host=host, port=bound_port, url=f"{scheme}://{shown}:{bound_port}")
                )

    async def _listen(
        self,
        host: str,
        port: int,
        bound: list[trio.SocketListener],
        ssl_context: ssl.SSLContext | None,
        sessions: trio.Nursery,
        listener_scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[int],
    ) -> None:
        with listener_scope:
            await listen(
                self._handle_connection,
                host,
                port,
                ssl_context=ssl_context,
                handler_nursery=sessions,
                max_message_size=self.max_message_size,
                handshake_timeout=self.handshake_timeout,
                gate=self._gate,
                bound=bound,
                task_status=task_status,
            )

    async def _run_sys_events(
        self,
        bus: Bus,
        receive: trio.MemoryReceiveChannel[tuple[str, Any]],
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        task_status.started()
        async with receive:
            async for topic, data in receive:
                if self.cluster is not None:
                    data = {**data, "node": self.cluster.node}
                try:
                    await bus.publish(topic, data)
                except trio.ClosedResourceError:
                    return

    async def _run_actor(
        self, bus: Bus, spec: ActorSpec, *, task_status: trio.TaskStatus[None]
    ) -> None:
        name = getattr(spec.handler, "__qualname__", repr(spec.handler))
        async with bus.subscribe(
            spec.pattern,
            group=spec.group,
            max_buffer_size=spec.max_buffer_size,
            overflow=spec.overflow,
        ) as sub:
            task_status.started()
            async for event in sub:
                try:
                    result = spec.handler(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    self._actor_errors += 1
                    logger.exception(
                        "actor %s failed on event %s (%r)", name, event.id, event.topic
                    )

    async def _publish_stats(self, bus: Bus, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            try:
                stats = attrs.asdict(self.statistics())
                if self.cluster is not None:
                    stats["node"] = self.cluster.node
                await bus.publish("$sys.stats", stats)
            except trio.ClosedResourceError:
                return

    @property
    def ready(self) -> bool:
        """Whether the broker serves: it listens (its store open), is not draining its
        clients to shut down, and (with a cluster) reaches NATS. What the HTTP side port's
        ``/readyz`` answers."""
        backplane = self._backplane
        cluster_up = self.cluster is None or (backplane is not None and backplane.connected)
        return self._listening and not self._shutting_down and cluster_up

    @property
    def backplane(self) -> Backplane | None:
        """The broker's link to its cluster while it serves with ``cluster=`` (else None)."""
        return self._backplane

    def connections_by_user(self) -> dict[str, int]:
        """Clients connected now, by the user the broker authenticated them as (empty when
        it does not authenticate)."""
        users: Counter[str] = Counter()
        for session in self._sessions.values():
            if session.user is not None:
                users[session.user] += 1
        return dict(users)

    def store_statistics(self) -> StoreStatistics | None:
        """The statistics of the broker's store while it is open; None without a store (or
        before it is open)."""
        store = self._bus.store if self._bus is not None else None
        return None if store is None else store.statistics()

    async def serve_http(
        self,
        host: str = "127.0.0.1",
        port: int = 8222,
        *,
        ws_url: str | None = None,
        task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the HTTP side port on *host*:*port* until cancelled; a startable task.

        ``http = await nursery.start(broker.serve_http, "127.0.0.1", 0)`` returns once it
        listens, with its :class:`HttpServer` (the real port when *port* is 0). It answers
        ``/`` (the live dashboard, a web page that connects to the broker over WebSocket:
        to *ws_url*, the broker's URL as browsers reach it, when given; else to port 8765 on
        the page's host, unless the page's address says ``?ws=URL``), ``/metrics``
        (Prometheus text, read from :meth:`statistics` and the store's at scrape time),
        ``/healthz`` (200) and ``/readyz`` (200 when :attr:`ready`, else 503). Start it
        before or beside :meth:`serve`: it answers 503 until the broker listens. Bind it to a
        loopback or otherwise private address: it has no authentication. Needs the ``http``
        extra (hypercorn and prometheus-client).

        Raises:
            OSError: if it cannot listen on *host*:*port*.
            ImportError: without the ``http`` extra.
        """
        await serve_http(self, host, port, ws_url=ws_url, task_status=task_status)

    def statistics(self) -> BrokerStatistics:
        """A snapshot of what the broker has seen."""
        bus = self._bus.statistics() if self._bus is not None else None
        gate = self._gate
        counters = self._counters
        errors = Counter(counters.errors)
        errors["handshake_timeout"] += gate.handshake_timeouts
        errors["accept_failed"] += gate.accept_failures
        errors["origin_refused"] += gate.origin_refused
        limits = Counter(counters.limits)
        limits["max_connections"] += gate.refused
        limits["max_retained"] += bus.retained_evicted if bus else 0
        return BrokerStatistics(
            connections=len(self._sessions),
            connections_total=self._connections_total,
            subscriptions=bus.subscriptions if bus else 0,
            events_in=counters.events_in,
            events_out=counters.events_out,
            bytes_in=counters.bytes_in,
            bytes_out=counters.bytes_out,
            published=bus.published if bus else 0,
            dropped=bus.dropped if bus else 0,
            stored=bus.stored if bus else 0,
            actor_errors=self._actor_errors,
            errors={code: n for code, n in errors.items() if n},
            limits={name: n for name, n in limits.items() if n},
            webhooks={name: hook.statistics() for name, hook in self._webhooks.items()},
            cluster=self._backplane.statistics() if self._backplane is not None else None,
        )


class BrokerOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Broker` (all optional), as :func:`serve_broker`
    takes them; see :class:`Broker` for what each means."""

    bus: Bus | None
    store: Store | None
    persist: Sequence[str] | None
    name: str
    heartbeat: float
    handshake_timeout: float
    max_message_size: int
    max_connections: int | None
    max_subscriptions: int
    max_retained: int | None
    max_pending_bytes: int
    max_replays: int
    session_buffer: int
    slow_consumer: Literal["drop_oldest", "disconnect"]
    stats_interval: float | None
    shutdown_timeout: float
    auth: Authenticator | None
    publish_rate: float | None
    user_publish_rate: float | None
    publish_burst: int
    allowed_origins: Sequence[str] | None
    advertise_urls: Sequence[str]
    cluster: ClusterOptions | None


async def serve_broker(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[BrokerServer] = trio.TASK_STATUS_IGNORED,
    **broker_options: Unpack[BrokerOptions],
) -> NoReturn:
    """Run a :class:`Broker` built with *broker_options* on *host*:*port*; a startable task.

    ``server = await nursery.start(serve_broker, "127.0.0.1", 0)`` is the shortcut for
    ``await nursery.start(Broker(**broker_options).serve, "127.0.0.1", 0)``. The options are
    :class:`BrokerOptions`: the keyword arguments of :class:`Broker`, type-checked.
    """
    await Broker(**broker_options).serve(
        host, port, ssl_context=ssl_context, task_status=task_status
    )
