"""`edge h3get URL`: one HTTP/3 GET, to try an edge's HTTP/3 where curl has none.

Debian's curl is built without HTTP/3, so the demo and the docs need a client that
speaks it: aioquic's QUIC client and its H3Connection, the same library the edge
serves with. It prints the response head as `curl -D -` does and writes the body
to `-o FILE` (or drops it), so the printed line reads like the curl lines beside it.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urlsplit

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset


class GetError(RuntimeError):
    """The request got no answer; the message says why."""


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    size: int = 0


class _Client(QuicConnectionProtocol):
    """One request on one QUIC connection, its body streamed to `sink`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self._sink: BinaryIO | None = None
        self._sid = -1
        self._response = Response()
        self._done: asyncio.Future[Response] | None = None
        self.closed_why = ""

    def quic_event_received(self, event) -> None:
        if isinstance(event, ConnectionTerminated):
            self.closed_why = event.reason_phrase or f"error {event.error_code}"
        if self._done is None or self._done.done():
            return
        if isinstance(event, StreamReset) and event.stream_id == self._sid:
            self._done.set_exception(GetError(f"the server reset the stream "
                                              f"(error {event.error_code})"))
            return
        if isinstance(event, ConnectionTerminated):
            self._done.set_exception(GetError(f"connection closed: {self.closed_why}"))
            return
        for h3event in self._h3.handle_event(event):
            if getattr(h3event, "stream_id", None) != self._sid:
                continue
            if isinstance(h3event, HeadersReceived) and not self._response.status:
                for name, value in h3event.headers:
                    if name == b":status":
                        self._response.status = int(value)
                    elif not name.startswith(b":"):
                        self._response.headers.append((name.decode("latin-1"),
                                                       value.decode("latin-1")))
            elif isinstance(h3event, DataReceived):
                self._response.size += len(h3event.data)
                if self._sink is not None:
                    self._sink.write(h3event.data)
            if h3event.stream_ended and not self._done.done():
                self._done.set_result(self._response)

    async def get(self, authority: str, path: str, method: str, sink: BinaryIO | None,
                  timeout: float) -> Response:
        """Send the request and wait for its whole answer."""
        self._sink, self._sid = sink, self._quic.get_next_available_stream_id()
        self._done = asyncio.get_running_loop().create_future()
        self._h3.send_headers(self._sid, [
            (b":method", method.encode()), (b":scheme", b"https"),
            (b":authority", authority.encode("idna")), (b":path", path.encode()),
            (b"user-agent", b"edge-h3get")], end_stream=True)
        self.transmit()
        return await asyncio.wait_for(self._done, timeout)


def _address(host: str, port: int, resolve: list[str]) -> str:
    """The address to connect to: a `--resolve HOST:PORT:ADDR` entry, as curl's."""
    for entry in resolve:
        name, _, rest = entry.partition(":")
        want_port, _, addr = rest.partition(":")
        if name.lower() == host.lower() and want_port == str(port) and addr:
            return addr.strip("[]")
    return host


async def fetch(url: str, cacert: str = "", resolve: list[str] = (), head: bool = False,
                sink: BinaryIO | None = None, timeout: float = 30.0) -> Response:
    """GET (or HEAD) `url` over HTTP/3; the certificate is checked (against `cacert` if
    given, else the system's roots)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise GetError(f"{url}: HTTP/3 needs an https://HOST[:PORT]/PATH URL")
    port = parts.port or 443
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               server_name=parts.hostname, verify_mode=ssl.CERT_REQUIRED,
                               idle_timeout=timeout)
    if cacert:
        config.load_verify_locations(cacert)
    else:
        config.load_verify_locations(ssl.get_default_verify_paths().cafile)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = parts.netloc.rpartition("@")[2]
    made: list[_Client] = []

    def protocol(*args, **kwargs) -> _Client:
        made.append(_Client(*args, **kwargs))
        return made[-1]

    logging.getLogger("quic").setLevel(logging.CRITICAL)    # the reason is ours to say
    try:
        async with asyncio.timeout(timeout):
            async with connect(_address(parts.hostname, port, list(resolve)), port,
                               configuration=config, create_protocol=protocol,
                               wait_connected=True) as client:
                return await client.get(authority, path, "HEAD" if head else "GET", sink,
                                        timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise GetError(f"{url}: no HTTP/3 answer within {timeout:g} s") from None
    except (ConnectionError, OSError, ssl.SSLError) as exc:
        why = (made[0].closed_why if made else "") or str(exc) or type(exc).__name__
        raise GetError(f"{url}: {why}") from None


async def _quietly(work):
    """`work` with the loop's leftovers unreported: aioquic may fail a handshake future
    nobody awaits any more once we gave up, and the command has said why already."""
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
    return await work


def run(url: str, cacert: str, resolve: list[str], head: bool, output: str,
        timeout: float) -> int:
    """The command: the head on stdout as `curl -D -` prints it; 0 when answered."""
    sink = None
    try:
        if output and output != "-":
            sink = open(output, "wb")
        elif output == "-":
            sink = sys.stdout.buffer
        response = asyncio.run(_quietly(fetch(url, cacert, resolve, head, sink, timeout)))
    except (GetError, OSError) as exc:
        print(f"edge h3get: {exc}", file=sys.stderr)
        return 1
    finally:
        if sink is not None and sink is not sys.stdout.buffer:
            sink.close()
    lines = [f"HTTP/3 {response.status}"] + [f"{k}: {v}" for k, v in response.headers]
    text = "\r\n".join(lines) + "\r\n\r\n"
    if output == "-":
        sys.stderr.write(text)
    else:
        sys.stdout.write(text)
    return 0
