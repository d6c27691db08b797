"""Event stores: where events are kept, each under a seq.

:class:`Store` is the interface; :class:`MemoryStore` keeps events in memory and
:class:`SQLiteStore` in a SQLite file. :func:`trio_realtime.testing.check_store` checks that an
implementation keeps the contract.
"""

from __future__ import annotations

from ._base import DEFAULT_READ_LIMIT as DEFAULT_READ_LIMIT
from ._base import Store as Store
from ._base import StoreStatistics as StoreStatistics
from ._memory import MemoryStore as MemoryStore
from ._sqlite import RETENTION_CHUNK as RETENTION_CHUNK
from ._sqlite import RETENTION_INTERVAL as RETENTION_INTERVAL
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "DEFAULT_READ_LIMIT",
    "RETENTION_CHUNK",
    "RETENTION_INTERVAL",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "StoreStatistics",
]
