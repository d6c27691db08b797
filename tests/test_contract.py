"""The public surface that the EventChannel contract rests on: errors, constructors, options."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from conftest import TIMEOUT, running_broker

import trio_realtime
from trio_realtime import (
    Broker,
    BrokerOptions,
    Bus,
    Client,
    ClientState,
    DuplicateEventId,
    Event,
    EventChannel,
    InvalidTopic,
    LimitExceeded,
    LocalProtocolError,
    NoResponders,
    PermissionDenied,
    Refused,
    StoreError,
    StoreUnavailable,
    TooLarge,
    open_bus,
    open_client,
)
from trio_realtime._errors import refusal
from trio_realtime.client._state import error_from_frame
from trio_realtime.protocol import ERROR_CODES, Error
from trio_realtime.store import MemoryStore, Store

#: Each Refused subclass and the error code it stands for.
REFUSALS: dict[type[Refused], str] = {
    InvalidTopic: "invalid_topic",
    PermissionDenied: "forbidden",
    NoResponders: "no_responders",
    StoreUnavailable: "no_store",
    TooLarge: "too_large",
    LimitExceeded: "limit",
    DuplicateEventId: "duplicate_id",
}


@pytest.mark.parametrize(("cls", "code"), REFUSALS.items(), ids=lambda v: getattr(v, "__name__", v))
def test_each_refusal_maps_its_code_back_to_its_class(cls: type[Refused], code: str) -> None:
    """A refusal's code is a protocol error code, and that code comes back as the class."""
    assert code == cls.CODE
    assert code in ERROR_CODES
    error = refusal(code, "why", topic="a.b")
    assert type(error) is cls
    assert error.code == code
    assert isinstance(error, Refused)


def test_value_errors_stay_value_errors() -> None:
    """The refusals that were ValueErrors before the Refused family still are."""
    for cls in (InvalidTopic, StoreUnavailable, TooLarge, DuplicateEventId):
        assert issubclass(cls, ValueError), cls


@pytest.mark.parametrize("code", ["rate_limited", "internal", "some_future_code"])
def test_other_codes_are_plain_refusals(code: str) -> None:
    """A refusal with a code the client has no class for is a Refused carrying the code."""
    error = refusal(code, "why", topic="a.b")
    assert type(error) is Refused
    assert error.code == code
    assert code in str(error)


@pytest.mark.parametrize("code", ["bad_frame", "unknown_type", "protocol", "unsupported_protocol"])
def test_a_protocol_code_answering_an_operation_is_a_local_protocol_error(code: str) -> None:
    """The broker found the client's frame wrong: that is our side's protocol error."""
    error = error_from_frame(Error(ref=1, code=code, message="why"), "a.b")
    assert isinstance(error, LocalProtocolError)
    assert not isinstance(error, Refused)
    assert error.code == code


def test_every_refusal_code_the_client_can_get_has_a_mapping() -> None:
    """Every error code but the protocol ones maps to a Refused (a subclass where one exists)."""
    protocol_codes = {"bad_frame", "unknown_type", "protocol", "unsupported_protocol"}
    for code in ERROR_CODES - protocol_codes - {"store_failed"}:
        error = error_from_frame(Error(ref=1, code=code, message="why"), "a.b")
        assert isinstance(error, Refused), code
        assert error.code == code
    failed = error_from_frame(Error(ref=1, code="store_failed", message="disk"), "a.b")
    assert type(failed) is StoreError


@pytest.mark.parametrize("cls", [Bus, Client])
def test_bus_and_client_have_no_public_constructor(cls: type) -> None:
    """Bus and Client come only from open_bus and open_client, which own their tasks."""
    with pytest.raises(TypeError, match=f"open_{cls.__name__.lower()}"):
        cls()


def test_broker_options_are_the_broker_arguments() -> None:
    """BrokerOptions (serve_broker's typed **options) names exactly Broker's arguments."""
    parameters = inspect.signature(Broker).parameters
    assert set(BrokerOptions.__annotations__) == set(parameters)
    assert BrokerOptions.__total__ is False
    assert set(typing.get_type_hints(BrokerOptions)) == set(parameters)  # hints resolve
    hints = typing.get_type_hints(trio_realtime.serve_broker, include_extras=True)
    assert "broker_options" in hints


def test_the_root_namespace_is_the_public_api() -> None:
    """Tuning constants and internals stay out of the root namespace."""
    public = set(trio_realtime.__all__)
    for name in ("PatternIndex", "new_event_id", "DEFAULT_BUFFER_SIZE", "DEFAULT_REQUEST_TIMEOUT"):
        assert name not in public
        assert not hasattr(trio_realtime, name), name
    for name in ("Refused", "Sink", "Offered", "BrokerOptions", "EventChannel", "open_bus"):
        assert name in public
    subpackages = {
        "protocol",
        "store",
        "testing",
        "security",
        "bus",
        "broker",
        "client",
        "logging",
        "cli",
        "integrations",
        "natschannel",
        "cluster",
    }
    assert public == {name for name in dir(trio_realtime) if not name.startswith("_")} - (
        subpackages
    )


def test_importing_testing_registers_no_event_type() -> None:
    """Importing trio_realtime.testing leaves the event-type registry as it was."""
    code = (
        "import trio_realtime._payloads as e\n"
        "before = dict(e._types_by_name)\n"
        "import trio_realtime.testing\n"
        "assert e._types_by_name == before, e._types_by_name\n"
        "assert e.registered_type(trio_realtime.testing.CheckOrder) is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# The same failure, the same exception: a bus and a client of a broker side by side


class FailingStore(MemoryStore):
    """A store that fails to store events on topics under ``boom.`` and to read them."""

    async def append(self, events: Sequence[Event]) -> list[Event]:
        if any(event.topic.startswith("boom.") for event in events):
            raise StoreError("disk on fire")
        return await super().append(events)

    async def read(self, pattern: str, **kwargs: Any) -> list[Event]:
        if pattern.startswith("boom."):
            raise StoreError("cannot read")
        return await super().read(pattern, **kwargs)


@asynccontextmanager
async def bus_and_client(store: Store) -> AsyncIterator[tuple[EventChannel, EventChannel]]:
    """A bus over *store*, and a client of a broker over a store of the same kind."""
    async with (
        open_bus(store=store) as bus,
        running_broker(store=type(store)()) as served,
        open_client(served.url) as client,
    ):
        yield bus, client


async def test_a_failing_store_raises_store_error_on_the_bus_and_the_client() -> None:
    """The store fails to store or to read: StoreError, on the bus as on a client (the broker
    answers `store_failed`); the channel goes on."""
    with trio.fail_after(TIMEOUT):
        async with bus_and_client(FailingStore()) as channels:
            for channel in channels:
                with pytest.raises(StoreError, match="disk on fire"):
                    await channel.publish("boom.x", 1, ack=True)
                with pytest.raises(StoreError, match="cannot read"):
                    await channel.history("boom.>")
                async with channel.subscribe("boom.>", since=0) as sub:
                    with pytest.raises(StoreError, match="cannot read"):
                        await sub.receive()
                assert (await channel.publish("fine.x", 2, ack=True)).seq == 1


async def test_a_broker_whose_bus_closed_answers_internal() -> None:
    """A broker that can no longer route (its bus closed under it) refuses a publish with
    `internal`: a Refused carrying that code; the connection stays up."""
    with trio.fail_after(TIMEOUT):
        async with (
            open_bus() as bus,
            running_broker(bus=bus) as served,
            open_client(served.url) as client,
        ):
            await client.publish("a.b", 1, ack=True)
            await bus.aclose()
            with pytest.raises(Refused) as info:
                await client.publish("a.b", 2, ack=True)
            assert type(info.value) is Refused
            assert info.value.code == "internal"
            assert client.statistics().state is ClientState.CONNECTED
