"""The demo's origin server: the sample media in data/media and a page to play it.

    python -m demo.origin 127.0.0.1:9000

Files go out with ETag, Last-Modified and byte ranges (aiohttp's FileResponse),
and `Cache-Control: max-age=300`, so the edges cache them and revalidate.
Prints "ready" once listening.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web

from cdnkit.listen import host_port as parse_bind

MEDIA = Path(__file__).resolve().parent.parent / "data" / "media"
PAGE = """<!doctype html><meta charset="utf-8"><title>gslb demo</title>
<h1>www.test.com, through the CDN</h1>
<video src="clip.webm" controls preload="metadata" width="320" height="240"></video>
<p>Seek anywhere: the browser asks the edge for byte ranges.
(The page and video are relative links, so this works at /800001/test/ too.)</p>
"""


def make_app() -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html",
                            headers={"Cache-Control": "max-age=60"})

    async def media(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = (MEDIA / name).resolve()
        if path.parent != MEDIA or not path.is_file():
            raise web.HTTPNotFound(text="no such file\n")
        return web.FileResponse(path, headers={"Cache-Control": "max-age=300"})

    async def sized(request: web.Request) -> web.Response:
        # /bytes/N: N bytes, for trying the cache with objects of any size.
        n = min(int(request.match_info["n"]), 256 * 1024 * 1024)
        return web.Response(body=b"x" * n, content_type="application/octet-stream",
                            headers={"Cache-Control": "max-age=300"})

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get(r"/bytes/{n:\d+}", sized)
    app.router.add_get("/{name}", media)
    return app


async def main(binds: list[str]) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    for bind in binds:
        host, port = parse_bind(bind)
        await web.TCPSite(runner, host, port).start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:] or ["127.0.0.1:9000"]))
    except KeyboardInterrupt:
        pass
