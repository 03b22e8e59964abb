"""Malformed HTTP/1.1 requests: a plain 400, one counter per reason, a quiet log.

Smuggling attempts (Content-Length with Transfer-Encoding, duplicate
Content-Length), oversized heads and bad syntax are refused by server.Connection
with BAD_REQUEST and the connection closed; at most one log line every
BAD_LOG_EVERY seconds says so, with how many more there were, so a flood of them
cannot flood the log.
"""
from __future__ import annotations

import logging
import time

# The server's own name: operators filter on it, whichever module writes the line.
log = logging.getLogger("edge.http.server")

BAD_LOG_EVERY = 10.0
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Content-Length: 12\r\nConnection: close\r\n\r\nbad request\n")


class BadLog:
    """One log line per period for malformed requests, with how many there were."""

    def __init__(self) -> None:
        self.last = 0.0
        self.quiet = 0

    def note(self, peer: str, why: str) -> None:
        now = time.monotonic()
        if now - self.last < BAD_LOG_EVERY:
            self.quiet += 1
            return
        more = f" (and {self.quiet} more in the last {now - self.last:.0f} s)" if (
            self.quiet and self.last) else ""
        log.warning("bad request from %s refused: %s%s", peer, why, more)
        self.last, self.quiet = now, 0


BAD_LOG = BadLog()


def classify(exc: Exception) -> tuple[str, str]:
    """(metric reason, log text) for a parser error, never its raw internals to clients."""
    text = str(exc) or type(exc).__name__
    lower = text.lower()
    if "content-length" in lower or "transfer-encoding" in lower or "chunk" in lower:
        return "framing", text
    return "syntax", text
