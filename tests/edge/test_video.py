"""Video seeking in a real browser `<video>` element, through the edge's cache."""
from __future__ import annotations

import asyncio

from aiohttp import web

from tests.browser import chromium
from tests.conftest import ROOT, free_port, serve_app
from tests.edge.test_proxy import Edge

CLIP = ROOT / "data" / "media" / "clip.webm"
PAGE = b"""<!doctype html><video id="v" src="/clip.webm" preload="auto" muted
playsinline width="320" height="240"></video>"""

# Runs in the page: metadata, a seek to 15 s, then a moment of playback from there.
SEEK = """
const done = arguments[arguments.length - 1];
const v = document.getElementById('v');
const fail = (why) => done({error: why, code: v.error && v.error.code});
const timer = setTimeout(() => fail('timeout at ' + v.currentTime), 20000);
const seek = () => {
  v.addEventListener('seeked', () => {
    const at = v.currentTime;
    v.play().catch(() => {});
    const check = () => v.currentTime > at + 0.3
      ? (clearTimeout(timer), done({seekedTo: at, playedTo: v.currentTime,
                                    duration: v.duration, error: null}))
      : setTimeout(check, 50);
    check();
  }, {once: true});
  v.currentTime = 15;
};
v.error ? fail('media error') : (v.readyState >= 1 ? seek()
                                 : v.addEventListener('loadedmetadata', seek, {once: true}));
v.addEventListener('error', () => fail('media error'));
"""


async def test_a_browser_seeks_in_a_video_through_the_edge():
    requests: list[str | None] = []

    async def clip(request: web.Request) -> web.StreamResponse:
        requests.append(request.headers.get("Range"))
        return web.FileResponse(CLIP, headers={"Cache-Control": "max-age=600",
                                               "Content-Type": "video/webm"})

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/clip.webm", clip)
    app.router.add_get("/", page)
    oport = free_port()
    runner, _ = await serve_app(app, "127.0.0.82", oport)
    cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                          "origin": {"http": [f"127.0.0.82:{oport}"]}}]}
    try:
        async with Edge(cfg) as edge:
            def browse() -> dict:
                with chromium("--host-resolver-rules=MAP www.test.com 127.0.0.1",
                              "--autoplay-policy=no-user-gesture-required") as driver:
                    driver.set_script_timeout(30)
                    driver.get(f"http://www.test.com:{edge.port}/")
                    return driver.execute_async_script(SEEK)

            result = await asyncio.to_thread(browse)
            assert result["error"] is None, result
            assert abs(result["duration"] - 20) < 0.5
            assert result["seekedTo"] >= 14.9 and result["playedTo"] > result["seekedTo"]
            # The browser asked in ranges, the edge answered them from one origin fetch.
            partial = edge.state.metrics.registry.get_sample_value(
                "edge_requests_total", {"customer": "t", "status": "206"})
            assert partial and partial >= 1
            assert requests == [None]
    finally:
        await runner.cleanup()
