"""Helpers for testing code that uses trio_realtime, and for testing trio_realtime itself.

``check_channel`` runs the whole :class:`~trio_realtime.EventChannel` contract against an
implementation; ``check_store`` runs the :class:`~trio_realtime.store.Store` contract.
"""

from __future__ import annotations

from ._check_channel import CheckOrder as CheckOrder
from ._check_channel import check_channel as check_channel
from ._check_store import check_store as check_store

__all__ = ["CheckOrder", "check_channel", "check_store"]
