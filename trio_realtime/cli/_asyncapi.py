"""``trio-realtime asyncapi``: print the AsyncAPI 3.0 document of an application's event types.

The types are the attrs classes registered with :func:`~trio_realtime.event_type` when the
modules named by ``--app`` are imported (the current directory is searched first, as
``python -m`` does). The document goes to standard output as indented JSON.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import orjson

from ._common import DEFAULT_URL, URL_ENV, CommandError, write

__all__ = ["add_asyncapi_options", "asyncapi"]


def add_asyncapi_options(command: argparse.ArgumentParser) -> None:
    """The ``asyncapi`` command's options."""
    command.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a dotted name, such as myapp.events) to register its event "
        "types first; repeatable",
    )
    command.add_argument(
        "--server",
        metavar="URL",
        help=f"the broker's URL as the document's server (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    command.add_argument(
        "--title", default="trio_realtime events", help="info.title (trio_realtime events)"
    )
    command.add_argument(
        "--api-version",
        default="1.0.0",
        metavar="VERSION",
        help="info.version: your event catalogue's version (1.0.0)",
    )


def import_apps(modules: list[str]) -> None:
    """Import each of *modules*, the current directory first on the path.

    Raises:
        CommandError: if a module cannot be found (an error inside one is raised as it is).
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name == exc.name or name.startswith(f"{exc.name}.")):
                raise  # a module that the application's module imports is missing
            raise CommandError(
                f"no module named {exc.name!r} (--app {name}): give a dotted module name "
                f"importable from the current directory or the Python path"
            ) from None


async def asyncapi(args: argparse.Namespace) -> None:
    """Print the AsyncAPI document of the event types registered by ``--app`` modules."""
    from ..integrations import asyncapi_document

    import_apps(args.app)
    server = args.server or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        document = asyncapi_document(server=server, title=args.title, version=args.api_version)
    except TypeError as exc:  # a field type that cannot be described
        raise CommandError(str(exc)) from None
    write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
