"""Request paths made canonical before they are routed, keyed, signed or sent on.

RFC 3986 5.2.4 dot-segment removal, with percent-encoded dots (`%2e`) counted
as dots (RFC 3986 6.2.2.2: they are the same character), so `/a/../x`,
`/a/%2e%2e/x` and `/x` are one resource, one cache key and one origin
request. A path whose dot-segments would climb above its root (the customer's
root, or the bucket) is refused, not clamped: it is never what a browser
sends, and clamping would hide an attempt to reach another customer or
bucket.

Encoded slashes stay data for server origins (an origin may give `%2F` its
own meaning). For buckets the object key is the decoded path: S3 and OSS
decode `%2F` to `/` like any other octet, so the key is decoded first, then
its dot-segments removed, then it is encoded again the one way the bucket
APIs sign (every octet but unreserved ones and `/`).
"""
from __future__ import annotations

from urllib.parse import quote, unquote

DOT = frozenset({".", "%2e", "%2E"})
DOTDOT = frozenset({"..", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2E%2E", "%2e%2E",
                    "%2E%2e"})


class BadPath(ValueError):
    """A path that climbs above its root, or that no client would send."""


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path (no query); BadPath if it climbs above '/'."""
    if "/." not in path and "%2" not in path:
        return path                       # the common case: nothing to do
    if not path.startswith("/"):
        raise BadPath(path)
    out: list[str] = []
    segments = path.split("/")[1:]
    trailing = False
    for segment in segments:
        trailing = False
        if segment in DOT:
            trailing = True
        elif segment in DOTDOT:
            if not out:
                raise BadPath(path)
            out.pop()
            trailing = True
        else:
            out.append(segment)
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def clean(target: str) -> str:
    """A server origin's path and query: dot-segments removed from the path."""
    path, sep, query = target.partition("?")
    return remove_dot_segments(path) + sep + query


def clean_key(target: str) -> str:
    """A bucket's path and query: the decoded key without dot-segments, encoded again."""
    path, sep, query = target.partition("?")
    try:
        key = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise BadPath(path) from None
    if "\x00" in key:
        raise BadPath(path)
    return quote(remove_dot_segments(key), safe="/~") + sep + query
