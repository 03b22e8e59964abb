"""edge._heads reads whole heads in one call for the pass-through shortcut; llhttp
(httptools) reads every other one. For any bytes, what the C reader takes must be
exactly what llhttp and the Python shortcut make of the same bytes, and whatever
llhttp refuses the C reader must not take. Heads here are random mixes of good
fields and the kinds of bad input request smuggling is made of."""
from __future__ import annotations

import random

import httptools
import pytest

from edge import _heads
from edge.http.headers import own_lines, to_client_raw
from edge.origin.direct import FLAGGED, LONG_WAY, SPECIAL

REQUEST_FIELDS = [
    b"Host: www.pass.test", b"host: other.test", b"User-Agent: wrk", b"Accept: */*",
    b"Connection: keep-alive", b"Connection: close", b"connection: Keep-Alive",
    b"Connection: upgrade", b"Connection: keep-alive, x-secret", b"Via: 1.1 far",
    b"X-Forwarded-For: 10.0.0.1", b"Content-Length: 0", b"Content-Length: 5",
    b"Transfer-Encoding: chunked", b"Upgrade: websocket", b"Expect: 100-continue",
    b"CDN-Loop: other", b"X-Latin: caf\xe9", b"Cookie: a=1; b=2", b"X-Empty:",
    b"X-Spaces:   padded \t ", b"X-Original-URL: /admin", b"Accept-Encoding: gzip",
    # the bad ones
    b"Bad Name: x", b"Content-Length : 5", b" folded", b"\tfolded", b"X-Ctl: a\x01b",
    b"X-Nul: a\x00b", b"X-Del: a\x7fb", b"NoColon", b": empty-name", b"X-Bare: a\rb",
]
REQUEST_LINES = [
    b"GET /10k.bin HTTP/1.1", b"HEAD /a?x=1 HTTP/1.1", b"GET / HTTP/1.0",
    b"GET /%41b HTTP/1.1", b"POST /form HTTP/1.1", b"get / HTTP/1.1", b"GET  / HTTP/1.1",
    b"GET http://www.pass.test/ HTTP/1.1", b"GET * HTTP/1.1", b"GET / HTTP/2.0",
    b"GET / HTTP/1.1 ", b"GET /a\x80 HTTP/1.1", b"GET /a\tb HTTP/1.1", b"GET / http/1.1",
    b"OPTIONS / HTTP/1.1",
]


class Seen:
    """What llhttp's callbacks gave for one message."""

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.status = b""
        self.body = b""
        self.begun = self.headed = self.complete = 0
        self.parser = None
        # should_keep_alive() where the edge asks it: when the head (server.Connection)
        # and when the message (client.Upstream) is complete; llhttp forgets it after.
        self.keep_at_head = self.keep_at_end = None

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        if not self.headed:
            self.status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headed:
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.headed += 1
        if self.headed == 1:
            self.keep_at_head = self.parser.should_keep_alive()
            if isinstance(self.parser, httptools.HttpResponseParser):
                self.code = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        if not self.complete:
            self.body += data

    def on_message_complete(self) -> None:
        self.complete += 1
        if self.complete == 1:
            self.keep_at_end = self.parser.should_keep_alive()


def llhttp_request(data: bytes):
    seen = Seen()
    parser = seen.parser = httptools.HttpRequestParser(seen)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass                                   # taken, as an upgrade: not refused
    except httptools.HttpParserError:
        return None, None, seen
    return parser, seen, seen


def random_request(rng: random.Random) -> bytes:
    line = rng.choice(REQUEST_LINES[:4]) if rng.random() < 0.7 else rng.choice(REQUEST_LINES)
    good = REQUEST_FIELDS[:23]
    fields = [b"Host: www.pass.test"] if rng.random() < 0.85 else []
    for _ in range(rng.randrange(0, 6)):
        fields.append(rng.choice(good) if rng.random() < 0.8 else rng.choice(REQUEST_FIELDS))
    rng.shuffle(fields)
    head = b"\r\n".join([line, *fields]) + b"\r\n\r\n"
    roll = rng.random()
    if roll < 0.05:
        head = head[:rng.randrange(1, len(head))]          # not all here yet
    elif roll < 0.1:
        head += b"GET /next HTTP/1.1\r\n"                  # pipelined
    elif roll < 0.13:
        head = head.replace(b"\r\n", b"\n", 1)             # a bare LF
    return head


def test_random_requests_read_as_llhttp_reads_them():
    rng = random.Random(2026_12_07)
    taken = refused_by_llhttp = 0
    for _ in range(6000):
        data = random_request(rng)
        got = _heads.request(data, FLAGGED)
        parser, seen, _ = llhttp_request(data)
        if got is None:
            refused_by_llhttp += parser is None
            continue
        taken += 1
        assert parser is not None, data                    # never what llhttp refuses
        assert seen.begun == seen.headed == seen.complete == 1, data   # one, whole, no body
        method, target, version, fields, keep_alive, host, hosts, flagged, lines = got
        assert method == parser.get_method() and method in (b"GET", b"HEAD")
        assert target == seen.url and version == parser.get_http_version()
        assert fields == seen.fields and keep_alive == seen.keep_at_head, data
        hosts_seen = [v for n, v in fields if n.lower() == b"host"]
        assert hosts == len(hosts_seen) and host == (hosts_seen[0] if hosts_seen else None)
        # What direct.Passes.take's own walk over llhttp's fields decides and builds.
        walked = any(n.lower() in LONG_WAY and (n.lower() != b"connection"
                                               or v.strip().lower() != b"keep-alive")
                     for n, v in fields)
        assert flagged == walked, data
        assert lines == b"".join(b"%s: %s\r\n" % (n, v) for n, v in fields
                                 if n.lower() != b"host")
    # The mix must exercise both sides, or the comparison proves nothing.
    assert taken > 1500 and refused_by_llhttp > 300, (taken, refused_by_llhttp)


RESPONSE_FIELDS = [
    b"Server: nginx/1.22.1", b"Date: Mon, 07 Dec 2026 10:00:00 GMT",
    b"Content-Type: text/html", b"Connection: keep-alive", b"Connection: close",
    b"Close: 1", b"Keep-Alive: timeout=5", b"Via: 1.1 shield", b"VIA: 1.0 far",
    b"Cache-Status: shield; hit", b"cache-status: origin; fwd=miss",
    b"CDN-Cache-Control: max-age=60", b"Age: 30", b"X-Cache: HIT", b'ETag: "abc"',
    b"Set-Cookie: a=1", b"Set-Cookie: b=2", b"X-Latin: caf\xe9", b"Accept-Ranges: bytes",
    b"X-Trail: ends in space ", b"Proxy-Connection: keep-alive", b"Trailer: X-Sum",
    # the ones it leaves to llhttp, and the bad ones
    b"Transfer-Encoding: chunked", b"Connection: X-Secret", b"Upgrade: h2c",
    b"Content-Length: 7", b"Content-Length: +3", b"Content-Length: 3, 3",
    b"Bad Name: x", b" folded", b"X-Ctl: a\x01b", b"NoColon",
]
STATUS_LINES = [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.0 200 OK",
                b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 200",
                b"HTTP/1.1 503 Busy Now", b"HTTP/1.1 100 Continue", b"HTTP/1.1 101 Up",
                b"HTTP/1.1 20 OK", b"HTTP/2 200 OK", b"HTTP/1.1 200 caf\xe9"]


def random_response(rng: random.Random) -> tuple[bytes, bool]:
    line = rng.choice(STATUS_LINES[:7]) if rng.random() < 0.8 else rng.choice(STATUS_LINES)
    body = b"x" * rng.choice([0, 3, 100])
    fields = [b"Content-Length: %d" % len(body)] if rng.random() < 0.9 else []
    for _ in range(rng.randrange(0, 7)):
        pool = RESPONSE_FIELDS[:22] if rng.random() < 0.85 else RESPONSE_FIELDS
        fields.append(rng.choice(pool))
    rng.shuffle(fields)
    data = b"\r\n".join([line, *fields]) + b"\r\n\r\n" + body
    roll = rng.random()
    if roll < 0.05:
        data = data[:rng.randrange(1, len(data))]
    elif roll < 0.08:
        data += b"HTTP/1.1 200 OK\r\n"                    # more than Content-Length
    return data, rng.random() < 0.15


def test_random_responses_read_as_llhttp_and_to_client_raw_make_them():
    rng = random.Random(2026_12_07)
    taken = refused_by_llhttp = 0
    drop = (b"cdn-cache-control",)
    for _ in range(6000):
        data, head_request = random_response(rng)
        got = _heads.response(data, SPECIAL, drop, head_request)
        seen = Seen()
        parser = seen.parser = httptools.HttpResponseParser(seen)
        try:
            parser.feed_data(data)
            refused = False
        except httptools.HttpParserError:
            refused = True
        if got is None:
            refused_by_llhttp += refused and seen.headed == 0
            continue
        taken += 1
        assert seen.headed == 1, data                 # llhttp reads the same head ...
        size, status, phrase, length, keep_alive, lines, dated, via, statuses = got
        assert status == seen.code >= 200, data
        assert phrase == seen.status.decode("latin-1")
        raw = seen.fields
        lengths = [int(v) for n, v in raw if n.lower() == b"content-length"]
        assert length == (lengths[0] if lengths else None)
        assert data[size - 4:size] == b"\r\n\r\n" and b"\r\n\r\n" not in data[:size - 4]
        if not head_request and status not in (204, 304):
            # ... and the same body: Content-Length bytes right after the head
            assert seen.body == data[size:size + length], data
            if seen.complete:
                assert keep_alive == seen.keep_at_end, data
                assert seen.complete == 1 or len(data) > size + length
        elif seen.complete:
            assert keep_alive == seen.keep_at_head, data
        # The client's head, as the shortcut's llhttp way builds it.
        for version, alt_svc, entry in (("1.1", "", "edge; fwd=bypass"),
                                        ("1.0", 'h3=":443"', "")):
            block, block_dated = to_client_raw(raw, version=version, via_name="edge",
                                               alt_svc=alt_svc, drop=frozenset(drop),
                                               status_entry=entry)
            mine = lines + own_lines(via, statuses, version, "edge", alt_svc, entry)
            assert (mine, dated) == (block, block_dated), data
    assert taken > 1500 and refused_by_llhttp > 100, (taken, refused_by_llhttp)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",      # a body, however empty
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",  # the smuggler's space
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",               # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",                       # a bare LF
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",   # pipelined
    b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 100 + b"\r\n",  # more than it reads
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",     # over MAX_HEAD
])
def test_what_the_request_reader_leaves_to_llhttp(data):
    assert _heads.request(data, FLAGGED) is None


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\n\r\nto the close",                            # no framing
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",                       # not all here yet
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\n",
    b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",  # past MAX_HEAD
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
])
def test_what_the_response_reader_leaves_to_llhttp(data):
    assert _heads.response(data, SPECIAL, (), False) is None


def test_a_head_response_and_a_304_need_no_length():
    for data, head in ((b"HTTP/1.1 200 OK\r\nETag: \"a\"\r\n\r\n", True),
                       (b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n", False)):
        got = _heads.response(data, SPECIAL, (), head)
        assert got is not None and got[0] == len(data) and got[3] is None
