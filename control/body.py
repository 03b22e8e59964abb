"""Request bodies for the API: at most a stated size, read in pieces, parsed as JSON.

Every handler that takes a body reads it here, after the guard has checked the token
(so a client without one is never read). A body is refused with 413 before any of it
is read when its Content-Length is over the endpoint's limit, and as soon as the limit
is passed when it comes chunked; what is read is held only up to the limit. Then it
must be UTF-8 JSON, nested at most MAX_DEPTH deep (400 otherwise; cdnkit.jsondoc).

The limits (docs/control.md, "Limits"): a customer document is about 300 bytes and the
schema nests it 4 levels deep, so 1 MiB and 32 levels leave room for any real one. A
purge job is stored twice in one etcd transaction (the job and its audit record), so
its limit is half of that, to stay inside etcd's default 1.5 MiB request. `cdnctl
apply` does not use the API: it writes to the store directly.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from cdnkit.jsondoc import BadJSON, parse

KiB, MiB = 1024, 1024 * 1024
CUSTOMER_LIMIT = 1 * MiB      # POST/PUT /api/customers[/{d}], POST .../validate
PURGE_LIMIT = 512 * KiB       # POST /api/purge (about 5,000 URLs)
MAX_DEPTH = 32                # arrays and objects inside each other


class TooLarge(Exception):
    """The body is over the endpoint's limit (413); nothing past the limit was read."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"the body is larger than this endpoint's limit of {limit} bytes")


async def read_json(request: web.Request, limit: int, max_depth: int = MAX_DEPTH) -> Any:
    """The body as JSON, or TooLarge / BadJSON (cdnkit.jsondoc) for the guard to answer."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise TooLarge(limit)                   # refused before one byte is read
    data = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        data += chunk
        if len(data) > limit:                   # chunked, or sent more than declared
            raise TooLarge(limit)
    if not data:
        raise BadJSON("the body is empty; give a JSON document")
    return parse(bytes(data), max_depth)

