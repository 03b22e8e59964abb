"""WebSocket through the edge, both directions; plain HTTP when the origin will not upgrade."""
from __future__ import annotations

import aiohttp
from aiohttp import web

from tests.conftest import serve_app
from tests.edge.test_proxy import Edge


async def test_websocket_both_ways_and_refusal():
    seen = {}

    async def ws_handler(request: web.Request) -> web.StreamResponse:
        seen["host"] = request.headers["Host"]
        seen["cookie"] = request.headers.get("Cookie")
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        await ws.send_str("hello from origin")          # the origin speaks first
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        seen["closed"] = ws.close_code
        return ws

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain http here")

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_get("/plain", plain)
    runner, port = await serve_app(app, "127.0.0.61")
    cfg = {"customers": [{"directory": "t", "cnames": ["www.test.com"],
                          "origin": {"http": [f"127.0.0.61:{port}"]}}]}
    try:
        async with Edge(cfg) as edge:
            async with edge.client.ws_connect(
                    edge.base.replace("http", "ws") + "/ws", protocols=("chat",),
                    headers={"Host": "www.test.com", "Cookie": "session=1"}) as ws:
                assert ws.protocol == "chat"
                assert (await ws.receive_str(timeout=5)) == "hello from origin"
                await ws.send_str("ping?")
                assert (await ws.receive_str(timeout=5)) == "echo:ping?"
                await ws.send_bytes(b"\x01\x02\x03")
                assert (await ws.receive_bytes(timeout=5)) == b"\x03\x02\x01"
            assert seen["host"] == "www.test.com" and seen["cookie"] == "session=1"
            # an origin that does not upgrade: the client gets its plain HTTP answer
            async with edge.client.get(edge.base + "/plain", headers={
                    "Host": "www.test.com", "Connection": "Upgrade", "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                assert r.status == 200 and await r.text() == "plain http here"
                assert "Upgrade" not in r.headers
    finally:
        await runner.cleanup()
    assert seen.get("closed") is not None        # the client's close reached the origin
