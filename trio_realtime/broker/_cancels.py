"""Cancelled requests on the broker: what a connection was asked, so that a cancel finds it.

A client's ``cancel`` names one of its own requests (the broker checks that its ``reply_to``
lies in the connection's inbox: :meth:`~trio_realtime.broker._access.Access.check_cancel`)
and goes to the bus (:meth:`~trio_realtime.Bus.route_cancel`) by the request's topic, as
the request went, so that the broker keeps nothing per request on the requester's side. The
bus hands it to every session with a subscription on that topic; only the session the request
was delivered to, which still waits for its reply, passes it on to its client (a ``cancel``
frame). That is :class:`DeliveredRequests`: per connection, the requests delivered to it and
not answered yet, by ``reply_to``, bounded.
"""

from __future__ import annotations

__all__ = ["DeliveredRequests"]


class DeliveredRequests:
    """The requests delivered to one connection that it has not answered: ``reply_to`` →
    the request's id, in the order delivered, at most *limit* (the oldest is forgotten)."""

    __slots__ = ("_ids", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        self.limit = limit
        self._ids: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, request_id: str, reply_to: str) -> bool:
        """The request *request_id* with *reply_to* was delivered; whether an older one was
        forgotten to make room."""
        ids = self._ids
        forgot = False
        if reply_to not in ids and len(ids) >= self.limit:
            del ids[next(iter(ids))]
            forgot = True
        ids[reply_to] = request_id
        return forgot

    def answered(self, topic: str) -> None:
        """The connection published to *topic*: if it is a request's ``reply_to``, that request
        is answered."""
        self._ids.pop(topic, None)

    def take(self, request_id: str, reply_to: str) -> bool:
        """Whether the request *request_id* with *reply_to* was delivered and not answered; if
        so, it is forgotten (its cancel is passed on once)."""
        ids = self._ids
        if ids.get(reply_to) != request_id:
            return False
        del ids[reply_to]
        return True
