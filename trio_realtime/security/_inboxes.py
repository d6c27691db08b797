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

__all__ = ["MAX_RESPONSE_GRANTS", "ResponseGrants", "in_inbox", "new_connection_inbox"]

#: Most requests a connection keeps leave to answer at once; past it, the oldest is
#: forgotten (and its requester gets no reply from this connection).
MAX_RESPONSE_GRANTS: Final = 10_000


def new_connection_inbox() -> str:
    """A new inbox for one connection: ``_inbox.`` and 128 random bits, in hex."""
    return f"{INBOX_PREFIX}{secrets.token_hex(16)}"


def in_inbox(topic: str, inbox: str) -> bool:
    """Whether *topic* is *inbox* or lies under it (``<inbox>.…``)."""
    return topic.startswith(inbox) and (len(topic) == len(inbox) or topic[len(inbox)] == ".")


class ResponseGrants:
    """The ``reply_to`` topics of the requests a connection received, each with the replies it
    still allows (``max``) until its deadline (``expires`` seconds after it was received).

    Times are the caller's clock (the broker uses :func:`trio.current_time`). At most *limit*
    grants are kept: granting one more forgets the expired ones, then the oldest.
    """

    __slots__ = ("_grants", "dropped", "limit", "permission")

    def __init__(self, permission: ResponsePermission, *, limit: int = MAX_RESPONSE_GRANTS) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.permission = permission
        self.limit = limit
        #: Grants forgotten before they expired, to make room for newer ones.
        self.dropped = 0
        # reply_to -> [replies left, deadline]; in the order granted, so by deadline
        self._grants: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._grants)

    def grant(self, reply_to: str, now: float) -> bool:
        """A request with *reply_to* was delivered to the connection at *now*; whether an
        older grant that had not expired was forgotten to make room.

        Granting a ``reply_to`` again (the request was delivered twice, or sent again)
        renews it: ``max`` replies from *now*.
        """
        grants = self._grants
        permission = self.permission
        dropped = False
        if reply_to in grants:
            del grants[reply_to]  # (to the end: the order stays that of the deadlines)
        elif len(grants) >= self.limit:
            dropped = self._make_room(now)
        grants[reply_to] = [permission.max, now + permission.expires]
        return dropped

    def _make_room(self, now: float) -> bool:
        grants = self._grants
        for reply_to in list(grants):
            if grants[reply_to][1] >= now:
                break
            del grants[reply_to]
        if len(grants) < self.limit:
            return False
        del grants[next(iter(grants))]
        self.dropped += 1
        return True

    def allows(self, topic: str, now: float) -> bool:
        """Whether the connection may publish a reply to *topic* at *now* (nothing counted:
        see :meth:`take`)."""
        grant = self._grants.get(topic)
        return grant is not None and now <= grant[1]

    def take(self, topic: str, now: float) -> bool:
        """Whether the connection may publish a reply to *topic* at *now*; if so, the reply
        is counted against the grant's ``max``."""
        grant = self._grants.get(topic)
        if grant is None:
            return False
        if now > grant[1]:
            del self._grants[topic]
            return False
        grant[0] -= 1
        if grant[0] <= 0:
            del self._grants[topic]
        return True
