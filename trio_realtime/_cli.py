"""The ``trio-realtime`` command's entry point (``trio_realtime._cli:main``).

The command lives in :mod:`trio_realtime.cli`; the names here are what scripts, tests and
benchmarks import from this module.
"""

from __future__ import annotations

from .cli._common import CommandError as CommandError
from .cli._common import client_ssl_context as client_ssl_context
from .cli._main import main as main
from .cli._serve import DEFAULT_STORE as DEFAULT_STORE
from .cli._serve import SERVE_DEFAULTS as SERVE_DEFAULTS
from .cli._serve import check_exposure as check_exposure
from .cli._serve import is_loopback as is_loopback
from .cli._serve import open_store as open_store
from .cli._serve import serve_actions
from .cli._serve import serve_settings as serve_settings
from .cli._serve import server_ssl_context as server_ssl_context

__all__ = ["main"]

_serve_actions = serve_actions
