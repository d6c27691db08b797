"""Sphinx configuration for the trio_realtime documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Cross-references into the Python and Trio docs (intersphinx) need the network, so they are on
only when ``TRIO_REALTIME_INTERSPHINX=1`` is set (or on Read the Docs). Offline, such
references render as plain code, and the build still passes with ``-W``.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import TYPE_CHECKING, Any

import sphinxcontrib_trio
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.ext import napoleon
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import trio_realtime

if TYPE_CHECKING:
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

# -- Project ----------------------------------------------------------------------------------

project = "trio_realtime"
author = "The trio_realtime developers"
copyright = "The trio_realtime developers"
release = trio_realtime.__version__
version = ".".join(release.split(".")[:2])

# -- General ----------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinxcontrib_trio",
]

exclude_patterns = ["_build", "_*.rst"]  # (``_x.rst``: fragments, included)
nitpicky = False
pygments_style = "default"
python_use_unqualified_type_names = True

# -- autodoc and napoleon ---------------------------------------------------------------------

# sphinxcontrib-trio marks async functions ("await"), async context managers ("async with")
# and so on by replacing autodoc's class-based documenters. Sphinx 9 has a new autodoc
# implementation that it does not hook into yet, so keep the class-based one.
autodoc_use_legacy_class_based = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = False

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- intersphinx ------------------------------------------------------------------------------

_INVENTORIES = {
    "python": ("https://docs.python.org/3", None),
    "trio": ("https://trio.readthedocs.io/en/stable", None),
}
if os.environ.get("TRIO_REALTIME_INTERSPHINX") == "1" or os.environ.get("READTHEDOCS"):
    intersphinx_mapping = _INVENTORIES
else:
    # Offline (the default): fetching inventories would fail and, with -W, fail the build.
    intersphinx_mapping = {}

# -- HTML -------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"trio_realtime {release}"
html_theme_options = {
    "description": "A Trio-native event bus, broker and client.",
    "fixed_sidebar": True,
}

# -- Keeping the reference honest -------------------------------------------------------------


# Classes users never construct: show ``class trio_realtime.Bus``, not its private __init__.
_NO_SIGNATURE = {"trio_realtime.Bus", "trio_realtime.Client", "trio_realtime.EventChannel"}
# The public subpackages: each is declared with ``.. module::`` and documents its ``__all__``.
_SUBPACKAGES = (
    "cluster",
    "integrations",
    "natschannel",
    "protocol",
    "security",
    "store",
    "testing",
)
# The subpackages that only lay the code out: their public names are the root package's.
_LAYOUT = ("bus", "broker", "client")
# ``trio_realtime.bus._channel.Overflow`` -> ``trio_realtime.Overflow``, and
# ``trio_realtime.store._base.Store`` -> ``trio_realtime.store.Store`` (napoleon spells
# attribute types out in full, with the private module).
_PRIVATE_PATH = re.compile(r"\btrio_realtime((?:\.[a-z]\w*)?)\._\w+\.(\w+)")


def _tidy_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Make signatures read as they are used."""
    if name in _NO_SIGNATURE:
        return "", ""
    if "async-with" in sphinxcontrib_trio.sniff_options(obj):
        # ``async with open_bus() as bus`` says what you get; ``-> AsyncIterator[Bus]`` misleads.
        return signature, ""
    if signature is not None and "= NOTHING" in signature:
        # attrs fields with a factory default (``Event.id``, ``Event.time``, ...).
        return signature.replace("= NOTHING", "= ..."), return_annotation
    return None


def _public_paths(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Spell types by their public name: ``trio_realtime.X``, not ``trio_realtime._mod.X``."""

    def repl(match: re.Match[str]) -> str:
        sub = match[1][1:]
        package = "trio_realtime" if sub in _LAYOUT else f"trio_realtime{match[1]}"
        if package != "trio_realtime" and sub not in _SUBPACKAGES:
            return match[0]
        public = importlib.import_module(package).__all__
        return f"{package}.{match[2]}" if match[2] in public else match[0]

    lines[:] = [_PRIVATE_PATH.sub(repl, line) for line in lines]


def _drop_builtin_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Constants (``DEFAULT_BUFFER_SIZE = 1024``) have no docstring of their own: autodata
    would show ``int``'s. The text comes from ``reference.rst``, the value from the code."""
    doc = type(obj).__doc__
    if what == "data" and doc and lines and lines[0].strip() == doc.strip().splitlines()[0]:
        lines[:] = []


def _check_public_names(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn if a public name is not documented, or a documented name is not public.

    The public names are ``trio_realtime.__all__`` and the ``__all__`` of each public
    subpackage (``trio_realtime.store`` …), which must be declared with ``.. module::``.
    """
    from sphinx.util import logging

    logger = logging.getLogger("trio_realtime.docs")
    objects = env.get_domain("py").objects  # type: ignore[attr-defined]
    subpackages = {f"trio_realtime.{name}" for name in _SUBPACKAGES}
    declared = {name for name, entry in objects.items() if entry.objtype == "module"}
    for module in sorted(subpackages - declared):
        logger.warning(
            "%s is public but has no '.. module::' in the docs",
            module,
            type="trio_realtime",
            subtype="undocumented",
        )
    for module in sorted(name for name in declared - subpackages if name != "trio_realtime"):
        logger.warning(
            "%s is documented as a module but is not a public subpackage",
            module,
            type="trio_realtime",
            subtype="not_public",
        )
    for package in ["trio_realtime", *sorted(subpackages)]:
        prefix = f"{package}."
        documented = {
            name.removeprefix(prefix)
            for name, entry in objects.items()
            if name.startswith(prefix)
            and "." not in name.removeprefix(prefix)
            and entry.objtype != "module"
        }
        public = set(importlib.import_module(package).__all__)
        for name in sorted(public - documented):
            logger.warning(
                "%s%s is in __all__ but not documented: add it to the docs",
                prefix,
                name,
                type="trio_realtime",
                subtype="undocumented",
            )
        for name in sorted(documented - public):
            logger.warning(
                "%s%s is documented but not in %s.__all__",
                prefix,
                name,
                package,
                type="trio_realtime",
                subtype="not_public",
            )


def _napoleon_prose_properties(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Napoleon, except that a property's docstring is prose, as a method's is.

    Napoleon reads the first line of a property's docstring as ``type: description``, which
    cuts ``The most events kept (None: no limit).`` in two. Our properties are typed by their
    annotations, and their docstrings may have ``Raises:`` sections, as methods do.
    """
    napoleon._process_docstring(
        app, "method" if what == "property" else what, name, obj, options, lines
    )


class CommandHelp(SphinxDirective):
    """``.. command-help::``: the ``--help`` of ``trio-realtime`` and of each of its commands,
    rendered from the parsers at build time, so that the reference cannot drift."""

    def run(self) -> list[nodes.Node]:
        from trio_realtime.cli._main import command_parsers, parser

        columns = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "90"  # argparse wraps its help to the terminal's width
        try:
            main = parser()
            commands = [("trio-realtime", main)]
            commands += [(f"trio-realtime {n}", p) for n, p in command_parsers(main).items()]
            lines: list[str] = []
            for name, command in commands:
                lines += [f"``{name}``", "~" * (len(name) + 4), "", ".. code-block:: text", ""]
                lines += [
                    f"   {line}" if line else "" for line in command.format_help().split("\n")
                ]
                lines.append("")
        finally:
            if columns is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = columns
        container = nodes.section()
        nested_parse_with_titles(
            self.state, StringList(lines, source="trio-realtime --help"), container
        )
        return list(container.children)


def setup(app: Sphinx) -> None:
    app.add_directive("command-help", CommandHelp)
    for listener in list(app.events.listeners["autodoc-process-docstring"]):
        if listener.handler is napoleon._process_docstring:
            app.disconnect(listener.id)
    app.connect("autodoc-process-docstring", _napoleon_prose_properties)
    app.connect("autodoc-process-signature", _tidy_signature)
    app.connect("autodoc-process-docstring", _public_paths, priority=600)  # after napoleon
    app.connect("autodoc-process-docstring", _drop_builtin_docstring)
    app.connect("env-check-consistency", _check_public_names)
