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
