"""The state table, the ERROR state, frame errors as events, the owner's records, the
heartbeat policy and the broker's message builder, all sans I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from trio_realtime import Event, LocalProtocolError
from trio_realtime.protocol import (
    BAD_FRAME,
    CLIENT_FRAME_TYPES,
    RECEIVE_TRANSITIONS,
    SEND_TRANSITIONS,
    SERVER_FRAME_TYPES,
    Ack,
    ClientConnection,
    Connection,
    ConnectionState,
    Error,
    EventFrame,
    FrameError,
    Heartbeat,
    HeartbeatAction,
    Hello,
    MessageBuilder,
    Ping,
    Publish,
    Role,
    ServerConnection,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    encode,
)

WELCOME = Welcome(session="s", broker="b", heartbeat=30.0)
T0 = datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)


def open_pair() -> tuple[Connection[Any, Any], Connection[Any, Any]]:
    """A client and a server connection after the handshake."""
    client: Connection[Any, Any] = Connection(Role.CLIENT)
    server: Connection[Any, Any] = Connection(Role.SERVER)
    server.receive_text(client.send(Hello()))
    assert list(server.frames()) == [Hello()]
    client.receive_text(server.send(WELCOME))
    assert list(client.frames()) == [WELCOME]
    return client, server


def test_the_tables_cover_every_frame_type_in_the_open_state() -> None:
    """Open, each side may send every frame type of its direction but the handshake's."""
    for cls in CLIENT_FRAME_TYPES - {Hello}:
        assert SEND_TRANSITIONS[Role.CLIENT, ConnectionState.OPEN, cls] is ConnectionState.OPEN
    for cls in SERVER_FRAME_TYPES - {Welcome}:
        assert SEND_TRANSITIONS[Role.SERVER, ConnectionState.OPEN, cls] is ConnectionState.OPEN
    assert (Role.SERVER, ConnectionState.OPEN, Hello) not in RECEIVE_TRANSITIONS
    assert (Role.CLIENT, ConnectionState.OPEN, Welcome) not in RECEIVE_TRANSITIONS
    assert (
        RECEIVE_TRANSITIONS[Role.CLIENT, ConnectionState.AWAITING_WELCOME, Error]
        is ConnectionState.CLOSED
    )
    # once ended, only the broker's error frames
    for state in (ConnectionState.CLOSED, ConnectionState.ERROR):
        assert {key[2] for key in SEND_TRANSITIONS if key[:2] == (Role.SERVER, state)} == {Error}
        assert not [key for key in SEND_TRANSITIONS if key[:2] == (Role.CLIENT, state)]


def test_one_class_for_both_roles() -> None:
    """Connection(role) is the one class; the old names are fixed-role subclasses."""
    assert ServerConnection().role is Role.SERVER
    assert ClientConnection().role is Role.CLIENT
    assert isinstance(ServerConnection(), Connection)
    with pytest.raises(TypeError, match="role"):
        Connection()
    with pytest.raises(TypeError):
        ServerConnection(Role.CLIENT)


def test_a_received_violation_moves_to_error_not_closed() -> None:
    """A fatal violation ends in ERROR; the broker may still explain it, nothing more."""
    server: Connection[Any, Any] = Connection(Role.SERVER)
    server.receive_text(encode(Ping()))
    (error,) = server.frames()
    assert isinstance(error, FrameError)
    assert error.fatal
    assert server.state is ConnectionState.ERROR
    assert orjson.loads(server.send(error.to_frame()))["code"] == "protocol"
    assert server.state is ConnectionState.ERROR
    with pytest.raises(LocalProtocolError, match="after an error"):
        server.send(Ping())
    server.close()
    assert server.state is ConnectionState.ERROR  # a violation stays one


def test_a_clean_close_moves_to_closed() -> None:
    """close() and a refused handshake end in CLOSED, not ERROR."""
    client, _ = open_pair()
    client.close()
    assert client.state is ConnectionState.CLOSED
    refusing: Connection[Any, Any] = Connection(Role.SERVER)
    refusing.receive_text(encode(Hello()))
    list(refusing.frames())
    refusing.send(Error(code="auth_failed", message="no"))
    assert refusing.state is ConnectionState.CLOSED


def test_send_failed_moves_to_error() -> None:
    """A send the owner could not complete is reported: the connection is then in ERROR."""
    client, server = open_pair()
    client.send(Ping())
    client.send_failed()
    assert client.state is ConnectionState.ERROR
    with pytest.raises(LocalProtocolError, match="closed"):
        client.send(Ping())
    client.receive_text(encode(Ping()))
    assert list(client.frames()) == []
    server.send_failed()
    assert server.state is ConnectionState.ERROR


def test_frame_errors_are_events_never_exceptions() -> None:
    """Bad frames come out of frames() as FrameError values, between the good frames."""
    _, server = open_pair()
    server.receive_text('[{"type":"ping"},{"type":"subscribe","id":3},{"type":"ping"}]')
    ping, error, again = server.frames()
    assert ping == again == Ping()
    assert error == FrameError(code=BAD_FRAME, message=str(error), ref=3, fatal=False)
    assert error.to_frame() == Error(ref=3, code=BAD_FRAME, message=str(error))
    assert error.as_exception().ref == 3
    assert server.state is ConnectionState.OPEN


def test_the_server_side_keeps_what_the_broker_attached() -> None:
    """A subscription's sink is attached to its id; an unsubscribe frees the id once handled."""
    client, server = open_pair()
    server.receive_text(client.send(Subscribe(id=1, pattern="a")))
    assert list(server.frames()) == [Subscribe(id=1, pattern="a")]
    sink = object()
    server.attach(1, sink)
    assert server.attached_count == 1
    client.receive_text(server.send(Subscribed(id=1)))
    assert server.subscriptions() == [(1, sink)]
    server.receive_text(client.send([Unsubscribe(id=1), Subscribe(id=1, pattern="b")]))
    frames = server.frames()
    assert next(frames) == Unsubscribe(id=1)
    assert server.subscription(1) is sink  # readable while the unsubscribe is handled
    assert next(frames) == Subscribe(id=1, pattern="b")  # the id is free again
    assert server.subscription(1) is None
    assert server.attached_count == 0
    with pytest.raises(LocalProtocolError):
        server.attach(9, sink)  # not requested


def test_the_client_side_keeps_its_subscriptions_and_refs() -> None:
    """A client attaches its subscription before sending it and its operation to each ref;
    the answers free them once handled."""
    client, server = open_pair()
    sub_id = client.next_id()
    client.attach(sub_id, "orders")
    assert client.pending_subscriptions == set()  # reserved, not sent
    assert client.next_id() != sub_id
    ref = client.next_id()
    text = client.send(
        [Subscribe(id=sub_id, pattern="a"), Publish(event=Event(topic="a", time=T0), ref=ref)],
        refs={ref: "publish"},
    )
    assert client.pending_subscriptions == {sub_id}
    assert client.pending(ref) == "publish"
    server.receive_text(text)
    list(server.frames())
    client.receive_text(server.send([Subscribed(id=sub_id), Ack(ref=ref, id="x")]))
    frames = client.frames()
    assert next(frames) == Subscribed(id=sub_id)
    assert next(frames) == Ack(ref=ref, id="x")
    assert client.pending(ref) == "publish"  # while the ack is handled
    assert list(frames) == []
    assert client.pending(ref) is None
    assert client.subscription(sub_id) == "orders"
    assert client.detach(sub_id) == "orders"
    assert client.active_subscriptions == {sub_id}  # until its unsubscribe is sent
    client.send(Unsubscribe(id=sub_id))
    assert client.active_subscriptions == set()


def test_a_refused_subscription_stays_readable_while_handled() -> None:
    """An error refusing a pending subscription comes out with the attached value readable."""
    client, server = open_pair()
    sub_id = client.next_id()
    client.attach(sub_id, "mine")
    server.receive_text(client.send(Subscribe(id=sub_id, pattern="a")))
    list(server.frames())
    client.receive_text(server.send(Error(ref=sub_id, code="forbidden", message="no")))
    frames = client.frames()
    assert next(frames) == Error(ref=sub_id, code="forbidden", message="no")
    assert client.subscription(sub_id) == "mine"
    assert list(frames) == []
    assert client.subscription(sub_id) is None
    assert client.pending_subscriptions == set()


# ---------------------------------------------------------------------------------------------
# The heartbeat policy


def test_heartbeat_pings_a_silent_peer_then_gives_it_up() -> None:
    """Silent for an interval: ping; no answer for another: dead."""
    heartbeat = Heartbeat(5.0, 0.0)
    assert heartbeat.poll(1.0) == (HeartbeatAction.WAIT, 5.0)
    assert heartbeat.poll(5.0) == (HeartbeatAction.PING, 10.0)
    assert heartbeat.ping_outstanding
    assert heartbeat.poll(7.0) == (HeartbeatAction.WAIT, 10.0)
    assert heartbeat.poll(10.0)[0] is HeartbeatAction.DEAD


def test_heartbeat_an_answer_keeps_the_peer() -> None:
    """Anything received after the ping (at the same instant too) answers it."""
    heartbeat = Heartbeat(5.0, 0.0)
    assert heartbeat.poll(5.0)[0] is HeartbeatAction.PING
    heartbeat.received(5.0)
    assert not heartbeat.ping_outstanding
    assert heartbeat.poll(5.0) == (HeartbeatAction.WAIT, 10.0)
    assert heartbeat.poll(10.0)[0] is HeartbeatAction.PING
    with pytest.raises(ValueError, match="positive"):
        Heartbeat(0, 0.0)


# ---------------------------------------------------------------------------------------------
# The broker's message builder


def test_message_builder_matches_the_codec() -> None:
    """Event frames built around the cached encoding are what the codec makes of them."""
    _, server = open_pair()
    builder = MessageBuilder(server, 2**20)
    event = Event(topic="a.b", data={"n": 1}, time=T0, seq=3)
    builder.start()
    assert builder.add_event([1, 2], event) == 2
    assert builder.add_frame(Ping(), 64)
    assert builder.finish() == encode([EventFrame(subs=(1, 2), event=event), Ping()])
    builder.start()
    assert builder.add_event([7], event) == 1
    assert builder.finish() == encode(EventFrame(subs=(7,), event=event))


def test_message_builder_splits_subscriptions_past_the_limit() -> None:
    """An event matching more subscriptions than fit in one message goes in several; a full
    message takes no more frames."""
    _, server = open_pair()
    builder = MessageBuilder(server, 1024)
    event = Event(topic="a", data="x" * 200, time=T0)
    subs = list(range(1, 200))
    builder.start()
    taken = builder.add_event(subs, event)
    assert 1 <= taken < len(subs)
    assert builder.add_event(subs[taken:], event) == 0  # the message is full
    assert not builder.add_frame(Ping(), 1024)
    text = builder.finish()
    assert len(text.encode()) <= 1024
    assert orjson.loads(text)["subs"] == subs[:taken]


def test_message_builder_checks_frames_before_the_connection_is_open() -> None:
    """Before welcome, a message goes through the connection's checks whole."""
    server: Connection[Any, Any] = Connection(Role.SERVER)
    server.receive_text(encode(Hello()))
    list(server.frames())
    builder = MessageBuilder(server, 2**20)
    builder.start()
    builder.add_frame(WELCOME, 64)
    builder.add_frame(Ping(), 64)
    assert orjson.loads(builder.finish())[0]["type"] == "welcome"
    assert server.state is ConnectionState.OPEN
