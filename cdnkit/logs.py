"""Log lines of every wing: UTC ISO 8601 time, logger, PID, level, message.

UTC whatever the machine's zone, so the logs of servers in several places,
the dashboard (which shows UTC) and the API's timestamps line up.
"""
from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


class UtcFormatter(logging.Formatter):
    """`2026-11-24T09:30:00.123Z`-style times."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + \
            f".{int(record.msecs):03d}Z"


def setup(level: int = logging.INFO) -> None:
    """Log to stderr in the common format, once per process."""
    handler = logging.StreamHandler()
    handler.setFormatter(UtcFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
