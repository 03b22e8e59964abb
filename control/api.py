"""The control plane's HTTP API and its page (`cdnctl serve`, default 127.0.0.1:8090).

    GET    /api/customers                      list, with revision and deployment status
    POST   /api/customers                      create (body: a customer entry as JSON)
    GET    /api/customers/{directory}          one, with revision, status, edges
    PUT    /api/customers/{directory}          replace (If-Match: REVISION, else 428)
    DELETE /api/customers/{directory}          delete (If-Match: REVISION, else 428)
    POST   /api/customers/{directory}/validate the validation path from every edge
    POST   /api/customers/{directory}/certificate/renew   order its ACME certificate anew
    GET    /api/certificates                   issuing | active (expires) | failed (why)
    GET    /api/whitelist[?format=txt|json|csv]
    POST   /api/purge                          {"urls": [...]} | {"prefix": P} | {"customer": D}
    GET    /api/purge/{id}                     per-edge completion
    GET    /api/edges                          every node, its applied revision and lag
    GET    /api/shields                        the shield POPs customers can choose
    GET    /api/audit                          the latest changes: who, when, what, revisions

Tokens (Bearer): $CDNCTL_TOKEN may write, $CDNCTL_READ_TOKEN may only read; each is
`TOKEN` (named "admin" / "read") or a comma-separated list of `NAME=TOKEN`, and the
name is what the audit log records. No token, no access. Bodies: control/body.py
(at most 1 MiB, 512 KiB for a purge: 413 past it; not UTF-8 JSON, or deeper than 32: 400).
"""
from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, Awaitable, Callable

from aiohttp import web

from cdnkit.jsondoc import BadJSON
from cdnkit.store import StoreError, StoreUnavailable

from .body import CUSTOMER_LIMIT, PURGE_LIMIT, TooLarge, read_json

from .changes import Conflict, NotFound, Refused
from .documents import Invalid
from .service import ControlPlane

log = logging.getLogger("control.api")

PLANE = web.AppKey("plane", ControlPlane)
TOKENS = web.AppKey("tokens", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Caller:
    name: str
    can_write: bool


def parse_tokens(admin: str, read: str) -> dict[str, Caller]:
    """Token -> caller, from the two environment variables' values."""
    out: dict[str, Caller] = {}
    for text, default, write in ((read, "read", False), (admin, "admin", True)):
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            name, sep, token = item.partition("=")
            out[token if sep else item] = Caller(name if sep else default, write)
    return out


MAX_PROBLEMS = 100       # an answer lists at most this many problems,
MAX_TEXT = 500           # each at most this long: a 1 MiB field is never echoed back


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text)} characters)"


def _error(status: int, message: str, **extra: Any) -> web.Response:
    problems = extra.get("problems")
    if problems is not None:
        shown = [_short(p) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
        extra["problems"] = shown
    return web.json_response({"error": _short(message), **extra}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tokens first, then every failure of the store or the rules as a clear answer."""
    if request.path.startswith("/api/"):
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        caller = None
        for token, who in request.app[TOKENS].items():
            if given and hmac.compare_digest(given.encode(), token.encode()):
                caller = who
        if caller is None:
            return _error(401, "a valid token is needed (Authorization: Bearer TOKEN)")
        if request.method not in ("GET", "HEAD") and not caller.can_write:
            return _error(403, f"token {caller.name!r} may only read")
        request["caller"] = caller
    try:
        return await handler(request)
    except TooLarge as exc:
        answer = _error(413, str(exc), limit=exc.limit)
        answer.force_close()        # don't read (linger over) the rest of a huge body
        return answer
    except BadJSON as exc:
        return _error(400, str(exc))
    except Invalid as exc:
        return _error(422, f"{len(exc.problems)} problem(s); nothing was stored",
                      problems=exc.problems)
    except Conflict as exc:
        return _error(412, str(exc))
    except Refused as exc:
        return _error(409, str(exc))
    except NotFound as exc:
        return _error(404, f"no customer, job or node {exc.args[0]!r}")
    except StoreUnavailable as exc:
        return _error(503, f"the store is unavailable: {exc}. Nothing was changed; the edges "
                      "keep serving their last config. Try again when it is back.")
    except StoreError as exc:
        return _error(503, f"the store refused the request: {exc}. Nothing was changed.")


def _expect(request: web.Request) -> int:
    text = request.headers.get("If-Match", "").strip().strip('"')
    if not text:
        raise web.HTTPPreconditionRequired(
            text=json.dumps({"error": "give If-Match: REVISION (the revision you read), so "
                                      "no one else's change is overwritten"}),
            content_type="application/json")
    if not text.isdigit():
        raise Invalid([f"If-Match: {text!r} is not a revision"])
    return int(text)


def _who(request: web.Request) -> str:
    return request["caller"].name


async def list_customers(request: web.Request) -> web.Response:
    return web.json_response(await request.app[PLANE].customers())


async def create_customer(request: web.Request) -> web.Response:
    plane = request.app[PLANE]
    body = await read_json(request, CUSTOMER_LIMIT)
    revision = await plane.create(body, _who(request))
    directory = str(body.get("directory", "")).strip("/")
    return web.json_response(await plane.customer(directory), status=201,
                             headers={"ETag": f'"{revision}"',
                                      "Location": f"/api/customers/{directory}"})


async def get_customer(request: web.Request) -> web.Response:
    card = await request.app[PLANE].customer(request.match_info["directory"])
    return web.json_response(card, headers={"ETag": f'"{card["revision"]}"'})


async def put_customer(request: web.Request) -> web.Response:
    plane = request.app[PLANE]
    expect = _expect(request)
    body = await read_json(request, CUSTOMER_LIMIT)
    revision = await plane.update(request.match_info["directory"], body, expect, _who(request))
    directory = str(body.get("directory", "")).strip("/") if isinstance(body, dict) else ""
    return web.json_response(await plane.customer(directory),
                             headers={"ETag": f'"{revision}"'})


async def delete_customer(request: web.Request) -> web.Response:
    revision = await request.app[PLANE].delete(request.match_info["directory"],
                                               _expect(request), _who(request))
    return web.json_response({"deleted": request.match_info["directory"],
                              "revision": revision})


async def validate_customer(request: web.Request) -> web.Response:
    body = await read_json(request, CUSTOMER_LIMIT) if request.can_read_body else None
    doc = body.get("customer") if isinstance(body, dict) and "customer" in body else body
    return web.json_response(await request.app[PLANE].validate(
        request.match_info["directory"], doc or None))


async def whitelist(request: web.Request) -> web.Response:
    blocks = await request.app[PLANE].whitelist()
    form = request.query.get("format", "json")
    if form == "txt":
        return web.Response(text="\n".join(blocks["ipv4"] + blocks["ipv6"]) + "\n")
    if form == "csv":
        rows = ["block,family"] + [f"{b},ipv4" for b in blocks["ipv4"]] + \
            [f"{b},ipv6" for b in blocks["ipv6"]]
        return web.Response(text="\n".join(rows) + "\n", content_type="text/csv",
                            headers={"Content-Disposition": "attachment; filename=whitelist.csv"})
    if form != "json":
        return _error(400, "format must be txt, json or csv")
    return web.json_response(blocks)


async def purge(request: web.Request) -> web.Response:
    body = await read_json(request, PURGE_LIMIT)
    if not isinstance(body, dict):
        raise Invalid(["/: a purge is a JSON object"])
    return web.json_response(await request.app[PLANE].purge(body, _who(request)), status=202)


async def purge_status(request: web.Request) -> web.Response:
    return web.json_response(await request.app[PLANE].purge_status(request.match_info["id"]))


async def edges(request: web.Request) -> web.Response:
    return web.json_response(await request.app[PLANE].fleet())


async def drain(request: web.Request) -> web.Response:
    """POST drains an edge, DELETE undrains it, GET says where it is (idle yet?)."""
    plane, edge = request.app[PLANE], request.match_info["node"]
    if request.method == "GET":
        return web.json_response(await plane.drain_status(edge))
    return web.json_response(await plane.drain(edge, _who(request),
                                               on=request.method == "POST"))


async def certificates(request: web.Request) -> web.Response:
    """Every customer's certificate: ACME issuing | active (expires) | failed (reason), or
    uploaded."""
    return web.json_response(await request.app[PLANE].certificates())


async def renew_certificate(request: web.Request) -> web.Response:
    """POST: order the customer's ACME certificate anew at the issuer's next look."""
    from .acme import request_renewal

    status = await request_renewal(request.app[PLANE], request.match_info["directory"])
    return web.json_response({"directory": request.match_info["directory"], **status},
                             status=202)


async def shields(request: web.Request) -> web.Response:
    view = await request.app[PLANE].view()
    return web.json_response({"shields": [s.name for s in view.shields]})


async def audit(request: web.Request) -> web.Response:
    plane = request.app[PLANE]
    snap = await plane.store.load(plane.keys.audit)
    limit = min(int(request.query.get("limit", "100") or 100), 1000)
    records = []
    for name, entry in sorted(snap.under(plane.keys.audit).items())[-limit:]:
        record = json.loads(entry.value)
        record["revision"] = entry.create_revision     # the change's own revision
        records.append(record)
    return web.json_response({"records": records[::-1]})


async def page(request: web.Request) -> web.Response:
    html = resources.files("control").joinpath("page.html").read_text()
    return web.Response(text=html, content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


def make_app(plane: ControlPlane, tokens: dict[str, Caller]) -> web.Application:
    # Handlers read bodies through control/body.py with their own limits; this is only the
    # backstop for a reader that does not.
    app = web.Application(middlewares=[guard], client_max_size=CUSTOMER_LIMIT)
    app[PLANE], app[TOKENS] = plane, tokens
    r = app.router
    r.add_get("/", page)
    r.add_get("/api/customers", list_customers)
    r.add_post("/api/customers", create_customer)
    r.add_get("/api/customers/{directory}", get_customer)
    r.add_put("/api/customers/{directory}", put_customer)
    r.add_delete("/api/customers/{directory}", delete_customer)
    r.add_post("/api/customers/{directory}/validate", validate_customer)
    r.add_get("/api/whitelist", whitelist)
    r.add_post("/api/purge", purge)
    r.add_get("/api/purge/{id}", purge_status)
    r.add_get("/api/edges", edges)
    r.add_get("/api/edges/{node}/drain", drain)
    r.add_post("/api/edges/{node}/drain", drain)
    r.add_delete("/api/edges/{node}/drain", drain)
    r.add_get("/api/certificates", certificates)
    r.add_post("/api/customers/{directory}/certificate/renew", renew_certificate)
    r.add_get("/api/shields", shields)
    r.add_get("/api/audit", audit)
    return app
