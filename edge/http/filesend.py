"""Sending a stored file's bytes on a client's socket: a cache hit on the disk tier.

The bytes go out by `pread` into one buffer per worker and `write` on the
socket, not by sendfile(2). On this box's kernel (6.18, loopback) sendfile
left the CPUs idle part of the time and streamed 100 MB hits at ~0.75 x nginx
`proxy_cache` (whose default is `sendfile off`: the same pread + writev), where
the copy streams at ~1.2 x (bench/README.md). sendfile is kept for operators
whose NICs gain from it (`sendfile: true` in edge.yaml).

Both write on the transport's socket directly once the transport has nothing
queued, and wait for the socket to take more through a duplicate of its
descriptor (uvloop does not let anyone else watch the transport's own). The
buffer is shared by every response of the worker: nothing awaits between a
`pread` into it and the `write` out of it, and what the socket did not take is
read again when it has room, so memory stays flat however many clients stream.
TLS goes through the transport, copied in chunks with its flow control.
"""
from __future__ import annotations

import asyncio
import os

CHUNK = 256 * 1024              # one pread / write; ~8 per half of a full socket buffer
SENDFILE_MAX = 1 << 30
_BUFFER = memoryview(bytearray(CHUNK))


class ClientGone(ConnectionResetError):
    """The client went away (or the file ended early) while its body was being sent."""


async def send_file(transport: asyncio.Transport, drain, file, offset: int, count: int,
                    sendfile: bool = False) -> None:
    """`count` bytes of the open `file` from `offset` on the client's `transport`.

    `drain` waits until the transport's own queue (the response head) has gone.
    Raises ConnectionResetError when the client is gone."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None:
        return await _through_transport(transport, drain, file.fileno(), offset, count)
    await _flush_queue(transport, drain)
    fd = sock.fileno()
    watch = os.dup(fd)
    try:
        if sendfile:
            await _sendfile(transport, fd, watch, file.fileno(), offset, count)
        else:
            await _copy(transport, fd, watch, file.fileno(), offset, count)
    finally:
        os.close(watch)


async def _flush_queue(transport: asyncio.Transport, drain) -> None:
    """Bytes written on the socket itself must not overtake what the transport holds."""
    if not transport.get_write_buffer_size():
        return
    # high=0: the transport pauses its protocol at once, and says when all has gone.
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        await drain()
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits()


async def _copy(transport: asyncio.Transport, fd: int, watch: int, src: int, offset: int,
                count: int) -> None:
    buf = _BUFFER
    while count > 0:
        if transport.is_closing():
            raise ClientGone("client gone")
        have = os.preadv(src, [buf[:min(count, CHUNK)]], offset)
        if not have:
            raise ClientGone("file shorter than its object")
        pos = 0
        while pos < have:
            try:
                sent = os.write(fd, buf[pos:have])
            except BlockingIOError:
                break
            except OSError as exc:
                raise ClientGone(str(exc)) from None
            pos += sent
        offset, count = offset + pos, count - pos
        if pos < have:              # the socket is full; the rest is read again later
            await _writable(watch)


async def _sendfile(transport: asyncio.Transport, fd: int, watch: int, src: int,
                    offset: int, count: int) -> None:
    while count > 0:
        if transport.is_closing():
            raise ClientGone("client gone")
        try:
            sent = os.sendfile(fd, src, offset, min(count, SENDFILE_MAX))
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ClientGone(str(exc)) from None
        if sent:
            offset, count = offset + sent, count - sent
        else:
            await _writable(watch)


async def _writable(watch: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(watch, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(watch)


async def _through_transport(transport: asyncio.Transport, drain, src: int, offset: int,
                             count: int) -> None:
    while count > 0:
        data = os.pread(src, min(count, CHUNK), offset)
        if not data:
            raise ClientGone("file shorter than its object")
        if transport.is_closing():
            raise ClientGone("client gone")
        offset, count = offset + len(data), count - len(data)
        transport.write(data)
        await drain()
