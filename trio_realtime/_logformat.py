"""Log records as JSON: one object per line, for ``trio-realtime --log-format json``.

Each line is an object with ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``,
then the record's context: every attribute given with ``extra=`` (``session``, ``user``,
``topic`` …), and ``exception`` (the formatted traceback) and ``stack`` when the record has
them. A value JSON cannot hold is written as its ``str()``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = ["JSONFormatter"]

#: The attributes every :class:`logging.LogRecord` has: anything else came with ``extra=``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

#: The keys of the line itself, which an extra of the same name does not replace.
_OWN: Final = ("time", "level", "logger", "message", "exception", "stack")


class JSONFormatter(logging.Formatter):
    """A :class:`logging.Formatter` that writes each record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _STANDARD and key not in _OWN and not key.startswith("_")
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
