"""The broker's hot path, sans I/O: one message of frames built around cached event texts.

An event fanned out to many connections is encoded once (the codec caches its text by
identity); each connection's writer then wraps that text in an ``event`` frame naming its own
subscription ids, and joins the frames of one message into a batch, without building frame
objects. :class:`MessageBuilder` does that for a :class:`~trio_realtime.protocol.Connection`
of the broker's side, and keeps each message under the size limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from ._codec import encode_event_frame_text, encode_event_sized
from ._connection import OPEN
from ._frames import EventFrame

if TYPE_CHECKING:
    from .._event import Event
    from ._connection import Connection
    from ._frames import ServerFrame

__all__ = ["FRAME_OVERHEAD", "MAX_BATCH", "MESSAGE_MARGIN", "SUB_ID_SIZE", "MessageBuilder"]

#: Frames one message holds at most.
MAX_BATCH: Final = 512
#: Bytes a frame adds around its event (type, punctuation), counted generously; ``subs``
#: adds :data:`SUB_ID_SIZE` per subscription id.
FRAME_OVERHEAD: Final = 64
#: Bytes one subscription id takes in ``subs`` at most (a 64-bit integer and a comma).
SUB_ID_SIZE: Final = 21
#: Bytes of a message left unused (the batch's brackets, rounding).
MESSAGE_MARGIN: Final = 64


class MessageBuilder:
    """Builds the messages a broker's connection sends, one at a time.

    ::

        builder = MessageBuilder(conn, max_message_size)
        builder.start()
        taken = builder.add_event(subs, event)  # how many of subs went in (0: message full)
        if builder.add_frame(Ack(...), cost): ...
        text = builder.finish()

    While the connection is open, event frames need no protocol checks or bookkeeping: their
    text is joined around each event's cached encoding; other frames go through the
    connection one by one (so that it records them). Otherwise (not open yet, or ended) the
    whole message goes through :meth:`Connection.send <trio_realtime.protocol.Connection.send>`,
    which checks it.

    Each message stays under *max_message_size* (at most :data:`MAX_BATCH` frames): an event
    always fits alone (the broker refuses larger ones at publish), and an event that matched
    more subscriptions than fit in one frame goes in several (see :meth:`add_event`).
    """

    __slots__ = ("_conn", "_fast", "_frames", "_parts", "budget", "count", "size")

    def __init__(self, conn: Connection[Any, Any], max_message_size: int) -> None:
        self._conn = conn
        #: Bytes one message may take, less a margin.
        self.budget: Final = max_message_size - MESSAGE_MARGIN
        self._fast = True
        self._parts: list[str] = []  # each frame's text, when fast
        self._frames: list[ServerFrame | _Raw] = []  # when not fast
        #: Frames in the message so far.
        self.count = 0
        #: Bytes the message takes so far (an upper bound).
        self.size = 0

    def start(self) -> None:
        """Begin a new message."""
        self._fast = self._conn.state is OPEN
        self._parts = []
        self._frames = []
        self.count = 0
        self.size = 0

    @property
    def full(self) -> bool:
        """The message holds :data:`MAX_BATCH` frames."""
        return self.count >= MAX_BATCH

    def add_frame(self, frame: ServerFrame, cost: int) -> bool:
        """Add *frame*, counted as *cost* bytes; False (nothing added) if it does not fit
        (a first frame always does)."""
        if self.count and self.size + cost > self.budget:
            return False
        if self._fast:
            self._parts.append(self._conn.send(frame))
        else:
            self._frames.append(frame)
        self.count += 1
        self.size += cost + 1
        return True

    def add_text(self, text: str, cost: int) -> None:
        """Add a frame the connection already turned into *text* (such as the ``welcome``
        sent while answering ``hello``), counted as *cost* bytes."""
        if self._fast:
            self._parts.append(text)
        else:
            self._frames.append(_Raw(text))
        self.count += 1
        self.size += cost + 1

    def add_event(self, subs: Sequence[int], event: Event) -> int:
        """Add an ``event`` frame for *event* and the first of *subs* that fit; how many went
        in: all of them, as many as fit alone in a message (at least one), or 0 when the
        message is not empty and the frame does not fit."""
        event_text, event_size = encode_event_sized(event)  # cached
        n = len(subs)
        cost = event_size + FRAME_OVERHEAD + SUB_ID_SIZE * n
        fit = n
        if self.size + cost > self.budget:
            if self.count:
                return 0
            # Alone and still too big: the subscriptions that fit now; the rest go next.
            fit = max(1, (self.budget - event_size - FRAME_OVERHEAD) // SUB_ID_SIZE)
            if fit < n:
                subs = subs[:fit]
                cost = event_size + FRAME_OVERHEAD + SUB_ID_SIZE * fit
            else:
                fit = n
        if self._fast:
            self._parts.append(encode_event_frame_text(subs, event_text))
        else:
            self._frames.append(EventFrame(subs=tuple(subs), event=event))
        self.count += 1
        self.size += cost + 1
        return fit

    def finish(self) -> str:
        """The text of the message built (at least one frame must have been added)."""
        if self._fast:
            parts = self._parts
            return parts[0] if len(parts) == 1 else "[" + ",".join(parts) + "]"
        frames = self._frames
        if not any(isinstance(f, _Raw) for f in frames):
            plain = cast("list[ServerFrame]", frames)
            return self._conn.send(plain if len(plain) > 1 else plain[0])
        texts = [f.text if isinstance(f, _Raw) else self._conn.send(f) for f in frames]
        return texts[0] if len(texts) == 1 else "[" + ",".join(texts) + "]"


class _Raw:
    """A frame's text, made by the connection already."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text
