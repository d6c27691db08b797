"""The wire protocol, sans I/O: frames, their JSON codec, and the connection state machine.

Nothing here does I/O or imports Trio; the broker and the client wrap these objects around a
WebSocket. A :class:`Connection` (``Connection(Role.SERVER)`` for the broker's side,
``Connection(Role.CLIENT)`` for a client's) has three verbs:

* :meth:`~Connection.receive_text` feeds in one received WebSocket text message;
* :meth:`~Connection.frames` takes out what it held: frames, checked against the protocol,
  and a :class:`FrameError` in place of each frame that could not be taken (never raised);
* :meth:`~Connection.send` turns frames into the text of one message to send.

Two peers talking, with no network in between::

    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_text(client.send(Hello(client="demo")))
    assert list(server.frames()) == [Hello(client="demo")]
    client.receive_text(server.send(Welcome(session="s1", broker="b", heartbeat=30.0)))
    (welcome,) = client.frames()
    assert client.state is ConnectionState.OPEN and welcome.heartbeat == 30.0
    sub = client.next_id()
    server.receive_text(client.send(Subscribe(id=sub, pattern="orders.>")))
    (subscribe,) = server.frames()
    client.receive_text(server.send(Subscribed(id=subscribe.id)))
    assert list(client.frames()) == [Subscribed(id=sub)]
    server.receive_text("not json")
    (error,) = server.frames()
    assert isinstance(error, FrameError) and not error.fatal and error.code == BAD_FRAME

The state transitions are the tables :data:`SEND_TRANSITIONS` and :data:`RECEIVE_TRANSITIONS`.
:class:`Heartbeat` is the heartbeat policy both sides follow, and :class:`MessageBuilder`
the broker's batching of event frames around cached event texts. :func:`encode` and
:func:`decode` are the codec on its own, without the protocol's rules.
"""

from __future__ import annotations

from ._batch import MessageBuilder as MessageBuilder
from ._codec import decode as decode
from ._codec import encode as encode
from ._codec import encode_event as encode_event
from ._codec import encoded_size as encoded_size
from ._connection import RECEIVE_TRANSITIONS as RECEIVE_TRANSITIONS
from ._connection import SEND_TRANSITIONS as SEND_TRANSITIONS
from ._connection import ClientConnection as ClientConnection
from ._connection import Connection as Connection
from ._connection import ConnectionState as ConnectionState
from ._connection import FrameError as FrameError
from ._connection import Role as Role
from ._connection import ServerConnection as ServerConnection
from ._frames import AUTH_EXPIRED as AUTH_EXPIRED
from ._frames import AUTH_FAILED as AUTH_FAILED
from ._frames import BAD_FRAME as BAD_FRAME
from ._frames import CLIENT_FRAME_TYPES as CLIENT_FRAME_TYPES
from ._frames import CLOSE_GOING_AWAY as CLOSE_GOING_AWAY
from ._frames import CLOSE_HEARTBEAT as CLOSE_HEARTBEAT
from ._frames import CLOSE_INTERNAL as CLOSE_INTERNAL
from ._frames import CLOSE_INVALID_PAYLOAD as CLOSE_INVALID_PAYLOAD
from ._frames import CLOSE_NORMAL as CLOSE_NORMAL
from ._frames import CLOSE_POLICY as CLOSE_POLICY
from ._frames import CLOSE_PROTOCOL as CLOSE_PROTOCOL
from ._frames import CLOSE_SLOW_CONSUMER as CLOSE_SLOW_CONSUMER
from ._frames import CLOSE_TOO_BIG as CLOSE_TOO_BIG
from ._frames import DUPLICATE_ID as DUPLICATE_ID
from ._frames import ERROR_CODES as ERROR_CODES
from ._frames import FORBIDDEN as FORBIDDEN
from ._frames import FRAME_TYPES as FRAME_TYPES
from ._frames import INBOX_PREFIX as INBOX_PREFIX
from ._frames import INTERNAL as INTERNAL
from ._frames import INVALID_TOPIC as INVALID_TOPIC
from ._frames import LIMIT as LIMIT
from ._frames import NO_RESPONDERS as NO_RESPONDERS
from ._frames import NO_STORE as NO_STORE
from ._frames import PROTOCOL as PROTOCOL
from ._frames import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._frames import RATE_LIMITED as RATE_LIMITED
from ._frames import REPLY_ERROR_HEADER as REPLY_ERROR_HEADER
from ._frames import SERVER_FRAME_TYPES as SERVER_FRAME_TYPES
from ._frames import SLOW_CONSUMER as SLOW_CONSUMER
from ._frames import STORE_FAILED as STORE_FAILED
from ._frames import TOO_LARGE as TOO_LARGE
from ._frames import UNKNOWN_TYPE as UNKNOWN_TYPE
from ._frames import UNSUPPORTED_PROTOCOL as UNSUPPORTED_PROTOCOL
from ._frames import USER_HEADER as USER_HEADER
from ._frames import Ack as Ack
from ._frames import Cancel as Cancel
from ._frames import ClientFrame as ClientFrame
from ._frames import Error as Error
from ._frames import EventFrame as EventFrame
from ._frames import Frame as Frame
from ._frames import Gap as Gap
from ._frames import Hello as Hello
from ._frames import History as History
from ._frames import HistoryResult as HistoryResult
from ._frames import Ping as Ping
from ._frames import Pong as Pong
from ._frames import Publish as Publish
from ._frames import Refresh as Refresh
from ._frames import Refreshed as Refreshed
from ._frames import ServerFrame as ServerFrame
from ._frames import Subscribe as Subscribe
from ._frames import Subscribed as Subscribed
from ._frames import Unsubscribe as Unsubscribe
from ._frames import Unsubscribed as Unsubscribed
from ._frames import Welcome as Welcome
from ._frames import close_code_for as close_code_for
from ._heartbeat import Heartbeat as Heartbeat
from ._heartbeat import HeartbeatAction as HeartbeatAction

__all__ = [
    "AUTH_EXPIRED",
    "AUTH_FAILED",
    "BAD_FRAME",
    "CLIENT_FRAME_TYPES",
    "CLOSE_GOING_AWAY",
    "CLOSE_HEARTBEAT",
    "CLOSE_INTERNAL",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "DUPLICATE_ID",
    "ERROR_CODES",
    "FORBIDDEN",
    "FRAME_TYPES",
    "INBOX_PREFIX",
    "INTERNAL",
    "INVALID_TOPIC",
    "LIMIT",
    "NO_RESPONDERS",
    "NO_STORE",
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "RATE_LIMITED",
    "RECEIVE_TRANSITIONS",
    "REPLY_ERROR_HEADER",
    "SEND_TRANSITIONS",
    "SERVER_FRAME_TYPES",
    "SLOW_CONSUMER",
    "STORE_FAILED",
    "TOO_LARGE",
    "UNKNOWN_TYPE",
    "UNSUPPORTED_PROTOCOL",
    "USER_HEADER",
    "Ack",
    "Cancel",
    "ClientConnection",
    "ClientFrame",
    "Connection",
    "ConnectionState",
    "Error",
    "EventFrame",
    "Frame",
    "FrameError",
    "Gap",
    "Heartbeat",
    "HeartbeatAction",
    "Hello",
    "History",
    "HistoryResult",
    "MessageBuilder",
    "Ping",
    "Pong",
    "Publish",
    "Refresh",
    "Refreshed",
    "Role",
    "ServerConnection",
    "ServerFrame",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
    "close_code_for",
    "decode",
    "encode",
    "encode_event",
    "encoded_size",
]
