"""The ``trio-realtime`` command, by layer.

* ``_common``: what the commands share (errors, argument types, the broker URL, data in and
  out, standard output that may close);
* ``_serve``: ``serve`` and its options, from the command line and a config file;
* ``_commands``: ``pub``, ``sub``, ``request``, ``reply``, ``history``, ``recover``, ``token``;
* ``_bench`` and ``_stats``: ``bench`` and ``stats``;
* ``_main``: the parsers and :func:`main` (logging, signals, exit status).
"""

from __future__ import annotations

from ._main import main as main

__all__ = ["main"]
