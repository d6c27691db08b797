"""``python -m trio_realtime``: the same as the ``trio-realtime`` command."""

from __future__ import annotations

from ._cli import main

main()
