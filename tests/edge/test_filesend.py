"""edge/http/filesend.py on real loopback sockets, on asyncio's loop and on uvloop.

Bytes a file send writes on the socket itself must never overtake what the
transport still holds (a response head, or the end of a pipelined response
before it), and a slow reader must get every byte in order.
"""
from __future__ import annotations

import asyncio
import random
import socket

import pytest
import uvloop

from edge.http.filesend import send_file

QUEUED = random.Random(1).randbytes(8 * 1024 * 1024)   # far more than both socket buffers
FILE = random.Random(2).randbytes(3 * 1024 * 1024 + 12345)


class Server(asyncio.Protocol):
    """Writes QUEUED through its transport, then the file by send_file."""

    def __init__(self, path, sendfile: bool):
        self.path, self.sendfile = path, sendfile
        self.paused = False
        self.waiter: asyncio.Future | None = None
        self.queued_at_send = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        asyncio.ensure_future(self.send())

    async def send(self) -> None:
        try:
            self.transport.write(QUEUED)
            self.queued_at_send = self.transport.get_write_buffer_size()
            with open(self.path, "rb") as file:
                await send_file(self.transport, self.drain, file, 0, len(FILE), self.sendfile)
            self.done.set_result(None)
        except Exception as exc:            # the test sees it
            self.done.set_exception(exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def drain(self) -> None:
        if self.paused:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


async def exchange(path, sendfile: bool) -> tuple[bytes, int]:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)   # accepted ones too
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    protocols: list[Server] = []

    def make() -> Server:
        protocols.append(Server(path, sendfile))
        return protocols[-1]

    server = await loop.create_server(make, sock=listener)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.setblocking(False)
    await loop.sock_connect(client, listener.getsockname())
    reader, writer = await asyncio.open_connection(sock=client)
    try:
        await asyncio.sleep(0.2)                     # the server's socket fills, its queue grows
        got = bytearray()
        while len(got) < len(QUEUED) + len(FILE):
            piece = await asyncio.wait_for(reader.read(256 * 1024), 10)
            if not piece:
                break
            got += piece
            await asyncio.sleep(0.001)               # a slow reader: sends go out in pieces
        await asyncio.wait_for(protocols[0].done, 10)
        return bytes(got), protocols[0].queued_at_send
    finally:
        writer.close()
        server.close()


@pytest.mark.parametrize("sendfile", [False, True], ids=["copy", "sendfile"])
@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_file_follows_what_the_transport_holds_whole_and_in_order(tmp_path, run, sendfile):
    path = tmp_path / "object"
    path.write_bytes(FILE)
    got, queued = run(exchange(path, sendfile))
    assert queued > 0                # the file send began with the transport's queue not empty
    assert len(got) == len(QUEUED) + len(FILE)
    assert got[:len(QUEUED)] == QUEUED and got[len(QUEUED):] == FILE
