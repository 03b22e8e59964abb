"""The upstream connection pool (edge/http/pool.py) against a real origin: idle
connections are kept for POOL_IDLE, then closed, however long the pool sat empty."""
from __future__ import annotations

import asyncio

from edge.http import pool as pool_module
from tests.edge.wire import RawOrigin, read_request


async def test_an_idle_connection_lives_its_full_idle_time_after_the_pool_was_empty(
        monkeypatch):
    # Pool.put stamps a connection with the ticker's clock: when the ticker has stopped
    # (nothing busy, nothing idle) and starts again, that clock must be the loop's now,
    # not the time of the last tick, or a fresh connection looks idle for too long and
    # is closed at once.
    monkeypatch.setattr(pool_module, "POOL_IDLE", 0.6)
    closed: list[int] = []

    async def serve(reader, writer, n: int) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            closed.append(n)                      # the pool closed it
            raise

    async with RawOrigin(serve, "127.0.0.48") as origin:
        pool = pool_module.Pool()

        async def get() -> bytes:
            response = await pool.request(origin.host, origin.port, None, "GET", "/",
                                          [("Host", "pool.test")], None, 2.0)
            body = await response.read(10)
            response.release()
            return body

        try:
            async with asyncio.timeout(10):
                assert await get() == b"ok"
                await asyncio.sleep(1.0)          # idle past POOL_IDLE: closed
                assert closed == [0] and origin.connections == 1
                await asyncio.sleep(1.0)          # the ticker has stopped meanwhile
                assert await get() == b"ok"       # a new connection, pooled again
                await asyncio.sleep(0.3)          # a tick or more, well within POOL_IDLE
                assert await get() == b"ok"
                assert origin.connections == 2 and closed == [0]
                await asyncio.sleep(1.0)
                assert closed == [0, 1]
        finally:
            pool.close()
