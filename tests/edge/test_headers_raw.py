"""The pass-through shortcut builds a response head from the origin's bytes
(headers.to_client_raw, Reply.start_block); the long way from decoded pairs
(headers.to_client, Reply.start). The client must not be able to tell them apart:
every head here is built both ways and must be byte for byte the same."""
from __future__ import annotations

import random

import pytest

from edge.http.headers import cache_status, to_client, to_client_raw
from edge.http.reply import Reply
from edge.http.server import Connection, Request

FIELDS = [
    (b"Server", b"nginx/1.22.1"), (b"Date", b"Mon, 07 Dec 2026 10:00:00 GMT"),
    (b"date", b"Mon, 07 Dec 2026 10:00:01 GMT"), (b"Content-Type", b"text/html"),
    (b"Content-Length", b"10240"), (b"Transfer-Encoding", b"chunked"),
    (b"Connection", b"keep-alive"), (b"Connection", b"close"), (b"Close", b"1"),
    (b"Connection", b"X-Secret, keep-alive"), (b"x-secret", b"token"),
    (b"Keep-Alive", b"timeout=5"), (b"Via", b"1.1 shield"), (b"VIA", b"1.0 far"),
    (b"Cache-Status", b"shield; hit"), (b"cache-status", b"origin; fwd=miss"),
    (b"CDN-Cache-Control", b"max-age=60"), (b"Edge-Cache-Control", b"no-store"),
    (b"Age", b"30"), (b"X-Cache", b"HIT"), (b"ETag", b'"abc"'),
    (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-Latin", b"caf\xe9"),
    (b"Trailer", b"X-Sum"), (b"Upgrade", b"h2c"), (b"Proxy-Connection", b"keep-alive"),
    (b"Accept-Ranges", b"bytes"), (b"Last-Modified", b"Mon, 07 Dec 2026 09:00:00 GMT"),
]


def _conn(alt_svc: str, closing: bool) -> Connection:
    conn = Connection(None, None, "http", set(), None)
    if alt_svc:
        conn.alt_svc = alt_svc
        conn.alt_svc_line = f"Alt-Svc: {alt_svc}\r\n".encode("latin-1")
    conn.closing = closing
    return conn


def _both(raw, *, status, phrase, length, method, version, keep_alive, conn_alt, closing,
          customer_alt, drop, via_name, entry) -> tuple[Reply, Reply]:
    conn = _conn(conn_alt, closing)
    request = Request(conn, method, "/x", version, [], keep_alive, False, None)
    long_way, short = Reply(conn, request), Reply(conn, request)
    pairs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]
    long_way.start(status, phrase, to_client(pairs, version=version, via_name=via_name,
                                             alt_svc=customer_alt, drop=drop,
                                             status_entry=entry), length)
    block, dated = to_client_raw(raw, version=version, via_name=via_name, alt_svc=customer_alt,
                                 drop=frozenset(d.encode() for d in drop), status_entry=entry)
    short.start_block(status, phrase, block, dated, length)
    return long_way, short


def _same(long_way: Reply, short: Reply) -> None:
    assert short._head == long_way._head
    assert (short.close, short._chunked, short._no_body, short.status) == (
        long_way.close, long_way._chunked, long_way._no_body, long_way.status)


def test_random_heads_are_the_same_both_ways():
    rng = random.Random(9211)
    differed = set()
    for _ in range(3000):
        raw = rng.sample(FIELDS, rng.randint(0, 12))
        options = dict(status=rng.choice([200, 200, 203, 204, 206, 304, 404, 503]),
                       phrase=rng.choice(["OK", "", "Fine By Me", "bad\rphrase"]),
                       length=rng.choice([None, 0, 10240]),
                       method=rng.choice(["GET", "GET", "HEAD"]),
                       version=rng.choice(["1.1", "1.1", "1.0"]),
                       keep_alive=rng.random() < 0.8, conn_alt=rng.choice(["", 'h3=":443"']),
                       closing=rng.random() < 0.1,
                       customer_alt=rng.choice(["", 'h3=":8443"; ma=60']),
                       drop=rng.choice([(), ("cdn-cache-control",),
                                        ("edge-cache-control", "cdn-cache-control")]),
                       via_name=rng.choice(["gslb-edge", "edge café"]),
                       entry=rng.choice(["", cache_status("gslb-edge", fwd="bypass",
                                                          fwd_status=200)]))
        long_way, short = _both(raw, **options)
        _same(long_way, short)
        differed.add(long_way._head.count(b"\r\n"))
    assert len(differed) > 10            # the corpus made heads of many shapes


@pytest.mark.parametrize("raw, gone, kept", [
    # A field the origin names in Connection is hop-by-hop: dropped on both ways.
    ([(b"Connection", b"X-Secret"), (b"X-Secret", b"t"), (b"ETag", b'"1"')], b"X-Secret",
     b"ETag"),
    ([(b"x-secret", b"t"), (b"Connection", b"close, x-secret")], b"x-secret", b"Via"),
    # "close" names a field called Close; the long way drops it too.
    ([(b"Connection", b"close"), (b"Close", b"1")], b"Close:", b"Via"),
])
def test_fields_named_by_connection_are_dropped(raw, gone, kept):
    long_way, short = _both(raw, status=200, phrase="OK", length=5, method="GET",
                            version="1.1", keep_alive=True, conn_alt="", closing=False,
                            customer_alt="", drop=(), via_name="edge", entry="")
    _same(long_way, short)
    assert gone not in short._head and kept in short._head


def test_a_head_without_date_gets_one_and_upstream_status_is_kept_first():
    _, short = _both([(b"Cache-Status", b"shield; hit"), (b"Via", b"1.1 shield")],
                     status=200, phrase="OK", length=None, method="GET", version="1.1",
                     keep_alive=True, conn_alt="", closing=False, customer_alt="",
                     drop=(), via_name="edge", entry="edge; fwd=bypass")
    head = short._head.decode("latin-1")
    assert "\r\nDate: " in head and "Transfer-Encoding: chunked\r\n" in head
    assert "Cache-Status: shield; hit, edge; fwd=bypass\r\n" in head
    assert "Via: 1.1 shield, 1.1 edge\r\n" in head
