"""WebSocket pass-through: the upgrade request goes to the origin; when it answers
101 Switching Protocols, the client and origin connections become one byte pipe
(frames pass untouched, in both directions, with flow control) until either
side closes. An origin that does not upgrade is answered as plain HTTP.
"""
from __future__ import annotations

import asyncio

from edge.http.headers import to_client
from edge.model import Customer
from edge.origin.order import OriginPool
from edge.http.reply import Reply
from edge.http.server import Request
from edge.state import EdgeState
from edge.origin.upstream import Unreachable, pull, relay

PIPE_HIGH = 1024 * 1024       # bytes queued towards one side before the other is paused


def wants_upgrade(request: Request) -> bool:
    headers = request.headers
    return (request.method == "GET" and headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in headers.get("Connection", "").lower())


class _Pipe:
    """Two transports joined; `done` resolves when either side has closed."""

    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self.client: asyncio.Transport | None = None
        self.origin: asyncio.Transport | None = None

    def _forward(self, data: bytes, to: "asyncio.Transport | None",
                 source: "asyncio.Transport | None") -> None:
        if not data:
            self.close()
            return
        if to is None or to.is_closing():
            return
        to.write(data)
        if source is not None and to.get_write_buffer_size() > PIPE_HIGH:
            source.pause_reading()
            asyncio.get_running_loop().create_task(self._resume(to, source))

    async def _resume(self, to: asyncio.Transport, source: asyncio.Transport) -> None:
        while not to.is_closing() and to.get_write_buffer_size() > PIPE_HIGH // 2:
            await asyncio.sleep(0.01)
        if not source.is_closing():
            source.resume_reading()

    def from_client(self, data: bytes) -> None:
        self._forward(data, self.origin, self.client)

    def from_origin(self, data: bytes) -> None:
        self._forward(data, self.client, self.origin)

    def close(self) -> None:
        for transport in (self.client, self.origin):
            if transport is not None:
                transport.close()          # after what is still queued
        if not self.done.done():
            self.done.set_result(None)


async def websocket(request: Request, reply: Reply, state: EdgeState, customer: Customer,
                    scheme: str, pool: OriginPool, host: str, path: str,
                    headers: list[tuple[str, str]]) -> bool:
    """Answer an upgrade request: a pipe after the origin's 101, else its plain answer.
    False if no origin server could be reached (the caller answers)."""
    upgrade = request.headers.get("Upgrade", "websocket")
    sent = headers + [("Connection", "Upgrade"), ("Upgrade", upgrade)]
    try:
        resp = await pull(state, customer, pool, scheme, host, "GET", path, sent, None, True,
                          shields=False)
    except Unreachable:
        return False
    if resp.status != 101:
        await relay(request, reply, resp, customer, state)
        return True
    state.metrics.requests.labels(customer.directory, "101").inc()
    out = to_client(resp.headers, version=request.version, via_name=state.config.via)
    out += [("Connection", "Upgrade"), ("Upgrade", resp.headers.get("Upgrade", upgrade))]
    pipe = _Pipe()
    reply.switch(out)
    pipe.client = reply.take_over(pipe.from_client)
    pipe.origin = resp.take_over(pipe.from_origin)
    await pipe.done
    return True
