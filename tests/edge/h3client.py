"""A real HTTP/3 client for the tests: aioquic's QUIC client and its H3Connection."""
from __future__ import annotations

import asyncio
import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset


@dataclass
class Answer:
    status: int = 0
    headers: dict = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    reset: bool = False


class _H3(H3Connection):
    """aioquic's client H3Connection checks Content-Length against the body even for a
    response to HEAD (which has none, RFC 9110 9.3.2): not for those streams."""

    heads: set

    def _check_content_length(self, stream) -> None:
        if stream.stream_id not in self.heads:
            super()._check_content_length(stream)


class H3Client(QuicConnectionProtocol):
    """Requests on one QUIC connection; `request` waits for the whole answer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = _H3(self._quic)
        self.h3.heads = set()
        self._waiting: dict[int, tuple[Answer, asyncio.Future]] = {}

    def quic_event_received(self, event) -> None:
        if isinstance(event, StreamReset) and event.stream_id in self._waiting:
            answer, done = self._waiting.pop(event.stream_id)
            answer.reset = True
            if not done.done():
                done.set_result(answer)
        for h3event in self.h3.handle_event(event):
            slot = self._waiting.get(h3event.stream_id)
            if slot is None:
                continue
            answer, done = slot
            if isinstance(h3event, HeadersReceived):
                for name, value in h3event.headers:
                    if name == b":status":
                        answer.status = int(value)
                    else:
                        answer.headers[name.decode()] = value.decode()
            elif isinstance(h3event, DataReceived):
                answer.body += h3event.data
            if h3event.stream_ended and not done.done():
                del self._waiting[h3event.stream_id]
                done.set_result(answer)

    async def request(self, method: str, path: str, authority: str,
                      headers: list[tuple[str, str]] = (), body: bytes | None = None,
                      timeout: float = 30.0) -> Answer:
        sid = self._quic.get_next_available_stream_id()
        done = asyncio.get_running_loop().create_future()
        self._waiting[sid] = (Answer(), done)
        if method == "HEAD":
            self.h3.heads.add(sid)
        head = [(b":method", method.encode()), (b":scheme", b"https"),
                (b":authority", authority.encode()), (b":path", path.encode())]
        head += [(k.lower().encode(), v.encode()) for k, v in headers]
        self.h3.send_headers(sid, head, end_stream=not body)
        if body:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        return await asyncio.wait_for(done, timeout)


def client_config(ca_path, server_name: str = "www.test.com") -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name,
                               verify_mode=ssl.CERT_REQUIRED, idle_timeout=20.0)
    config.load_verify_locations(str(ca_path))
    return config


@asynccontextmanager
async def h3_connect(port: int, ca_path, server_name: str = "www.test.com",
                     host: str = "127.0.0.1", local_port: int = 0):
    """An HTTP/3 connection to HOST:PORT (certificate checked against the test CA)."""
    async with connect(host, port, configuration=client_config(ca_path, server_name),
                       create_protocol=H3Client, wait_connected=True,
                       local_port=local_port) as client:
        yield client
