"""The connection state machines of trio_realtime.protocol, as two peers with no network."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import pytest

from trio_realtime import Event, LocalProtocolError
from trio_realtime.protocol import (
    AUTH_FAILED,
    BAD_FRAME,
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    INVALID_TOPIC,
    NO_RESPONDERS,
    PROTOCOL,
    UNKNOWN_TYPE,
    UNSUPPORTED_PROTOCOL,
    Ack,
    ClientConnection,
    ClientFrame,
    Connection,
    ConnectionState,
    Error,
    EventFrame,
    FrameError,
    Gap,
    Hello,
    History,
    HistoryResult,
    Ping,
    Pong,
    Publish,
    Role,
    ServerConnection,
    ServerFrame,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    close_code_for,
    encode,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

WELCOME = Welcome(session="sess-1", broker="test-broker", heartbeat=30.0, epoch="ep-1")
T0 = datetime(2026, 11, 26, 15, 4, 5, tzinfo=UTC)

Received = list[ClientFrame | ServerFrame | FrameError]


class ConnectionPair:
    """A client and a server connection wired together, as h11's tests do it."""

    def __init__(self) -> None:
        self.client: Connection[Any, Any] = Connection(Role.CLIENT)
        self.server: Connection[Any, Any] = Connection(Role.SERVER)

    def client_sends(self, frames: ClientFrame | Sequence[ClientFrame]) -> Received:
        """Send *frames* from the client; return what the server takes out."""
        self.server.receive_text(self.client.send(frames))
        return list(self.server.frames())

    def server_sends(self, frames: ServerFrame | Sequence[ServerFrame]) -> Received:
        """Send *frames* from the server; return what the client takes out."""
        self.client.receive_text(self.server.send(frames))
        return list(self.client.frames())

    def states(self) -> tuple[ConnectionState, ConnectionState]:
        """The client's and the server's state."""
        return self.client.state, self.server.state

    def handshake(self) -> None:
        """Do hello -> welcome."""
        assert self.client_sends(Hello(client="test")) == [Hello(client="test")]
        assert self.server_sends(WELCOME) == [WELCOME]

    def subscribe(self, pattern: str) -> int:
        """Subscribe from the client, confirmed by the server; return the id."""
        sub_id = self.client.next_id()
        assert self.client_sends(Subscribe(id=sub_id, pattern=pattern)) == [
            Subscribe(id=sub_id, pattern=pattern)
        ]
        assert self.server_sends(Subscribed(id=sub_id)) == [Subscribed(id=sub_id)]
        return sub_id


@pytest.fixture
def pair() -> ConnectionPair:
    """A connection pair after a successful handshake."""
    pair = ConnectionPair()
    pair.handshake()
    return pair


def state_of(conn: Connection[Any, Any]) -> ConnectionState:
    """*conn*'s state (a call, so that mypy does not narrow it across sends)."""
    return conn.state


def fatal(conn: Connection[Any, Any]) -> FrameError:
    """Take frames out of *conn*, which must fail fatally; return the error (the last item)."""
    *_, error = conn.frames()
    assert isinstance(error, FrameError)
    assert error.fatal
    assert conn.state is ConnectionState.ERROR
    assert list(conn.frames()) == []
    return error


# ---------------------------------------------------------------------------------------------
# A full exchange


def test_full_exchange() -> None:
    """Handshake, subscribe, publish with ack, delivery, batch, gap, error, history, unsubscribe."""
    pair = ConnectionPair()
    client, server = pair.client, pair.server
    assert pair.states() == (ConnectionState.AWAITING_HELLO,) * 2

    # handshake
    assert pair.client_sends(Hello(token="secret", client="app")) == [
        Hello(token="secret", client="app")
    ]
    assert server.hello == Hello(token="secret", client="app")
    assert pair.states() == (ConnectionState.AWAITING_WELCOME,) * 2
    assert pair.server_sends(WELCOME) == [WELCOME]
    assert client.welcome == WELCOME
    assert pair.states() == (ConnectionState.OPEN,) * 2

    # subscribe
    orders = client.next_id()
    assert pair.client_sends(Subscribe(id=orders, pattern="orders.>")) == [
        Subscribe(id=orders, pattern="orders.>")
    ]
    assert client.pending_subscriptions == server.pending_subscriptions == {orders}
    assert pair.server_sends(Subscribed(id=orders)) == [Subscribed(id=orders)]
    assert client.active_subscriptions == server.active_subscriptions == {orders}
    assert client.pending_subscriptions == server.pending_subscriptions == set()
    created = pair.subscribe("orders.created")
    assert created != orders

    # publish with ack
    ref = client.next_id()
    event = Event(topic="orders.created", data={"order": 1}, source="app", time=T0)
    assert pair.client_sends(Publish(event=event, ref=ref)) == [Publish(event=event, ref=ref)]
    assert client.pending_refs == {ref}
    stored = attrs.evolve(event, seq=1)
    assert pair.server_sends(Ack(ref=ref, id=event.id, seq=1)) == [Ack(ref=ref, id=event.id, seq=1)]
    assert client.pending_refs == set()

    # delivery to two matching subscriptions in one frame
    assert pair.server_sends(EventFrame(subs=(orders, created), event=stored)) == [
        EventFrame(subs=(orders, created), event=stored)
    ]

    # batches both ways, with a gap
    second = Event(topic="orders.shipped", data=None, time=T0, seq=2)
    batch: list[ServerFrame] = [
        EventFrame(subs=(orders,), event=second),
        Gap(sub=orders, missed=3),
        Ping(),
    ]
    assert pair.server_sends(batch) == batch
    out: list[ClientFrame] = [Pong(), Publish(event=event), Publish(event=event, retain=True)]
    assert pair.client_sends(out) == out

    # an error answering a publish
    ask = client.next_id()
    request = Event(topic="rpc.add", data=[1, 2], reply_to="_inbox.abc", time=T0)
    assert pair.client_sends(Publish(event=request, ref=ask)) == [Publish(event=request, ref=ask)]
    no_one = Error(ref=ask, code=NO_RESPONDERS, message="nothing subscribes to rpc.add")
    assert pair.server_sends(no_one) == [no_one]
    assert client.pending_refs == set()
    assert client.active_subscriptions == {orders, created}

    # history
    read = client.next_id()
    assert pair.client_sends(History(ref=read, pattern="orders.>", since=0)) == [
        History(ref=read, pattern="orders.>", since=0)
    ]
    assert pair.server_sends(HistoryResult(ref=read, events=(stored, second))) == [
        HistoryResult(ref=read, events=(stored, second))
    ]
    assert client.pending_refs == set()

    # unsubscribe
    assert pair.client_sends(Unsubscribe(id=orders)) == [Unsubscribe(id=orders)]
    assert server.active_subscriptions == client.active_subscriptions == {created}
    assert pair.server_sends(Unsubscribed(id=orders)) == [Unsubscribed(id=orders)]

    # ping, pong
    assert pair.client_sends(Ping()) == [Ping()]
    assert pair.server_sends(Pong()) == [Pong()]
    assert pair.states() == (ConnectionState.OPEN,) * 2


# ---------------------------------------------------------------------------------------------
# Handshake rules, broker side


@pytest.mark.parametrize(
    "first",
    [
        Subscribe(id=1, pattern="a"),
        Ping(),
        Publish(event=Event(topic="a")),
        [Ping(), Hello()],
    ],
)
def test_server_hello_must_come_first(first: ClientFrame | list[ClientFrame]) -> None:
    """Anything but hello first is a fatal protocol error, to close with 4000."""
    server = ServerConnection()
    server.receive_text(encode(first))
    error = fatal(server)
    assert error.code == PROTOCOL
    assert "first frame must be 'hello'" in str(error)
    assert close_code_for(error.code) == CLOSE_PROTOCOL
    # the broker can still explain, and nothing more is taken in
    assert orjson.loads(server.send(error.to_frame()))["code"] == "protocol"
    server.receive_text(encode(Hello()))
    assert list(server.frames()) == []


@pytest.mark.parametrize(
    "text", ["not json", "[]x", '{"type":"hello","protocol":"1"}', '{"type":"nope"}', "[3]"]
)
def test_server_bad_first_message_is_fatal(text: str) -> None:
    """A first message that is no valid hello is a fatal protocol error that explains why."""
    server = ServerConnection()
    server.receive_text(text)
    error = fatal(server)
    assert error.code == PROTOCOL
    assert "valid 'hello'" in str(error)


def test_server_empty_first_batch_waits_for_hello() -> None:
    """An empty batch before hello carries no frame, so it breaks no rule."""
    server = ServerConnection()
    server.receive_text("[]")
    assert list(server.frames()) == []
    server.receive_text(encode(Hello()))
    assert list(server.frames()) == [Hello()]


def test_server_second_hello_is_fatal(pair: ConnectionPair) -> None:
    """A second hello is fatal, after the frames before it in its batch are delivered."""
    pair.server.receive_text(encode([Ping(), Hello(), Pong()]))
    frames = pair.server.frames()
    assert next(frames) == Ping()
    error = next(frames)
    assert isinstance(error, FrameError)
    assert error.fatal
    assert "second 'hello'" in str(error)
    assert error.code == PROTOCOL
    assert pair.server.state is ConnectionState.ERROR
    assert list(frames) == []
    assert list(pair.server.frames()) == []


@pytest.mark.parametrize("version", [0, 2, 99])
def test_server_unsupported_protocol_version(version: int) -> None:
    """hello with a protocol version other than 1 is a fatal unsupported_protocol error."""
    server = ServerConnection()
    server.receive_text(encode(Hello(protocol=version)))
    error = fatal(server)
    assert error.code == UNSUPPORTED_PROTOCOL
    assert str(version) in str(error)
    assert server.hello is None
    assert error.to_frame().code == "unsupported_protocol"


def test_pipelined_frames_wait_for_welcome() -> None:
    """The client may send right after hello; the server holds those frames until welcome."""
    pair = ConnectionPair()
    text = pair.client.send(Hello())
    pipelined = pair.client.send([Subscribe(id=1, pattern="a"), Ping()])
    assert pair.client.pending_subscriptions == {1}
    pair.server.receive_text(text)
    pair.server.receive_text(pipelined)
    assert list(pair.server.frames()) == [Hello()]
    assert list(pair.server.frames()) == []  # nothing more until welcome is sent
    pair.client.receive_text(pair.server.send(WELCOME))
    assert list(pair.server.frames()) == [Subscribe(id=1, pattern="a"), Ping()]


def test_server_frames_continue_after_welcome_sent_mid_iteration() -> None:
    """Sending welcome while handling hello lets the same iteration go on."""
    server = ServerConnection()
    server.receive_text(encode([Hello(), Ping()]))
    seen = []
    for frame in server.frames():
        seen.append(frame)
        if isinstance(frame, Hello):
            server.send(WELCOME)
    assert seen == [Hello(), Ping()]


def test_server_may_only_answer_hello_before_welcome() -> None:
    """Before welcome the server may send only welcome or error; refusals change nothing."""
    server = ServerConnection()
    with pytest.raises(LocalProtocolError, match="before the client's 'hello'"):
        server.send(WELCOME)
    server.receive_text(encode(Hello()))
    list(server.frames())
    with pytest.raises(LocalProtocolError, match="before answering 'hello'"):
        server.send(Ping())
    with pytest.raises(LocalProtocolError, match="before answering 'hello'"):
        server.send([Ping(), WELCOME])
    assert state_of(server) is ConnectionState.AWAITING_WELCOME
    server.send([WELCOME, Ping()])
    assert state_of(server) is ConnectionState.OPEN
    with pytest.raises(LocalProtocolError, match="already sent"):
        server.send(WELCOME)


def test_server_refuses_handshake_with_error() -> None:
    """An error answering hello refuses the handshake: both sides end up closed."""
    pair = ConnectionPair()
    pair.client_sends(Hello(token="wrong"))
    refusal = Error(code=AUTH_FAILED, message="bad token")
    assert pair.server_sends(refusal) == [refusal]
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.client.state is ConnectionState.CLOSED
    assert close_code_for(refusal.code) == CLOSE_POLICY
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.client.send(Ping())
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.server.send(Ping())


def test_server_may_time_out_waiting_for_hello() -> None:
    """Before hello, the server may send an error (for example on a timeout), which closes."""
    server = ServerConnection()
    text = server.send(Error(code=PROTOCOL, message="no hello within 10 s"))
    assert orjson.loads(text)["code"] == "protocol"
    assert server.state is ConnectionState.CLOSED


# ---------------------------------------------------------------------------------------------
# Handshake rules, client side


def test_client_must_send_hello_first() -> None:
    """The client may not send anything before hello, nor hello twice."""
    client = ClientConnection()
    with pytest.raises(LocalProtocolError, match="first frame must be 'hello'"):
        client.send(Subscribe(id=1, pattern="a"))
    with pytest.raises(LocalProtocolError, match="first frame must be 'hello'"):
        client.send([Ping(), Hello()])
    assert client.state is ConnectionState.AWAITING_HELLO
    client.send([Hello(), Ping()])
    with pytest.raises(LocalProtocolError, match="already sent"):
        client.send(Hello())


def test_client_receiving_before_hello_is_fatal() -> None:
    """A broker that speaks before the client's hello breaks the protocol."""
    client = ClientConnection()
    client.receive_text(encode(WELCOME))
    assert fatal(client).code == PROTOCOL


@pytest.mark.parametrize(
    "first", [Ping(), Subscribed(id=1), "not json", '{"type":"welcome","session":1}']
)
def test_client_welcome_must_come_first(first: ServerFrame | str) -> None:
    """Anything but welcome (or error) first from the broker is a fatal protocol error."""
    client = ClientConnection()
    client.send(Hello())
    client.receive_text(first if isinstance(first, str) else encode(first))
    error = fatal(client)
    assert error.code == PROTOCOL
    assert "'welcome'" in str(error)


def test_client_unsupported_protocol_version() -> None:
    """A welcome of another protocol version is a fatal unsupported_protocol error."""
    client = ClientConnection()
    client.send(Hello())
    client.receive_text(encode(attrs.evolve(WELCOME, protocol=2)))
    assert fatal(client).code == UNSUPPORTED_PROTOCOL
    assert client.welcome is None


def test_client_second_welcome_is_fatal(pair: ConnectionPair) -> None:
    """A second welcome is a fatal protocol error."""
    pair.client.receive_text(encode(WELCOME))
    assert fatal(pair.client).code == PROTOCOL


# ---------------------------------------------------------------------------------------------
# Directions


@pytest.mark.parametrize(
    "frame", [WELCOME, Subscribed(id=1), Ack(ref=1, id="x"), Error(code="x", message="m")]
)
def test_client_cannot_send_broker_frames(pair: ConnectionPair, frame: ServerFrame) -> None:
    """Sending a broker-only frame from the client is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match="cannot send"):
        pair.client.send(frame)


@pytest.mark.parametrize("frame", [Hello(), Subscribe(id=1, pattern="a"), Unsubscribe(id=1)])
def test_server_cannot_send_client_frames(pair: ConnectionPair, frame: ClientFrame) -> None:
    """Sending a client-only frame from the server is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError, match="cannot send"):
        pair.server.send(frame)


def test_sending_a_non_frame_is_refused(pair: ConnectionPair) -> None:
    """Sending something that is not a frame is a LocalProtocolError on either side."""
    with pytest.raises(LocalProtocolError, match="not a frame"):
        pair.client.send("ping")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="not a frame"):
        pair.server.send([Ping(), {"type": "pong"}])  # type: ignore[list-item]


def test_server_answers_broker_frames_from_client_with_unknown_type(
    pair: ConnectionPair,
) -> None:
    """A broker-only frame from the client is a non-fatal unknown_type error with its ref."""
    event = Event(topic="a", time=T0)
    pair.server.receive_text(encode([EventFrame(subs=(1,), event=event), Subscribed(id=4)]))
    first, second = pair.server.frames()
    assert isinstance(first, FrameError)
    assert first.code == UNKNOWN_TYPE
    assert "'event' frames go from broker to client" in str(first)
    assert isinstance(second, FrameError)
    assert second.ref == 4
    pair.server.send([first.to_frame(), second.to_frame()])
    assert pair.client_sends(Ping()) == [Ping()]


def test_client_reports_client_frames_from_broker_as_unknown_type(pair: ConnectionPair) -> None:
    """A client-only frame from the broker is a non-fatal unknown_type error."""
    pair.client.receive_text(encode(Subscribe(id=3, pattern="a")))
    (error,) = pair.client.frames()
    assert isinstance(error, FrameError)
    assert error.code == UNKNOWN_TYPE
    assert error.ref == 3
    assert pair.server_sends(Ping()) == [Ping()]


# ---------------------------------------------------------------------------------------------
# Non-fatal errors


def test_bad_frames_are_not_fatal(pair: ConnectionPair) -> None:
    """Bad frames come out as errors to answer; the connection stays usable."""
    pair.server.receive_text('[{"type":"subscribe","id":5}, {"type":"ping"}, 7]')
    first, second, third = pair.server.frames()
    assert isinstance(first, FrameError)
    assert (first.code, first.ref) == (BAD_FRAME, 5)
    assert second == Ping()
    assert isinstance(third, FrameError)
    pair.server.receive_text("garbage")
    (garbage,) = pair.server.frames()
    assert isinstance(garbage, FrameError)
    assert garbage.code == BAD_FRAME
    answer = first.to_frame()
    assert pair.server_sends(answer) == [answer]
    assert pair.server.state is ConnectionState.OPEN
    assert pair.subscribe("a") in pair.server.active_subscriptions


def test_client_bad_frames_are_not_fatal(pair: ConnectionPair) -> None:
    """A bad frame from the broker comes out as an error; the client goes on."""
    pair.client.receive_text('[{"type":"event","subs":"x"}, {"type":"pong"}]')
    error, pong = pair.client.frames()
    assert isinstance(error, FrameError)
    assert error.code == BAD_FRAME
    assert pong == Pong()
    assert pair.client.state is ConnectionState.OPEN


# ---------------------------------------------------------------------------------------------
# Subscription ids and refs


def test_server_duplicate_subscription_id(pair: ConnectionPair) -> None:
    """A subscribe reusing a live id is a non-fatal protocol error with that ref."""
    sub_id = pair.subscribe("a")
    pair.server.receive_text(encode(Subscribe(id=sub_id, pattern="b")))
    (error,) = pair.server.frames()
    assert isinstance(error, FrameError)
    assert (error.code, error.ref) == (PROTOCOL, sub_id)
    assert "already in use" in str(error)
    pair.server.send(error.to_frame())
    assert pair.server.active_subscriptions == {sub_id}  # the first one lives on
    assert pair.server.state is ConnectionState.OPEN


def test_server_duplicate_of_pending_subscription() -> None:
    """Answering a duplicate does not reject the pending subscription it duplicates."""
    pair = ConnectionPair()
    pair.handshake()
    pair.server.receive_text(encode([Subscribe(id=1, pattern=p) for p in ("a", "b", "c")]))
    first, duplicate, again = pair.server.frames()
    assert first == Subscribe(id=1, pattern="a")
    assert isinstance(duplicate, FrameError)
    assert isinstance(again, FrameError)
    pair.server.send(duplicate.to_frame())
    pair.server.send(again.to_frame())
    assert pair.server.pending_subscriptions == {1}
    pair.server.send(Subscribed(id=1))
    assert pair.server.active_subscriptions == {1}


def test_rejected_subscription_frees_its_id(pair: ConnectionPair) -> None:
    """An error answering a pending subscribe rejects it on both sides; the id is free again."""
    sub_id = pair.client.next_id()
    pair.client_sends(Subscribe(id=sub_id, pattern="bad..pattern"))
    rejection = Error(ref=sub_id, code=INVALID_TOPIC, message="empty token")
    assert pair.server_sends(rejection) == [rejection]
    assert pair.server.pending_subscriptions == pair.client.pending_subscriptions == set()
    assert pair.client_sends(Subscribe(id=sub_id, pattern="good")) == [
        Subscribe(id=sub_id, pattern="good")
    ]


def test_error_for_a_publish_does_not_reject_a_subscription(pair: ConnectionPair) -> None:
    """An error naming a publish's ref is not taken for a subscription's rejection."""
    pair.server.receive_text(
        encode(
            [
                Subscribe(id=1, pattern="a"),
                Publish(event=Event(topic="a", time=T0), ref=1),
            ]
        )
    )
    list(pair.server.frames())
    pair.server.send(Error(ref=1, code=NO_RESPONDERS, message="nobody"))
    assert pair.server.pending_subscriptions == {1}


def test_server_unsubscribe_unknown_id_passes_through(pair: ConnectionPair) -> None:
    """unsubscribe of an unknown id is delivered, to be answered unsubscribed (idempotent)."""
    assert pair.client_sends(Unsubscribe(id=77)) == [Unsubscribe(id=77)]
    assert pair.server_sends(Unsubscribed(id=77)) == [Unsubscribed(id=77)]
    assert pair.client_sends(Unsubscribe(id=77)) == [Unsubscribe(id=77)]


def test_unsubscribe_frees_the_id(pair: ConnectionPair) -> None:
    """After unsubscribe an id may be used again, on both sides."""
    sub_id = pair.subscribe("a")
    pair.client_sends(Unsubscribe(id=sub_id))
    pair.server_sends(Unsubscribed(id=sub_id))
    assert pair.client_sends(Subscribe(id=sub_id, pattern="b")) == [
        Subscribe(id=sub_id, pattern="b")
    ]


def test_the_broker_ending_a_subscription_frees_its_id(pair: ConnectionPair) -> None:
    """An unsubscribed with a reason, unasked, ends the subscription on both sides: the id may
    be used again."""
    sub_id = pair.subscribe("a")
    ended = Unsubscribed(id=sub_id, reason="no longer allowed")
    assert pair.server_sends(ended) == [ended]
    assert pair.server.active_subscriptions == pair.client.active_subscriptions == set()
    assert pair.client_sends(Subscribe(id=sub_id, pattern="b")) == [
        Subscribe(id=sub_id, pattern="b")
    ]


def test_an_ending_crossing_a_new_subscription_spares_it(pair: ConnectionPair) -> None:
    """The broker ends subscription 5 while the client, having unsubscribed it, subscribes
    5 anew: the late unsubscribed with a reason (for the old one) does not end the new one,
    which the broker's subscribed then confirms."""
    old = pair.subscribe("a")
    pair.client.send(Unsubscribe(id=old))  # (in flight)
    pair.client.send(Subscribe(id=old, pattern="b"))
    ended = Unsubscribed(id=old, reason="no longer allowed")
    pair.client.receive_text(pair.server.send([ended, Unsubscribed(id=old), Subscribed(id=old)]))
    assert list(pair.client.frames()) == [ended, Unsubscribed(id=old), Subscribed(id=old)]
    assert pair.client.active_subscriptions == {old}


def test_subscribe_then_unsubscribe_before_the_answer(pair: ConnectionPair) -> None:
    """A subscription dropped before it was confirmed is not revived by its late confirmation."""
    pair.client_sends([Subscribe(id=1, pattern="a"), Unsubscribe(id=1)])
    assert pair.server.pending_subscriptions == set()
    assert pair.server_sends([Subscribed(id=1), Unsubscribed(id=1)]) == [
        Subscribed(id=1),
        Unsubscribed(id=1),
    ]
    assert pair.server.active_subscriptions == pair.client.active_subscriptions == set()


def test_client_refuses_duplicate_subscription_ids(pair: ConnectionPair) -> None:
    """The client refuses to reuse the id of a live or pending subscription."""
    live = pair.subscribe("a")
    with pytest.raises(LocalProtocolError, match="already in use"):
        pair.client.send(Subscribe(id=live, pattern="b"))
    pair.client.send(Subscribe(id=50, pattern="c"))
    with pytest.raises(LocalProtocolError, match="already in use"):
        pair.client.send(Subscribe(id=50, pattern="c"))


def test_client_refuses_refs_awaiting_answers(pair: ConnectionPair) -> None:
    """A ref may not be reused while it awaits its answer, nor collide with a pending id."""
    event = Event(topic="a", time=T0)
    pair.client.send(Publish(event=event, ref=9))
    with pytest.raises(LocalProtocolError, match="ref 9 is already in use"):
        pair.client.send(History(ref=9, pattern="a"))
    with pytest.raises(LocalProtocolError, match="subscription id 9 is already in use"):
        pair.client.send(Subscribe(id=9, pattern="a"))
    pair.client.send(Subscribe(id=10, pattern="a"))
    with pytest.raises(LocalProtocolError, match="ref 10 is already in use"):
        pair.client.send(Publish(event=event, ref=10))
    pair.client.send(Publish(event=event))  # no ref: nothing to collide
    pair.client.send(Publish(event=event))


def test_client_ref_may_equal_a_live_subscription_id(pair: ConnectionPair) -> None:
    """A live (confirmed) subscription's id may double as a ref: no answer can be confused."""
    sub_id = pair.subscribe("a")
    pair.client.send(Publish(event=Event(topic="a", time=T0), ref=sub_id))
    assert pair.client.pending_refs == {sub_id}


def test_client_batch_is_all_or_nothing(pair: ConnectionPair) -> None:
    """A batch with a duplicate id is refused whole: no frame of it is taken into account."""
    with pytest.raises(LocalProtocolError, match="already in use"):
        pair.client.send([Subscribe(id=1, pattern="a"), Subscribe(id=1, pattern="b")])
    assert pair.client.pending_subscriptions == set()
    event = Event(topic="a", time=T0)
    with pytest.raises(LocalProtocolError, match="already in use"):
        pair.client.send([Publish(event=event, ref=3), History(ref=3, pattern="a")])
    assert pair.client.pending_refs == set()
    pair.client.send(
        [Subscribe(id=1, pattern="a"), Unsubscribe(id=1), Subscribe(id=1, pattern="b")]
    )
    assert pair.client.pending_subscriptions == {1}


def test_client_next_id_skips_ids_in_use(pair: ConnectionPair) -> None:
    """next_id counts up from 1 and skips numbers in use as ids or refs."""
    assert pair.client.next_id() == 1
    pair.client.send(Subscribe(id=2, pattern="a"))
    pair.client.send(Publish(event=Event(topic="a", time=T0), ref=3))
    assert pair.client.next_id() == 4
    assert pair.client.next_id() == 5


def test_server_clears_published_seq(pair: ConnectionPair) -> None:
    """Clients cannot choose an event's seq: the server side clears it."""
    event = Event(topic="a", time=T0, seq=99)
    (frame,) = pair.client_sends(Publish(event=event, ref=1))
    assert isinstance(frame, Publish)
    assert frame.event == attrs.evolve(event, seq=None)
    assert frame.ref == 1


# ---------------------------------------------------------------------------------------------
# Buffering and closing


def test_frames_not_taken_stay_buffered(pair: ConnectionPair) -> None:
    """Frames left in the buffer by a partial iteration come out of the next call."""
    pair.server.receive_text(encode([Ping(), Pong(), Ping()]))
    frames = pair.server.frames()
    assert next(frames) == Ping()
    del frames
    assert list(pair.server.frames()) == [Pong(), Ping()]


def test_messages_accumulate_until_taken(pair: ConnectionPair) -> None:
    """Several received messages come out in order from one iteration."""
    pair.client.receive_text(encode(Ping()))
    pair.client.receive_text(encode([Pong(), Gap(sub=1, missed=1)]))
    assert list(pair.client.frames()) == [Ping(), Pong(), Gap(sub=1, missed=1)]


def test_close(pair: ConnectionPair) -> None:
    """After close, received text is ignored; only the server may still send errors."""
    pair.server.receive_text(encode(Ping()))
    pair.server.close()
    pair.client.close()
    assert pair.server.state is pair.client.state is ConnectionState.CLOSED
    assert list(pair.server.frames()) == []
    pair.server.receive_text(encode(Ping()))
    assert list(pair.server.frames()) == []
    text = pair.server.send(Error(code="slow_consumer", message="too slow"))
    assert orjson.loads(text)["type"] == "error"
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.server.send(Gap(sub=1, missed=1))
    with pytest.raises(LocalProtocolError, match="closed"):
        pair.client.send(Ping())


def test_repr_shows_state() -> None:
    """A connection's repr names its state."""
    assert "AWAITING_HELLO" in repr(ServerConnection())
    assert "ClientConnection" in repr(ClientConnection())
