"""What the commands share: errors, argument types, the broker URL, data in and out.

Standard output carries the commands' results only (events, replies, figures); everything
about the run itself goes to standard error, as log records. :func:`write` is the one way
to standard output: a reader that went away (``| head``) becomes :exc:`OutputClosed`, which
ends the command quietly with status 0.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeVar

import orjson
import trio

if TYPE_CHECKING:
    from .._event import Event
    from ..client._client import Client

__all__ = [
    "DEFAULT_URL",
    "URL_ENV",
    "CommandError",
    "Interrupt",
    "OutputClosed",
    "add_client_options",
    "client_ssl_context",
    "connect",
    "data_text",
    "parse_data",
    "print_event",
    "read_data",
    "write",
]

N = TypeVar("N", int, float)

#: The broker a client command talks to when neither the command line nor
#: :data:`URL_ENV` names one.
DEFAULT_URL: Final = "ws://127.0.0.1:8765"
#: The environment variable that names the broker, when the command line does not.
URL_ENV: Final = "TRIO_REALTIME_URL"
#: The environment variable that holds the token, when ``--token`` is not given.
TOKEN_ENV: Final = "TRIO_REALTIME_TOKEN"


class CommandError(Exception):
    """An error to print as one line before exiting with status 1."""


class Interrupt:
    """Where SIGINT or SIGTERM stops a command: the blocks in :meth:`catch` (then the command
    ends as it would have anyway, its clients closing in good order), else the whole command
    (and a second signal does that in any case)."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._scopes: list[trio.CancelScope] = []

    @contextmanager
    def catch(self) -> Iterator[None]:
        """A block that a signal ends (as if it had returned)."""
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            try:
                yield
            finally:
                self._scopes.remove(scope)

    def signalled(self, signum: int, command: trio.CancelScope) -> None:
        """Stop the blocks in :meth:`catch`, or *command* if there are none (or again)."""
        self.signals.append(signum)
        if self._scopes and len(self.signals) == 1:
            for scope in self._scopes:
                scope.cancel()
        else:
            command.cancel()


class OutputClosed(Exception):
    """Standard output was closed by its reader (``| head``): the command ends with 0."""


def write(text: str, out: TextIO | None = None) -> None:
    """Write *text* to standard output (or *out*) and flush it.

    Raises:
        OutputClosed: if the reader has gone away.
    """
    stream = sys.stdout if out is None else out
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def silence_stdout() -> None:
    """Point standard output at the null device, so that nothing more fails to reach a
    closed pipe (Python's own flush at exit included, which would print an error)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - no file descriptor behind stdout
        pass


# -- argument types ------------------------------------------------------------------------

_SIZE_UNITS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size(text: str) -> int:
    """A size in bytes: a whole number, optionally with K, M or G (KiB, MiB, GiB)."""
    number = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = number[-1:] if number[-1:] in ("k", "m", "g") else ""
    try:
        value = int(number[: len(number) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (write e.g. 1048576, 1024K, 16M or 1G)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, not {text!r}")
    return value


def _bounded(
    kind: Callable[[str], N], what: str, *, minimum: N, maximum: N | None = None
) -> Callable[[str], N]:
    """An argparse type: *kind* of *text*, at least *minimum* (and at most *maximum*)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from {minimum} to {maximum}, not {text!r}")
        if not value >= minimum:
            raise argparse.ArgumentTypeError(
                f"must be positive, not {text!r}"
                if minimum == 1
                else f"must be at least {minimum}, not {text!r}"
            )
        return value

    return parse


def positive(kind: Callable[[str], N], what: str) -> Callable[[str], N]:
    """An argparse type: *kind* of *text*, which must be positive (*what* names the kind)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
        return value

    return parse


positive_int = positive(int, "a whole number")
positive_float = positive(float, "a number")
#: A count that may be 0.
count = _bounded(int, "a whole number", minimum=0)
#: A TCP port to listen on: 0 lets the system choose one.
listen_port = _bounded(int, "a port number", minimum=0, maximum=65535)


def non_negative_float(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


# -- event data ----------------------------------------------------------------------------


def parse_data(text: str, *, kind: str = "auto") -> Any:
    """The data *text* stands for: JSON if it is JSON, else the text as a string.

    *kind* ``"json"`` insists on JSON (:exc:`CommandError` otherwise), ``"string"`` takes
    the text as a string whatever it looks like. A string loses one trailing newline (as
    ``echo`` and most files end with one).
    """
    if kind != "string":
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            if kind == "json":
                raise CommandError(f"the data is not valid JSON ({exc}): {text!r}") from None
    return text.removesuffix("\n")


def data_text(data: Any) -> str:
    """*data* as text for a command's input or a person: a string as itself, else JSON."""
    if isinstance(data, str):
        return data
    return orjson.dumps(data).decode()


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise CommandError(f"the data from {where} is not UTF-8 text") from None


def read_data(data: str | None, file: str | None, *, kind: str, stdin: TextIO | None = None) -> Any:
    """The data of ``pub`` and ``request``: the *data* argument (``-``: standard input), or
    the contents of *file* (``-`` too), or None if neither is given."""
    if data is not None and file is not None:
        raise CommandError("give the data as an argument or with --file, not both")
    source = file if file is not None else data
    if source is None:
        return None
    if source == "-" and (file is not None or data == "-"):
        stream = sys.stdin if stdin is None else stdin
        return parse_data(_decode(stream.buffer.read(), "standard input"), kind=kind)
    if file is not None:
        try:
            with open(file, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror or exc}") from None
        return parse_data(_decode(raw, file), kind=kind)
    return parse_data(source, kind=kind)


def headers(pairs: Sequence[str]) -> dict[str, str] | None:
    """The ``--header NAME=VALUE`` options as a dict (None: none)."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"a header must look like NAME=VALUE, not {pair!r}")
        found[key] = value
    return found or None


def print_event(event: Event, *, pretty: bool, out: TextIO | None = None) -> None:
    """Write *event* as one line of JSON, or *pretty*: a heading line and its data."""
    if pretty:
        seq = f" #{event.seq}" if event.seq is not None else ""
        data = orjson.dumps(event.to_dict()["data"], option=orjson.OPT_INDENT_2).decode()
        write(f"{event.time:%H:%M:%S} {event.topic}{seq} ({event.source})\n{data}\n", out)
    else:
        write(orjson.dumps(event.to_dict()).decode() + "\n", out)


# -- connecting ------------------------------------------------------------------------------


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context of a client command: trusting the CA certificates in *ca_file*, or
    None (``wss://`` then trusts the system's CAs).

    Raises:
        CommandError: if *ca_file* cannot be used.
    """
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(f"cannot use the CA file {ca_file}: {ssl_reason(exc)}") from None


def ssl_reason(exc: OSError) -> str:
    """What is wrong, in a few words (``No such file or directory``, ``PEM lib`` …)."""
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)


def is_url(text: str) -> bool:
    """Whether *text* is a broker URL rather than a topic (topics have no ``://``)."""
    return "://" in text


def add_client_options(command: argparse.ArgumentParser) -> None:
    """The options of every command that connects to a broker, and its URL (optional)."""
    command.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help=f"the broker (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    command.add_argument(
        "--token",
        help=f"the token to connect with (default: ${TOKEN_ENV}, if set)",
    )
    command.add_argument(
        "--ca-file",
        metavar="FILE",
        help="for a wss:// URL: trust the CA certificates in FILE (PEM) instead of the system's",
    )


def resolve_url(
    parser: argparse.ArgumentParser, args: argparse.Namespace, after: Sequence[str]
) -> None:
    """Fill in ``args.url``, and move the positionals along when the first was no URL.

    The URL is optional and comes first: ``pub orders.new 1`` is read by argparse as
    URL ``orders.new`` and topic ``1``; a first positional without ``://`` is the topic, so
    each value moves one place right (the last must then be empty: else, a usage error).
    *after* names the positionals after the URL, the last of which may be a list.
    """
    if args.url is not None and not is_url(args.url):
        values = [args.url, *(getattr(args, name) for name in after)]
        last = values.pop()
        if isinstance(last, list):
            setattr(args, after[-1], [values.pop(), *last])
            shifted = values
        else:
            if last is not None:
                parser.error(
                    f"the broker URL must come first and look like {DEFAULT_URL}, not {args.url!r}"
                )
            shifted = values
        for name, value in zip(after, shifted, strict=False):
            setattr(args, name, value)
        args.url = None
    if args.url is None:
        args.url = os.environ.get(URL_ENV) or DEFAULT_URL


def connect(
    args: argparse.Namespace, command: str, *, reconnect: bool = False
) -> AbstractAsyncContextManager[Client]:
    """``open_client`` for a command: the URL, token and CA file of its options."""
    from ..client._client import open_client

    return open_client(
        args.url,
        name=f"trio-realtime {command}",
        token=args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None,
        ssl_context=client_ssl_context(args.ca_file),
        reconnect=reconnect,
    )
