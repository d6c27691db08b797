"""What a bus and a backplane attached to it tell each other (the cluster's side of the bus).

A backplane (:mod:`trio_realtime.cluster`) shares a bus's events with the buses of other
nodes. It attaches to the bus like a session does: :meth:`Bus.attach_remote
<trio_realtime.Bus.attach_remote>`. From then on the bus

* tells it each sink pattern added and removed (:meth:`Remote.interest_added`,
  :meth:`Remote.interest_removed`), so that it receives from other nodes only what someone
  here listens to;
* hands it each event published here as it routes it (:meth:`Remote.forward`), with the
  queue groups a member of which on this node took the event, so that a group gets each
  event once across the cluster;
* asks it, for a request nothing here subscribes to, whether it can be sent on
  (:attr:`Remote.reachable`): if not, the request fails at once with
  :exc:`~trio_realtime.NoResponders`, as on a lone bus.

The other way, the backplane delivers what other nodes published with
:meth:`Bus.route_remote <trio_realtime.Bus.route_remote>` (to this node's sinks only: an
event from elsewhere is never forwarded again, stored or retained), and keeps the retained
values of other nodes with :meth:`Bus.set_remote_retained
<trio_realtime.Bus.set_remote_retained>`. :meth:`Bus.route_local
<trio_realtime.Bus.route_local>` routes an event to this node's sinks without forwarding it:
for events that reach every node another way (persisted events read from a shared store).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._event import Event

__all__ = ["Remote"]


class Remote(Protocol):
    """A backplane attached to a bus. Every method is synchronous, never blocks and never
    raises: the bus calls them on its routing path."""

    @property
    def reachable(self) -> bool:
        """Whether an event forwarded now would be sent on (the backplane is connected and
        has room to queue it)."""

    def interest_added(self, pattern: str, group: str | None) -> None:
        """A sink with *pattern* (in queue group *group*, or None) was added to the bus."""

    def interest_removed(self, pattern: str, group: str | None) -> None:
        """A sink added with *pattern* and *group* was removed."""

    def forward(self, event: Event, *, served: Sequence[str], routed: bool, retain: bool) -> None:
        """Share *event*, published on this node, with the other nodes.

        Args:
            event: The event, as routed here.
            served: The queue groups one member of which on this node takes the event: other
                nodes' members of these groups must not get it too.
            routed: Whether any sink of this node takes it (a request that none takes is
                sent so that the other nodes' absence of responders can be told).
            retain: Whether it was published as its topic's retained value.
        """

    def share_retained(self, event: Event) -> None:
        """*event*, published on this node on a persisted topic of a shared store, became
        its topic's retained value: every node routes it from the store, but a node that
        starts later learns the value only from the backplane."""

    def clear_retained(self, topic: str) -> None:
        """The retained value of *topic* was cleared on this node."""
