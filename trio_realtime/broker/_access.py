"""What one connection may do: its user, permissions, inbox, leave to reply, and expiry.

A session holds one :class:`Access`. The authenticator's :class:`~trio_realtime.security.
Identity` sets it at ``hello`` and again at each ``refresh`` (:meth:`Access.take`); the
session asks it about each publish and subscription, tells it of each request delivered
(:meth:`Access.received`), and waits on :meth:`Access.wait_expired`.

Without permissions (no authenticator, or unrestricted ones) every answer is yes, and the
checks cost one attribute test.
"""

from __future__ import annotations

import math
import time

import trio

from .._topics import INBOX_PREFIX
from ..security import Identity, Permissions, SubscribeDecision
from ..security._inboxes import ResponseGrants, in_inbox, new_connection_inbox

__all__ = ["Access"]


class Access:
    """One connection's rights, as its current credential gives them."""

    def __init__(self) -> None:
        #: The connection's own inbox (``welcome.inbox``).
        self.inbox = new_connection_inbox()
        #: The user the authenticator named, or None when the broker does not authenticate.
        self.user: str | None = None
        #: What the user may do; None: everything (no authentication, or full permissions).
        self.permissions: Permissions | None = None
        #: The requests received that the connection may answer (with allow_responses,
        #: under restricted permissions); None: no leave to answer beyond the publish rules.
        self.grants: ResponseGrants | None = None
        #: When the credential expires, in UNIX time; None: never.
        self.expires: float | None = None
        #: ``refresh`` tokens refused in a row.
        self.refused_refreshes = 0
        self._deadline = math.inf  # the expiry, on the Trio clock
        self._wake: trio.CancelScope | None = None

    def take(self, identity: Identity) -> None:
        """Act with *identity*'s permissions, until its credential expires."""
        self.user = identity.user
        permissions = identity.permissions
        if permissions.unrestricted:
            self.permissions = self.grants = None
        else:
            self.permissions = permissions
            responses = permissions.allow_responses
            if responses is None:
                self.grants = None
            elif self.grants is None or self.grants.permission != responses:
                self.grants = ResponseGrants(responses)
        self.expires = identity.expires
        if identity.expires is None:
            self._deadline = math.inf
        else:
            # (The credential's time is the wall clock's; the deadline is on Trio's, so that
            # a clock that steps does not move it.)
            self._deadline = trio.current_time() + (identity.expires - time.time())
        if self._wake is not None:
            self._wake.cancel()

    def expires_in(self) -> float | None:
        """Seconds until the credential expires (0 once it has), or None if it does not."""
        if self._deadline == math.inf:
            return None
        return max(0.0, self._deadline - trio.current_time())

    async def wait_expired(self) -> None:
        """Return once the credential has expired (each :meth:`take` moves the deadline)."""
        while True:
            with trio.CancelScope() as wake:
                self._wake = wake
                await trio.sleep_until(self._deadline)
            self._wake = None
            if not wake.cancelled_caught:
                return

    def check_subscribe(self, pattern: str, group: str | None) -> SubscribeDecision | None:
        """The permissions' decision on a subscription to *pattern* in *group*; None when
        there are no permissions to check.

        Raises:
            InvalidTopic: if *pattern* is not a valid pattern.
        """
        permissions = self.permissions
        if permissions is None:
            return None
        return permissions.check_subscribe(pattern, group, inbox=self.inbox)

    def check_publish(self, topic: str, reply_to: str | None) -> tuple[str | None, bool]:
        """Whether the connection may publish to *topic* with *reply_to* (both valid):
        ``(refusal, reply)``, *refusal* the reason it may not (None: it may), *reply* true
        when the publish is an answer that takes one of its grants (see :meth:`replied`)."""
        permissions = self.permissions
        if permissions is None:
            return None, False
        inbox = self.inbox
        if reply_to is not None and not in_inbox(reply_to, inbox):
            why = (
                f"reply_to {reply_to!r} is not in this connection's inbox {inbox!r} "
                "(welcome.inbox): replies come only there"
            )
            return why, False
        if permissions.may_publish(topic):
            return None, False
        user = self.user
        if not topic.startswith(INBOX_PREFIX):
            return f"user {user!r} may not publish to {topic!r}", False
        if in_inbox(topic, inbox):
            return None, False
        grants = self.grants
        if grants is None:
            why = (
                f"user {user!r} may not publish to {topic!r}: an inbox takes replies only, "
                "and this user may not answer requests (allow_responses)"
            )
            return why, False
        if not grants.allows(topic, trio.current_time()):
            permission = grants.permission
            why = (
                f"user {user!r} may not publish to {topic!r}: an inbox takes only replies to "
                f"a request this connection received, {permission.max} per request within "
                f"{permission.expires:g} s of receiving it (allow_responses)"
            )
            return why, False
        return None, True

    def check_cancel(self, topic: str, reply_to: str) -> str | None:
        """Why the connection may not cancel its request to *topic* with *reply_to* (both
        valid), or None if it may.

        A connection cancels only its own requests: their ``reply_to`` lies in its inbox,
        whatever its permissions. Under permissions, also only where it may publish (as the
        request itself had to be).
        """
        inbox = self.inbox
        if not in_inbox(reply_to, inbox):
            return (
                f"reply_to {reply_to!r} is not in this connection's inbox {inbox!r} "
                "(welcome.inbox): a connection cancels only its own requests"
            )
        permissions = self.permissions
        if permissions is not None and not permissions.may_publish(topic):
            return f"user {self.user!r} may not publish to {topic!r}"
        return None

    def replied(self, topic: str) -> None:
        """A reply to *topic* that :meth:`check_publish` allowed is being routed."""
        if self.grants is not None:
            self.grants.take(topic, trio.current_time())

    def received(self, reply_to: str) -> bool:
        """A request with *reply_to* is being delivered to the connection: it may answer
        (with allow_responses). Whether an older leave to answer was forgotten for room."""
        grants = self.grants
        return grants is not None and grants.grant(reply_to, trio.current_time())
