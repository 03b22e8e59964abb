"""A stand-in edge for the health tests: answers health checks on every HOST:PORT given.

    python -m demo.standin NAME 127.0.0.12:8081 [::1]:8092 ...

`/healthz` answers 200 "ok"; `/` names the site. It starts in a fraction of
the time of `edge serve`, which the tests of DNS failover start and kill many
times; `gslb demo` runs the real edges.
"""
from __future__ import annotations

import asyncio
import sys

from aiohttp import web

from cdnkit.listen import host_port as parse_bind


async def serve(name: str, binds: list[tuple[str, int]]) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=f"demo edge {name} ({request.host})\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for host, port in binds:
        await web.TCPSite(runner, host, port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(serve(sys.argv[1], [parse_bind(b) for b in sys.argv[2:]]))
    except KeyboardInterrupt:
        pass
