"""The ``trio-realtime`` command's parsers, and :func:`main`: logging, signals, exit status.

This is the only place in the package that calls :func:`trio.run`.

Exit status: 0 success (and a reader of standard output that went away, as ``| head``
does); 1 failure (one line on standard error says what went wrong); 2 usage (argparse's
message); 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM; but ``serve``, which runs until
stopped, exits 0 when a signal stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import Final, NoReturn

import trio

from .. import __version__
from .._errors import RealtimeError
from .._logformat import JSONFormatter
from .._util import open_service_nursery
from ._asyncapi import add_asyncapi_options, asyncapi
from ._bench import bench
from ._commands import history, pub, recover, reply, request, sub, token
from ._common import (
    DEFAULT_URL,
    URL_ENV,
    CommandError,
    Interrupt,
    OutputClosed,
    add_client_options,
    count,
    non_negative_float,
    positive_float,
    positive_int,
    resolve_url,
    silence_stdout,
    size,
)
from ._serve import add_serve_options, serve
from ._stats import stats

__all__ = ["command_parsers", "main", "parser"]

#: The log levels, least severe first; ``-v`` and ``-q`` move one step along.
LEVELS: Final = ("debug", "info", "warning", "error", "critical")
#: The log level without ``--log-level``, ``-v`` or ``-q``.
DEFAULT_LEVEL: Final = "warning"
#: A log line in the ``text`` format.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The exit status of an interrupted command: 128 + the signal's number.
INTERRUPTED: Final = 128 + signal.SIGINT

#: Errors that end a command with one line and status 1 (anything else is a bug: traceback).
_FAILURES: Final = (CommandError, RealtimeError, OSError, ValueError, trio.TooSlowError)


def _add_global_options(command: argparse.ArgumentParser, *, after: bool) -> None:
    """The options of the command itself, which may also come after the subcommand (*after*:
    kept apart, with no default, to be combined with the ones before)."""
    suffix = "_after" if after else ""
    group = command.add_argument_group(
        "global options", "these may come before or after the command" if after else None
    )
    group.add_argument(
        "--log-level",
        dest=f"log_level{suffix}",
        type=str.lower,
        choices=LEVELS,
        default=argparse.SUPPRESS if after else None,
        help=f"how much to log to stderr, in any case ({DEFAULT_LEVEL})",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest=f"verbose{suffix}",
        action="count",
        default=argparse.SUPPRESS if after else 0,
        help="log more: one level down per -v (info, then debug)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest=f"quiet{suffix}",
        action="count",
        default=argparse.SUPPRESS if after else 0,
        help="log less: one level up per -q (error, then critical)",
    )
    group.add_argument(
        "--log-format",
        dest=f"log_format{suffix}",
        type=str.lower,
        choices=("text", "json"),
        default=argparse.SUPPRESS if after else None,
        help="text lines (the default), or one JSON object per line with the record's "
        "context (session, user, topic … when the record has them)",
    )


def _add_data_options(command: argparse.ArgumentParser, what: str) -> None:
    """DATA, ``--file``, and how to read it (``pub`` and ``request``)."""
    command.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help=f"the {what}'s data: JSON if it is JSON, else a string; - reads it from stdin "
        "(default: null)",
    )
    command.add_argument(
        "--file",
        metavar="FILE",
        help="read the data from FILE instead (- for stdin), by the same rule",
    )
    kind = command.add_mutually_exclusive_group()
    kind.add_argument(
        "--json", action="store_true", help="the data must be JSON (an error otherwise)"
    )
    kind.add_argument(
        "--string", action="store_true", help="the data is a string, even if it looks like JSON"
    )
    command.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )


def parser() -> argparse.ArgumentParser:
    """The ``trio-realtime`` command's parser."""
    main_parser = argparse.ArgumentParser(
        prog="trio-realtime",
        allow_abbrev=False,
        description="Run a trio_realtime broker, or publish, subscribe and query one. "
        f"Client commands talk to the broker at URL, ${URL_ENV} or {DEFAULT_URL}.",
        epilog="Exit status: 0 success (also when stdout is closed early, as by | head), "
        "1 failure, 2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); serve "
        "exits 0 when a signal stops it.",
    )
    main_parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(main_parser, after=False)
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        run: Callable[[argparse.Namespace], Awaitable[None]],
        *,
        after_url: tuple[str, ...] = (),
        help: str,  # noqa: A002 - add_parser's own name for it
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        new = commands.add_parser(name, help=help, description=description or help)
        new.set_defaults(run=run, after_url=after_url)
        return new

    serve_parser = command(
        "serve",
        serve,
        help="run a broker until Ctrl-C or SIGTERM",
        description="Run a broker until Ctrl-C or SIGTERM. Each option can also be set in "
        "the [server] table of a --config file (its name with _ for -); options given here "
        "override the file's.",
    )
    add_serve_options(serve_parser)
    _add_global_options(serve_parser, after=True)

    pub_parser = command(
        "pub",
        pub,
        after_url=("topic", "data"),
        help="publish an event and wait for the broker's ack",
        description="Publish an event (--count times) and wait for the broker's ack of each.",
    )
    add_client_options(pub_parser)
    pub_parser.add_argument("topic", metavar="TOPIC")
    _add_data_options(pub_parser, "event")
    pub_parser.add_argument(
        "--retain", action="store_true", help="keep it as the topic's last value"
    )
    pub_parser.add_argument(
        "--count", type=positive_int, default=1, metavar="N", help="publish it N times (1)"
    )
    pub_parser.add_argument(
        "--interval",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long between two of the --count publishes (0)",
    )
    _add_global_options(pub_parser, after=True)

    sub_parser = command(
        "sub",
        sub,
        after_url=("pattern",),
        help="print matching events, one JSON object per line",
        description="Print matching events, one JSON object per line, until Ctrl-C or "
        "--count of them. A lost connection is said on stderr and made again.",
    )
    add_client_options(sub_parser)
    sub_parser.add_argument("pattern", metavar="PATTERN")
    sub_parser.add_argument("--pretty", action="store_true", help="a readable form for people")
    sub_parser.add_argument("--group", help="join a queue group")
    sub_parser.add_argument("--since", type=int, help="replay stored events after this seq first")
    sub_parser.add_argument(
        "--count",
        type=count,
        metavar="N",
        help="exit after N events (0: subscribe, print nothing and exit)",
    )
    _add_global_options(sub_parser, after=True)

    request_parser = command(
        "request",
        request,
        after_url=("topic", "data"),
        help="send a request and print the reply's data",
        description="Send a request and print the reply's data as JSON.",
    )
    add_client_options(request_parser)
    request_parser.add_argument("topic", metavar="TOPIC")
    _add_data_options(request_parser, "request")
    request_parser.add_argument("--timeout", type=positive_float, default=10.0, help="seconds (10)")
    request_parser.add_argument(
        "--raw", action="store_true", help="print a string reply as it is, not as JSON"
    )
    _add_global_options(request_parser, after=True)

    reply_parser = command(
        "reply",
        reply,
        after_url=("pattern", "program"),
        help="answer requests: with their data (--echo), or with what COMMAND prints",
        description="Answer requests on PATTERN until Ctrl-C. COMMAND runs once per request "
        "with the request's data on stdin (a string as itself, anything else as JSON); what "
        "it prints is the reply (JSON if it is JSON, else a string). A COMMAND that exits "
        "with a status other than 0 fails the request with its stderr. Put -- before a "
        "COMMAND that has options of its own.",
    )
    add_client_options(reply_parser)
    reply_parser.add_argument("pattern", metavar="PATTERN")
    reply_parser.add_argument("program", nargs="*", metavar="COMMAND", help="and its arguments")
    reply_parser.add_argument("--echo", action="store_true", help="reply with the request's data")
    reply_parser.add_argument(
        "--group", help="join a queue group: each request goes to one member of the group"
    )
    _add_global_options(reply_parser, after=True)

    history_parser = command(
        "history",
        history,
        after_url=("pattern",),
        help="print stored events matching a pattern",
    )
    add_client_options(history_parser)
    history_parser.add_argument("pattern", metavar="PATTERN")
    history_parser.add_argument("--since", type=int, help="only events after this seq")
    history_parser.add_argument(
        "--limit", type=positive_int, default=100, help="at most this many (100)"
    )
    history_parser.add_argument("--pretty", action="store_true", help="a readable form for people")
    _add_global_options(history_parser, after=True)

    bench_parser = command(
        "bench",
        bench,
        help="measure throughput and latency with publishers and subscribers",
        description="Publish --msgs events of --size bytes from --pub connections to --sub "
        "connections, then print the rates and the latency from publish to delivery "
        "(percentiles). A progress bar shows on stderr when it is a terminal.",
    )
    add_client_options(bench_parser)
    bench_parser.add_argument(
        "--pub", type=positive_int, default=1, metavar="N", help="publishers (1)"
    )
    bench_parser.add_argument("--sub", type=count, default=1, metavar="N", help="subscribers (1)")
    bench_parser.add_argument(
        "--msgs",
        type=positive_int,
        default=10_000,
        metavar="N",
        help="events in all, shared among the publishers (10000)",
    )
    bench_parser.add_argument(
        "--size", type=size, default=128, metavar="SIZE", help="bytes of data per event (128)"
    )
    bench_parser.add_argument(
        "--ack",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wait for the broker's ack of each publish (off)",
    )
    bench_parser.add_argument("--topic", help="the topic (default: bench.<random>)")
    bench_parser.add_argument(
        "--json", action="store_true", help="print the figures as one JSON object"
    )
    _add_global_options(bench_parser, after=True)

    stats_parser = command(
        "stats",
        stats,
        help="show the broker's live figures ($sys.stats), refreshed in place",
        description="Show the broker's figures each time it publishes them on $sys.stats "
        "(every 5 s by default), with rates per second: redrawn in place on a terminal, "
        "else one block per update.",
    )
    add_client_options(stats_parser)
    stats_parser.add_argument(
        "--json", action="store_true", help="one JSON object per update, one per line"
    )
    stats_parser.add_argument("--count", type=count, metavar="N", help="exit after N updates")
    _add_global_options(stats_parser, after=True)

    recover_parser = command(
        "recover", recover, help="copy what is readable of a damaged SQLite store into a new file"
    )
    recover_parser.add_argument("file", help="the damaged store file (no broker may have it open)")
    recover_parser.add_argument("--output", help="the new file (default: FILE.recovered)")
    _add_global_options(recover_parser, after=True)

    token_parser = command(
        "token",
        token,
        help="print a new random token for user NAME (line 1), then the [[users]] lines of "
        "the config file that let it in (which hold only its SHA-256)",
    )
    token_parser.add_argument(
        "name", metavar="NAME", help="the user name: letters, digits, _ and -"
    )
    _add_global_options(token_parser, after=True)

    asyncapi_parser = command(
        "asyncapi",
        asyncapi,
        help="print an AsyncAPI 3.0 document of the event types that --app modules register",
        description="Print an AsyncAPI 3.0 document (JSON) of the event types registered "
        "with @event_type once the --app modules are imported: each topic a channel, each "
        "type a message with its JSON Schema, the broker the server.",
    )
    add_asyncapi_options(asyncapi_parser)
    _add_global_options(asyncapi_parser, after=True)
    return main_parser


def command_parsers(main_parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser, by name."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in main_parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def _configure_logging(args: argparse.Namespace) -> None:
    name = getattr(args, "log_level_after", None) or args.log_level or DEFAULT_LEVEL
    steps = (
        args.quiet
        + getattr(args, "quiet_after", 0)
        - args.verbose
        - getattr(args, "verbose_after", 0)
    )
    level = LEVELS[min(max(LEVELS.index(name) + steps, 0), len(LEVELS) - 1)]
    log_format = getattr(args, "log_format_after", None) or args.log_format or "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JSONFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler])


async def _until_signalled(command: Callable[[], Awaitable[None]], interrupt: Interrupt) -> None:
    """Run *command*; SIGINT or SIGTERM ends it gracefully (see :class:`Interrupt`)."""
    with trio.CancelScope() as scope:

        async def watch(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    interrupt.signalled(signum, scope)

        async with open_service_nursery() as nursery:
            await nursery.start(watch)
            await command()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _exit_status(exc: BaseException, command: str) -> int:
    """The exit status for *exc*, which ended the command (after saying what failed)."""
    leaves = _leaves(exc)
    if any(isinstance(leaf, OutputClosed) for leaf in leaves):
        silence_stdout()
        return 0
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return INTERRUPTED
    if len(leaves) != 1 or not isinstance(leaves[0], _FAILURES):
        raise exc
    failure = leaves[0]
    message = str(failure) or type(failure).__name__
    if isinstance(failure, trio.TooSlowError):
        message = "no reply within the timeout"
    print(f"trio-realtime {command}: error: {message}", file=sys.stderr, flush=True)
    return 1


def _command_index(argv: Sequence[str], commands: Collection[str]) -> int | None:
    """Where the subcommand is in *argv*: past the global options (and their values)."""
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in commands:
            return index
        elif arg in ("--log-level", "--log-format"):
            skip = True
        elif not arg.startswith("-") or arg == "--":
            return None
    return None


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """The global options, then the subcommand's, which may be intermixed with its
    positionals (``pub TOPIC --count 3 DATA``) and be followed by global options again."""
    full = parser()
    commands = command_parsers(full)
    index = _command_index(argv, commands)
    if index is None or any(arg in ("-h", "--help", "--version") for arg in argv[:index]):
        full.parse_args(argv)  # help, the version, or a usage error: it exits
        sys.exit(2)  # pragma: no cover - a command is required
    before = argparse.ArgumentParser(
        prog=full.prog, usage=full.format_usage()[7:], allow_abbrev=False
    )
    _add_global_options(before, after=False)
    args = before.parse_args(argv[:index])
    command = commands[argv[index]]
    for name, value in vars(command.parse_intermixed_args(argv[index + 1 :])).items():
        setattr(args, name, value)
    args.command = argv[index]
    if hasattr(args, "url"):
        resolve_url(command, args, args.after_url)
    if args.command == "reply" and args.echo == bool(args.program):
        command.error(
            "give a COMMAND to answer with or --echo" + (", not both" if args.echo else "")
        )
    return args


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``trio-realtime`` command."""
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    _configure_logging(args)
    args.interrupt = interrupt = Interrupt()
    try:
        trio.run(_until_signalled, partial(args.run, args), interrupt)
    except BaseException as exc:  # noqa: BLE001 - each becomes an exit status (or re-raised)
        sys.exit(_exit_status(exc, args.command))
    if interrupt.signals and args.command != "serve":
        sys.exit(128 + interrupt.signals[0])
    sys.exit(0)
