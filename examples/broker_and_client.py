"""Two clients talking through an embedded broker, and what happens when the broker restarts.

* The broker runs in this process, on 127.0.0.1 and a free port, and keeps events in a SQLite
  file in a temporary directory.
* The reader subscribes to ``orders.>``; the writer publishes orders with ``ack=True``, so each
  ``publish`` returns once the broker has stored the event, with its ``seq``.
* After the first order the broker stops (its clients see close code 1001) and starts again on
  the same port with the same file. Both clients reconnect by themselves. The writer's next
  publish waits in its outbox until then; the reader resubscribes after the last ``seq`` it
  received, so it gets every order once, in order, whether an order reached it before the
  restart or only from the store afterwards.

Run: ``python examples/broker_and_client.py``
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import trio

from trio_realtime import BrokerServer, open_client, serve_broker
from trio_realtime.store import SQLiteStore


async def broker(
    path: Path, restart: trio.Event, *, task_status: trio.TaskStatus[BrokerServer]
) -> None:
    """Serve on a free port; when *restart* is set, stop, and serve again on the same port."""
    async with trio.open_nursery() as nursery:
        server: BrokerServer = await nursery.start(
            partial(serve_broker, "127.0.0.1", 0, store=SQLiteStore(path))
        )
        task_status.started(server)
        await restart.wait()
        nursery.cancel_scope.cancel()  # graceful: clients are closed with code 1001
    print("broker stopped")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve_broker, "127.0.0.1", server.port, store=SQLiteStore(path))
        )
        print("broker started again")
        await trio.sleep_forever()


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        restart = trio.Event()
        async with trio.open_nursery() as nursery:
            server: BrokerServer = await nursery.start(
                broker, Path(directory) / "events.db", restart
            )
            async with (
                open_client(server.url, name="reader") as reader,
                reader.subscribe("orders.>") as orders,
                open_client(server.url, name="writer") as writer,
            ):
                event = await writer.publish("orders.created", {"id": 1}, ack=True)
                print("writer: stored as seq", event.seq)
                event = await orders.receive()
                print("reader got", event.data, "seq", event.seq, "from", event.source)

                restart.set()
                for order_id in (2, 3):
                    event = await writer.publish("orders.created", {"id": order_id}, ack=True)
                    print("writer: stored as seq", event.seq)
                for _ in range(2):
                    event = await orders.receive()
                    print("reader got", event.data, "seq", event.seq, "from", event.source)

                stats = reader.statistics()
                print("reader:", reader.state, "reconnects:", stats.reconnects)
            nursery.cancel_scope.cancel()  # stop the broker


if __name__ == "__main__":
    trio.run(main)
