"""Inboxes: each connection's own reply topic, and leave to answer the requests it received.

The broker gives every connection an inbox, ``_inbox.<32 hex digits>`` (128 random bits:
:func:`new_connection_inbox`), named in ``welcome.inbox``. Under a user's permissions:

* the connection may subscribe to its inbox and under it, and nowhere else under ``_inbox``;
* a request it publishes must have its ``reply_to`` in its inbox (:func:`in_inbox`);
* it may publish to another connection's inbox only to answer a request it received, when its
  user has ``allow_responses``: :class:`ResponseGrants` keeps, per ``reply_to`` received, the
  replies still allowed and until when.
"""

from __future__ import annotations

import secrets
from typing import Final

from .._topics import INBOX_PREFIX
from ._permissions import ResponsePermission

__all__ = [
    "MAX_RESPONSE_GRANTS",
    "MAX_RESPONSE_GRANTS_PER_INBOX",
    "ResponseGrants",
    "in_inbox",
    "new_connection_inbox",
]

#: Most requests a connection keeps leave to answer at once; past it, the expired grants are
#: forgotten, then the oldest of the requester with the most (and that request gets no reply
#: from this connection).
MAX_RESPONSE_GRANTS: Final = 10_000
#: Most of them for the requests of one inbox (one requesting connection), so that one
#: requester cannot crowd the others out.
MAX_RESPONSE_GRANTS_PER_INBOX: Final = 1_000


def new_connection_inbox() -> str:
    """A new inbox for one connection: ``_inbox.`` and 128 random bits, in hex."""
    return f"{INBOX_PREFIX}{secrets.token_hex(16)}"


def in_inbox(topic: str, inbox: str) -> bool:
    """Whether *topic* is *inbox* or lies under it (``<inbox>.…``)."""
    return topic.startswith(inbox) and (len(topic) == len(inbox) or topic[len(inbox)] == ".")


def _inbox_of(reply_to: str) -> str:
    """The inbox a ``reply_to`` lies in: its first two tokens (``_inbox.<id>``)."""
    first, _, rest = reply_to.partition(".")
    return f"{first}.{rest.partition('.')[0]}"


class ResponseGrants:
    """The inbox topics (``reply_to``) of the requests a connection received, each with the
    replies it still allows (``max``) until its deadline (``expires`` seconds after it was
    received).

    Times are the caller's clock (the broker uses :func:`trio.current_time`). At most *limit*
    grants are kept, and at most *per_inbox* for the requests of one inbox: granting one more
    forgets the inbox's oldest; or, when all of them are taken, the expired ones, then the
    oldest of the inbox that holds the most.
    """

    __slots__ = ("_by_inbox", "_count", "dropped", "limit", "per_inbox", "permission")

    def __init__(
        self,
        permission: ResponsePermission,
        *,
        limit: int = MAX_RESPONSE_GRANTS,
        per_inbox: int = MAX_RESPONSE_GRANTS_PER_INBOX,
    ) -> None:
        if not 1 <= per_inbox <= limit:
            raise ValueError(f"need 1 <= per_inbox <= limit, not {per_inbox}, {limit}")
        self.permission = permission
        self.limit = limit
        self.per_inbox = per_inbox
        #: Grants forgotten before they expired, to make room for newer ones.
        self.dropped = 0
        # inbox -> reply_to -> [replies left, deadline]; in the order granted, so by deadline
        self._by_inbox: dict[str, dict[str, list[float]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def grant(self, reply_to: str, now: float) -> bool:
        """A request with *reply_to* was delivered to the connection at *now*; whether an
        older grant that had not expired was forgotten to make room.

        Only an inbox topic (``_inbox.…``) is kept: another ``reply_to`` needs no leave (the
        publish rules decide). Granting a ``reply_to`` again (the requester sent the request
        again) renews it: ``max`` replies from *now*.
        """
        if not reply_to.startswith(INBOX_PREFIX):
            return False
        inbox = _inbox_of(reply_to)
        grants = self._by_inbox.setdefault(inbox, {})
        if grants.pop(reply_to, None) is not None:
            self._count -= 1
        self._expire(grants, now)
        dropped = False
        if len(grants) >= self.per_inbox:
            self._drop_oldest(inbox, grants)
            dropped = True
        elif self._count >= self.limit:
            dropped = self._make_room(now)
        permission = self.permission
        grants[reply_to] = [permission.max, now + permission.expires]
        self._by_inbox[inbox] = grants  # (making room may have let go of an empty one)
        self._count += 1
        return dropped

    def _expire(self, grants: dict[str, list[float]], now: float) -> None:
        """Forget the expired grants at the front of one inbox's."""
        while grants:
            reply_to = next(iter(grants))
            if grants[reply_to][1] >= now:
                return
            del grants[reply_to]
            self._count -= 1

    def _drop_oldest(self, inbox: str, grants: dict[str, list[float]]) -> None:
        del grants[next(iter(grants))]
        self._count -= 1
        self.dropped += 1
        if not grants:
            del self._by_inbox[inbox]

    def _make_room(self, now: float) -> bool:
        """Room for one more: forget the expired grants, else the oldest of the inbox with
        the most; whether a grant that had not expired was forgotten."""
        for inbox, grants in list(self._by_inbox.items()):
            self._expire(grants, now)
            if not grants:
                del self._by_inbox[inbox]
        if self._count < self.limit:
            return False
        inbox, grants = max(self._by_inbox.items(), key=lambda item: len(item[1]))
        self._drop_oldest(inbox, grants)
        return True

    def _find(self, topic: str) -> tuple[dict[str, list[float]], list[float]] | None:
        grants = self._by_inbox.get(_inbox_of(topic))
        if grants is None:
            return None
        grant = grants.get(topic)
        return None if grant is None else (grants, grant)

    def allows(self, topic: str, now: float) -> bool:
        """Whether the connection may publish a reply to *topic* at *now* (nothing counted:
        see :meth:`take`)."""
        found = self._find(topic)
        return found is not None and now <= found[1][1]

    def take(self, topic: str, now: float) -> bool:
        """Whether the connection may publish a reply to *topic* at *now*; if so, the reply
        is counted against the grant's ``max``."""
        found = self._find(topic)
        if found is None:
            return False
        grants, grant = found
        allowed = now <= grant[1]
        if allowed:
            grant[0] -= 1
        if not allowed or grant[0] <= 0:
            del grants[topic]
            self._count -= 1
            if not grants:
                del self._by_inbox[_inbox_of(topic)]
        return allowed
