"""Event stores: where events are kept, each under a seq.

:class:`Store` is the interface; :class:`MemoryStore` keeps events in memory and
:class:`SQLiteStore` in a SQLite file. :func:`trio_realtime.testing.check_store` checks that an
implementation keeps the contract. :func:`approximate_size` is how a store measures an event
for ``max_bytes``. :func:`recover` copies what is readable of a damaged SQLite store file into
a new one.
"""

from __future__ import annotations

from ._base import DEFAULT_READ_LIMIT as DEFAULT_READ_LIMIT
from ._base import Store as Store
from ._base import StoreStatistics as StoreStatistics
from ._codec import EVENT_SIZE_OVERHEAD as EVENT_SIZE_OVERHEAD
from ._codec import approximate_size as approximate_size
from ._jetstream import JetStreamStore as JetStreamStore
from ._memory import DEFAULT_MEMORY_MAX_BYTES as DEFAULT_MEMORY_MAX_BYTES
from ._memory import DEFAULT_MEMORY_MAX_EVENTS as DEFAULT_MEMORY_MAX_EVENTS
from ._memory import MemoryStore as MemoryStore
from ._recover import RecoveryReport as RecoveryReport
from ._recover import recover as recover
from ._sqlite import DEFAULT_INTEGRITY_CHECK_TIMEOUT as DEFAULT_INTEGRITY_CHECK_TIMEOUT
from ._sqlite import RETENTION_CHUNK as RETENTION_CHUNK
from ._sqlite import RETENTION_INTERVAL as RETENTION_INTERVAL
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "DEFAULT_INTEGRITY_CHECK_TIMEOUT",
    "DEFAULT_MEMORY_MAX_BYTES",
    "DEFAULT_MEMORY_MAX_EVENTS",
    "DEFAULT_READ_LIMIT",
    "EVENT_SIZE_OVERHEAD",
    "RETENTION_CHUNK",
    "RETENTION_INTERVAL",
    "JetStreamStore",
    "MemoryStore",
    "RecoveryReport",
    "SQLiteStore",
    "Store",
    "StoreStatistics",
    "approximate_size",
    "recover",
]
