"""The client commands: ``pub``, ``sub``, ``request``, ``reply``, ``history``; and ``recover``
and ``token``, which need no broker."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from typing import TYPE_CHECKING, Any

import orjson
import trio

from .._errors import StoreError
from .._util import open_service_nursery
from ._common import (
    CommandError,
    connect,
    data_text,
    headers,
    parse_data,
    print_event,
    read_data,
    write,
)

if TYPE_CHECKING:
    from .._event import Event
    from ..client._client import Client

__all__ = ["history", "pub", "recover", "reply", "request", "sub", "token"]

logger = logging.getLogger("trio_realtime.cli")


def _kind(args: argparse.Namespace) -> str:
    """How to read the data: ``json`` (``--json``), ``string`` (``--string``) or ``auto``."""
    return "json" if args.json else "string" if args.string else "auto"


async def pub(args: argparse.Namespace) -> None:
    """Publish the data ``--count`` times, ``--interval`` seconds apart, each acked."""
    data = read_data(args.data, args.file, kind=_kind(args))
    async with connect(args, "pub") as client:
        for n in range(args.count):
            if n and args.interval:
                await trio.sleep(args.interval)
            event = await client.publish(
                args.topic, data, headers=headers(args.header), retain=args.retain, ack=True
            )
            seq = f" seq {event.seq}" if event.seq is not None else ""
            write(f"published {event.id} on {event.topic}{seq}\n")


async def _report_link(client: Client, command: str) -> None:
    """Log (as a warning: shown by default) each time *client* loses the broker and each
    time it has it back, until the client closes."""
    from ..client._client import ClientState

    state = client.state
    lost = state is not ClientState.CONNECTED
    while state is not ClientState.CLOSED:
        state = await client.wait_state_change(state)
        if state is ClientState.CONNECTED and lost:
            lost = False
            logger.warning("%s: connected to %s again", command, client.url)
        elif state in (ClientState.DISCONNECTED, ClientState.CONNECTING) and not lost:
            lost = True
            logger.warning("%s: lost the connection to %s; reconnecting", command, client.url)


async def sub(args: argparse.Namespace) -> None:
    """Print matching events until interrupted, or ``--count`` of them."""
    async with (
        connect(args, "sub", reconnect=True) as client,
        client.subscribe(
            args.pattern,
            group=args.group,
            since=args.since,
            max_buffer_size=10_000,
            overflow="drop_oldest",
        ) as subscription,
        open_service_nursery() as nursery,
    ):
        logger.info("subscribed to %s on %s", args.pattern, client.url)
        if args.count == 0:
            return
        nursery.start_soon(_report_link, client, "sub")
        received = 0
        with args.interrupt.catch():
            async for event in subscription:
                print_event(event, pretty=args.pretty)
                received += 1
                if args.count is not None and received >= args.count:
                    return


async def request(args: argparse.Namespace) -> None:
    """Send one request; print the reply's data."""
    data = read_data(args.data, args.file, kind=_kind(args))
    async with connect(args, "request") as client:
        reply = await client.request(
            args.topic, data, headers=headers(args.header), timeout=args.timeout
        )
    text = data_text(reply.data) if args.raw else orjson.dumps(reply.to_dict()["data"]).decode()
    write(text + "\n")


async def reply(args: argparse.Namespace) -> None:
    """Answer requests until interrupted: with the request's data (``--echo``), or with what
    a command prints given the request's data on its standard input."""
    command: list[str] = args.program
    if command and shutil.which(command[0]) is None:
        raise CommandError(f"cannot find the command {command[0]!r} to answer with")
    answered = 0

    async def answer(event: Event) -> Any:
        nonlocal answered
        answered += 1
        logger.info("request #%d on %s", answered, event.topic)
        if args.echo:
            return event.data
        return await _run(command, data_text(event.data))

    async with (
        connect(args, "reply", reconnect=True) as client,
        client.serve(args.pattern, answer, group=args.group),
        open_service_nursery() as nursery,
    ):
        logger.info(
            "answering requests on %s at %s%s",
            args.pattern,
            client.url,
            f" in queue group {args.group}" if args.group else "",
        )
        nursery.start_soon(_report_link, client, "reply")
        with args.interrupt.catch():
            await trio.sleep_forever()


async def _run(command: list[str], stdin: str) -> Any:
    """Run *command* with *stdin*: its output is the reply's data (JSON if it is JSON, else
    the text); failing (a status other than 0), it fails the request with its stderr."""
    try:
        done = await trio.run_process(
            command, stdin=stdin.encode(), capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as exc:
        logger.warning("cannot run %s: %s", command[0], exc.strerror or exc)
        raise RuntimeError(f"the responder cannot run {command[0]}") from None
    if done.returncode != 0:
        complaint = done.stderr.decode(errors="replace").strip()
        status = f"exit status {done.returncode}"
        raise RuntimeError(f"{complaint} ({status})" if complaint else status)
    return parse_data(done.stdout.decode(errors="replace"))


async def history(args: argparse.Namespace) -> None:
    """Print the stored events that match."""
    async with connect(args, "history") as client:
        events = await client.history(args.pattern, since=args.since, limit=args.limit)
    for event in events:
        print_event(event, pretty=args.pretty)


async def recover(args: argparse.Namespace) -> None:
    """Copy what is readable of a damaged store into a new file, and say what to do next."""
    from ..store import recover

    try:
        report = await trio.to_thread.run_sync(recover, args.file, args.output)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    write(
        f"recovered {report.recovered} events into {report.output} (last seq "
        f"{report.last_seq}); {report.unreadable} seqs could not be read\n"
    )
    if not report.kept_epoch:
        write("it has a new epoch: resuming clients are told that events may be missing\n")
    write(
        f"to use it: stop the broker, move {report.source} (with its -wal and -shm files) "
        f"aside, and rename {report.output} to {report.source}\n"
    )


async def token(args: argparse.Namespace) -> None:
    """Print a new token for a user, then the config file's lines that let it in."""
    from ..security._auth import check_user_name, new_token, token_sha256

    try:
        name = check_user_name(args.name, what="NAME", allow_anonymous=False)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    new = new_token()
    print(
        f"Line 1 is {name}'s token: give it to the client now (it is shown only this once and "
        f"stored nowhere). The lines after it go into the broker's config file.",
        file=sys.stderr,
        flush=True,
    )
    write(f'{new}\n[[users]]\nname = "{name}"\ntoken_sha256 = "{token_sha256(new)}"\n')
