"""The floor: the least a Python (uvloop + httptools) HTTP/1.1 reverse proxy can do
per request -- parse, rewrite Host, add Via/X-Forwarded-For, pooled keep-alive to
the origin, relay the response with hop-by-hop fields dropped. No routing table,
no metrics, no timeouts, no failover: what nginx proxy_pass does, and nothing else.
    python floorproxy.py PORT ORIGIN_PORT [workers]
"""
import asyncio, os, signal, socket, sys
import httptools, uvloop

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
       b"proxy-connection"}


class Up(asyncio.Protocol):
    def __init__(self, pool):
        self.pool, self.client, self.t = pool, None, None
        self.p = httptools.HttpResponseParser(self)

    def connection_made(self, t):
        self.t = t

    def connection_lost(self, exc):
        if self in self.pool:
            self.pool.remove(self)
        self.t = None

    def data_received(self, data):
        self.p.feed_data(data)

    def on_message_begin(self):
        self.h = []

    def on_header(self, n, v):
        self.h.append((n, v))

    def on_headers_complete(self):
        st = self.p.get_status_code()
        out = [b"HTTP/1.1 %d OK\r\n" % st]
        chunked = True
        for n, v in self.h:
            ln = n.lower()
            if ln in HOP:
                continue
            if ln == b"content-length":
                chunked = False
            out.append(n + b": " + v + b"\r\n")
        out.append(b"Via: 1.1 floor\r\n")
        if chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        out.append(b"\r\n")
        self.chunked = chunked
        self.client.write(b"".join(out))

    def on_body(self, b):
        if self.chunked:
            self.client.write(b"%x\r\n" % len(b) + b + b"\r\n")
        else:
            self.client.write(b)

    def on_message_complete(self):
        if self.chunked:
            self.client.write(b"0\r\n\r\n")
        self.client = None
        if self.p.should_keep_alive():
            self.pool.append(self)
        else:                       # the origin's keepalive_requests: it will close
            self.t.close()


class Client(asyncio.Protocol):
    def __init__(self, pool, origin):
        self.pool, self.origin = pool, origin
        self.p = httptools.HttpRequestParser(self)

    def connection_made(self, t):
        self.t = t
        self.peer = t.get_extra_info("peername")[0].encode()

    def data_received(self, data):
        self.p.feed_data(data)

    def on_message_begin(self):
        self.url, self.h = b"", []

    def on_url(self, u):
        self.url += u

    def on_header(self, n, v):
        self.h.append((n, v))

    def on_message_complete(self):
        out = [self.p.get_method() + b" " + self.url + b" HTTP/1.1\r\n"]
        for n, v in self.h:
            ln = n.lower()
            if ln in HOP or ln == b"host":
                if ln == b"host":
                    host = v
                continue
            out.append(n + b": " + v + b"\r\n")
        out.append(b"Host: " + host + b"\r\nX-Forwarded-For: " + self.peer +
                   b"\r\nVia: 1.1 floor\r\n\r\n")
        data = b"".join(out)
        if self.pool:
            up = self.pool.pop()
            up.client = self
            up.t.write(data)
        else:
            asyncio.get_running_loop().create_task(self.connect(data))

    async def connect(self, data):
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Up(self.pool), "127.0.0.1", self.origin)
        up.client = self
        up.t.write(data)

    def write(self, b):
        self.t.write(b)


def serve(sock, origin):
    uvloop.install()
    async def main():
        pool = []
        srv = await asyncio.get_running_loop().create_server(lambda: Client(pool, origin), sock=sock)
        await srv.serve_forever()
    asyncio.run(main())


if __name__ == "__main__":
    port, origin = int(sys.argv[1]), int(sys.argv[2])
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    socks = []
    for _ in range(workers):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port)); s.listen(1024)
        socks.append(s)
    kids = []
    for s in socks:
        pid = os.fork()
        if pid == 0:
            serve(s, origin)
            os._exit(0)
        kids.append(pid)

    def stop(signum, frame):
        # The bench stops this process only: its workers must go with it.
        for pid in kids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for pid in kids:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
