"""Raw HTTP/1.1 on a socket, for requests no client library would send as written."""
from __future__ import annotations

import asyncio


async def exchange(port: int, data: bytes, timeout: float = 5.0,
                   host: str = "127.0.0.1") -> tuple[bytes, dict[str, str], bytes]:
    """Send `data` on a new connection and read one response: (status line, headers, body).

    The body is read by Content-Length, or to the end of the connection.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])),
                                          timeout)
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
        return lines[0].encode("latin-1"), headers, body
    finally:
        writer.close()


def get(target: str, host: str = "www.test.com", *extra: str) -> bytes:
    """A GET request head as written, with `Connection: close`."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *extra, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawOrigin:
    """An origin written at the byte level, for what no framework sends: 1xx responses,
    bodies longer than their Content-Length, connections closed at chosen moments.

    `handler(reader, writer, n)` serves connection number `n` (from 0)."""

    def __init__(self, handler, host: str = "127.0.0.88"):
        self.handler, self.host = handler, host
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        try:
            await self.handler(reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> "RawOrigin":
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def origin(self, **extra) -> dict:
        return {"http": [f"{self.host}:{self.port}"], **extra}


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """(request line, headers, body by Content-Length) of one request an origin reads."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return lines[0].encode(), headers, body
