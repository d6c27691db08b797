"""Persisted events across ``trio-realtime serve`` processes sharing a JetStream stream
(``--cluster URL --store jetstream[:STREAM]``), against a real nats-server."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import pytest
import trio
from _broker_process import open_broker_process
from _nats_server import running_nats_server

from trio_realtime import Event, open_client

if TYPE_CHECKING:
    from pathlib import Path

pytest.importorskip("nats")
pytest.importorskip("trio_asyncio")

TIMEOUT = 30


async def test_a_reader_resumes_on_another_node_after_its_node_is_killed(
    tmp_path: Path,
) -> None:
    """Two serve processes on one stream: a reader on one gets what a publisher on the other
    stores; its node is killed (SIGKILL) while events keep being stored; a reader on the
    surviving node resumes from the last seq received, and gets every event once, in seq
    order."""
    with trio.fail_after(TIMEOUT):
        async with running_nats_server(tmp_path) as server:
            cluster = ("--cluster", server.url, "--store", "jetstream:KILLED")
            async with (
                open_broker_process(*cluster, "--node", "a") as a,
                open_broker_process(*cluster, "--node", "b", expect_exit=True) as b,
            ):
                assert "jetstream, stream KILLED (subjects trs.>)" in a.stdout()
                received: list[Event] = []
                async with open_client(a.url) as publisher:
                    async with (
                        open_client(b.url, reconnect=False) as reader,
                        reader.subscribe("k.>", since=0) as sub,
                    ):
                        assert reader.epoch == publisher.epoch
                        assert (reader.epoch or "").startswith("KILLED@")
                        for i in range(20):
                            await publisher.publish("k.x", i, ack=True)
                        received += [await sub.receive() for _ in range(15)]
                        os.kill(b.pid, signal.SIGKILL)
                        assert await b.wait_exit() == -signal.SIGKILL
                    for i in range(20, 40):
                        await publisher.publish("k.x", i, ack=True)
                    async with (
                        open_client(a.url) as resumed,
                        resumed.subscribe("k.>", since=received[-1].seq) as sub,
                    ):
                        received += [await sub.receive() for _ in range(25)]
                assert [e.seq for e in received] == list(range(1, 41))
                assert [e.data for e in received] == list(range(40))


async def test_serve_needs_the_cluster_for_a_jetstream_store(tmp_path: Path) -> None:
    """``--store jetstream`` without ``--cluster`` is refused, saying what is missing."""
    with trio.fail_after(TIMEOUT):
        async with open_broker_process(
            "--store", "jetstream", expect_exit=True, wait_listening=False
        ) as broker:
            assert await broker.wait_exit() == 1
            assert "--cluster" in broker.stderr()
