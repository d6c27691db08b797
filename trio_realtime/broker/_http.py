"""The broker's HTTP side port: a live dashboard, Prometheus metrics, liveness and readiness.

``await nursery.start(broker.serve_http, "127.0.0.1", 8222)`` serves, beside the broker's
WebSocket port:

* ``/``: the live dashboard, static files shipped in the package (``dashboard/``: HTML,
  JavaScript and CSS, no build step, nothing fetched from elsewhere). The page is a browser
  client of the broker's own WebSocket protocol: it reads ``$sys.stats`` and tails a pattern;
* ``/config.json``: ``{"ws": URL}``, the broker's WebSocket URL for the page when
  *ws_url* was given (else null: the page then tries port 8765 on its own host);
* ``/asyncapi.json``: an AsyncAPI 3.0 document of the event types registered in the
  broker's process (:func:`trio_realtime.integrations.asyncapi_document`), with *ws_url*
  as its server;
* ``/metrics``: the Prometheus text exposition of what :meth:`Broker.statistics` and the
  store's statistics know, read at scrape time (nothing is counted on the hot path for it);
* ``/healthz``: 200 while the process serves HTTP at all (liveness);
* ``/readyz``: 200 once the broker listens (its store open), 503 before and while it drains
  its clients at shutdown, and while a clustered broker cannot reach NATS (readiness).

The HTTP server is hypercorn's Trio worker (a maintained HTTP/1.1 and HTTP/2 server that runs
in the broker's own Trio run), and the exposition prometheus-client's: the ``http`` extra
installs both (``pip install 'trio-realtime[http]'``).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from ..integrations._asyncapi import asyncapi_json

if TYPE_CHECKING:
    from ..store import StoreStatistics

__all__ = ["HttpServer", "dashboard_files", "metrics_text", "serve_http"]

logger = logging.getLogger("trio_realtime.http")

#: The metric names' prefix.
PREFIX: Final = "trio_realtime"

#: The dashboard's files (in the package's ``dashboard/`` folder) and their content types.
DASHBOARD_FILES: Final = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "style.css": b"text/css; charset=utf-8",
}
#: What the dashboard's page may load and connect to: its own files, and WebSockets.
_PAGE_POLICY: Final = (
    b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"
)

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Broker(Protocol):
    """What the side port reads of a :class:`~trio_realtime.Broker`."""

    @property
    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200."""
        ...

    def statistics(self) -> Any:
        """The broker's figures (a :class:`~trio_realtime.BrokerStatistics`)."""
        ...

    def connections_by_user(self) -> dict[str, int]:
        """Clients connected now, by user."""
        ...

    def store_statistics(self) -> StoreStatistics | None:
        """The store's figures, if it has an open store."""
        ...


@attrs.frozen
class HttpServer:
    """Where the broker's HTTP side port listens (what :meth:`Broker.serve_http` starts
    with)."""

    #: The address it is bound to.
    host: str
    #: The port (the real one when 0 was asked for).
    port: int
    #: ``http://host:port``.
    url: str


def _need(module: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:  # pragma: no cover - the http extra is installed for the tests
        raise ImportError(
            f"the broker's HTTP port needs {module.split('.')[0]}: "
            "pip install 'trio-realtime[http]'"
        ) from exc


def _families(broker: Broker) -> Iterator[Any]:
    """The metric families, read from the broker now."""
    core = _need("prometheus_client.core")
    counter, gauge = core.CounterMetricFamily, core.GaugeMetricFamily
    stats = broker.statistics()
    yield gauge(f"{PREFIX}_ready", "1 when the broker listens and is not draining", broker.ready)
    yield gauge(f"{PREFIX}_connections", "Clients connected now", stats.connections)
    yield counter(
        f"{PREFIX}_connections", "Clients that connected since the start", stats.connections_total
    )
    yield gauge(
        f"{PREFIX}_subscriptions",
        "Subscriptions on the bus now (remote and in process)",
        stats.subscriptions,
    )
    yield counter(f"{PREFIX}_events_in", "Events clients published", stats.events_in)
    yield counter(f"{PREFIX}_events_out", "Events sent to clients", stats.events_out)
    yield counter(f"{PREFIX}_received_bytes", "Bytes of the messages clients sent", stats.bytes_in)
    yield counter(f"{PREFIX}_sent_bytes", "Bytes of the messages sent to clients", stats.bytes_out)
    yield counter(f"{PREFIX}_events_published", "Events published on the bus", stats.published)
    yield counter(
        f"{PREFIX}_events_dropped", "Events lost to overflow (slow consumers)", stats.dropped
    )
    yield counter(f"{PREFIX}_events_stored", "Events stored", stats.stored)
    yield counter(f"{PREFIX}_actor_errors", "Exceptions raised by actors", stats.actor_errors)
    errors = counter(f"{PREFIX}_errors", "Errors answered or met, by error code", labels=["code"])
    for code, n in sorted(stats.errors.items()):
        errors.add_metric([code], n)
    yield errors
    limits = counter(
        f"{PREFIX}_limit_hits", "Times a configured limit was hit, by limit", labels=["limit"]
    )
    for name, n in sorted(stats.limits.items()):
        limits.add_metric([name], n)
    yield limits
    by_user = gauge(
        f"{PREFIX}_user_connections",
        "Clients connected now, by authenticated user",
        labels=["user"],
    )
    for user, n in sorted(broker.connections_by_user().items()):
        by_user.add_metric([user], n)
    yield by_user
    yield from _webhook_families(stats.webhooks)
    cluster = stats.cluster
    if cluster is not None:
        yield from _cluster_families(cluster)
    store = broker.store_statistics()
    if store is not None:
        yield gauge(f"{PREFIX}_store_events", "Events the store holds now", store.events_stored)
        yield gauge(f"{PREFIX}_store_last_seq", "The highest seq assigned", store.last_seq)
        yield counter(
            f"{PREFIX}_store_transactions",
            "Write transactions (group commits)",
            store.transactions,
        )
        yield counter(
            f"{PREFIX}_store_events_appended",
            "Events the transactions stored",
            store.events_appended,
        )
        yield gauge(
            f"{PREFIX}_store_largest_transaction",
            "Events in the largest transaction",
            store.largest_transaction,
        )
        yield gauge(
            f"{PREFIX}_store_pending_appends",
            "Appends waiting for their transaction",
            store.pending_appends,
        )
        yield counter(f"{PREFIX}_store_reads", "Reads answered", store.reads)
        yield counter(
            f"{PREFIX}_store_commit_seconds",
            "Seconds the write transactions took together (divide by the transactions for "
            "the average commit latency)",
            store.commit_seconds,
        )
        if store.size_bytes is not None:
            yield gauge(
                f"{PREFIX}_store_size_bytes", "Bytes the store takes on disk", store.size_bytes
            )
        yield counter(
            f"{PREFIX}_store_events_removed",
            "Events removed by retention",
            store.events_removed,
        )


def _webhook_families(webhooks: dict[str, Any]) -> Iterator[Any]:
    """The webhook endpoints' figures (their :class:`WebhookStatistics`), labelled by name."""
    core = _need("prometheus_client.core")
    families = {
        "delivered": (core.CounterMetricFamily, "webhook_delivered", "Events delivered"),
        "failed": (core.CounterMetricFamily, "webhook_failed", "Events given up"),
        "attempts": (core.CounterMetricFamily, "webhook_attempts", "Requests made"),
        "failed_attempts": (
            core.CounterMetricFamily,
            "webhook_failed_attempts",
            "Requests that did not succeed",
        ),
        "dropped": (
            core.CounterMetricFamily,
            "webhook_dropped",
            "Events of unstored topics lost to a full buffer",
        ),
        "retries_pending": (
            core.GaugeMetricFamily,
            "webhook_retries_pending",
            "Events waiting for their next attempt",
        ),
        "queued": (
            core.GaugeMetricFamily,
            "webhook_queued",
            "Events buffered for their first attempt",
        ),
        "disabled": (core.GaugeMetricFamily, "webhook_disabled", "1 when disabled"),
        "cursor": (
            core.GaugeMetricFamily,
            "webhook_cursor",
            "The seq up to which stored events are done with",
        ),
    }
    for field, (kind, name, text) in families.items():
        family = kind(f"{PREFIX}_{name}", text, labels=["webhook"])
        for hook, figures in sorted(webhooks.items()):
            value = getattr(figures, field)
            if value is not None:
                family.add_metric([hook], float(value))
        yield family


def _cluster_families(cluster: Any) -> Iterator[Any]:
    """The metric families of the cluster backplane (a
    :class:`~trio_realtime.cluster.ClusterStatistics`)."""
    core = _need("prometheus_client.core")
    counter, gauge = core.CounterMetricFamily, core.GaugeMetricFamily
    name = f"{PREFIX}_cluster"
    node = ["node"]
    values = [cluster.node]

    def one(family: Any, value: float) -> Any:
        family.add_metric(values, value)
        return family

    yield one(
        gauge(f"{name}_connected", "1 when NATS is reachable", labels=node), cluster.connected
    )
    for metric, text, value in (
        ("events_out", "Events published here and shared (queued for NATS)", cluster.events_out),
        ("not_shared", "Events published here that could not be shared", cluster.not_shared),
        ("events_in", "Events from other nodes delivered here", cluster.events_in),
        ("skipped", "Copies of events from other nodes not delivered again", cluster.skipped),
        (
            "bad_messages",
            "Messages on the cluster's subjects that were not events",
            cluster.bad_messages,
        ),
        ("dropped", "Messages from NATS dropped: taken in too slowly", cluster.dropped),
        ("batches", "Crossings to NATS that carried publishes", cluster.batches),
        ("disconnects", "Times the connection to NATS was lost", cluster.disconnects),
        ("no_responders", "Requests no node had a responder for", cluster.no_responders),
        ("cancels_out", "Cancels of requests sent to the other nodes", cluster.cancels_out),
        ("cancels_in", "Cancels of requests received from other nodes", cluster.cancels_in),
        ("retained_updates", "Retained values applied from other nodes", cluster.retained_updates),
    ):
        yield one(counter(f"{name}_{metric}", text, labels=node), value)
    for metric, text, value in (
        ("pending", "Messages queued for NATS, not handed over yet", cluster.pending),
        (
            "pending_seconds",
            "Seconds the oldest message queued for NATS has waited",
            cluster.pending_seconds,
        ),
        ("inbound_pending", "Messages from NATS not delivered yet", cluster.inbound_pending),
        ("interest", "NATS subscriptions held for this node's patterns", cluster.interest),
        (
            "retained_shared",
            "1 when retained values are shared through JetStream",
            bool(cluster.retained_shared),
        ),
    ):
        yield one(gauge(f"{name}_{metric}", text, labels=node), value)


class _BrokerCollector:
    """A prometheus-client collector that reads the broker at each scrape."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Any]:
        return _families(self._broker)


def metrics_text(broker: Broker) -> bytes:
    """The Prometheus text exposition of *broker*'s figures now (what ``/metrics`` answers)."""
    registry = _need("prometheus_client").CollectorRegistry(auto_describe=False)
    registry.register(_BrokerCollector(broker))
    text: bytes = _need("prometheus_client").generate_latest(registry)
    return text


def dashboard_files() -> dict[str, tuple[bytes, bytes]]:
    """The dashboard's files by URL path: ``(content type, body)``."""
    folder = importlib.resources.files("trio_realtime.broker") / "dashboard"
    files = {
        f"/{name}": (kind, (folder / name).read_bytes()) for name, kind in DASHBOARD_FILES.items()
    }
    files["/"] = files["/index.html"]
    return files


def _app(
    broker: Broker, ws_url: str | None = None
) -> Callable[[_Scope, _Receive, _Send], Awaitable[None]]:
    """The ASGI application of the side port."""
    content_type = _need("prometheus_client").CONTENT_TYPE_LATEST.encode()
    static = dashboard_files()
    static["/config.json"] = (b"application/json", json.dumps({"ws": ws_url}).encode())

    async def respond(send: _Send, status: int, body: bytes, kind: bytes) -> None:
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        if kind.startswith(b"text/html"):
            headers.append((b"content-security-policy", _PAGE_POLICY))
        headers.append((b"x-content-type-options", b"nosniff"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        text = b"text/plain; charset=utf-8"
        if scope["method"] not in ("GET", "HEAD"):
            await respond(send, 405, b"method not allowed\n", text)
            return
        path = scope["path"]
        if path in static:
            kind, body = static[path]
            await respond(send, 200, body, kind)
        elif path == "/asyncapi.json":
            try:  # (made at each request: event types may be registered at any time)
                catalogue = asyncapi_json(ws_url)
            except (TypeError, ValueError) as exc:  # a type it cannot describe, or a bad URL
                logger.warning("cannot serve /asyncapi.json: %s", exc)
                await respond(send, 500, f"{exc}\n".encode(), text)
            else:
                await respond(send, 200, catalogue, b"application/json")
        elif path == "/metrics":
            await respond(send, 200, metrics_text(broker), content_type)
        elif path == "/healthz":
            await respond(send, 200, b"ok\n", text)
        elif path == "/readyz":
            if broker.ready:
                await respond(send, 200, b"ready\n", text)
            else:
                await respond(send, 503, b"not ready\n", text)
        else:
            await respond(
                send, 404, b"not found: /, /asyncapi.json, /metrics, /healthz, /readyz\n", text
            )

    return app


async def serve_http(
    broker: Broker,
    host: str = "127.0.0.1",
    port: int = 8222,
    *,
    ws_url: str | None = None,
    task_status: trio.TaskStatus[HttpServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *broker*'s HTTP side port on *host*:*port* until cancelled; a startable task
    (started with the :class:`HttpServer` once it listens). *ws_url* is the broker's
    WebSocket URL as the dashboard's browsers should reach it (``/config.json``)."""
    hypercorn = _need("hypercorn")
    hypercorn_trio = _need("hypercorn.trio")
    config = hypercorn.Config()
    shown = f"[{host}]" if ":" in host else host
    config.bind = [f"{shown}:{port}"]
    config.accesslog = None
    config.errorlog = logger  # (hypercorn logs through the broker's logger tree)
    config.graceful_timeout = 1.0

    async def started(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await hypercorn_trio.serve(_app(broker, ws_url), config, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(started)
        bound = int(binds[0].rsplit(":", 1)[1])
        server = HttpServer(host=host, port=bound, url=f"http://{shown}:{bound}")
        logger.info(
            "HTTP side port listening on %s (/ dashboard, /metrics, /healthz, /readyz)",
            server.url,
        )
        task_status.started(server)
