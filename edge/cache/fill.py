"""Filling the cache: one fetch per key for every client waiting on it.

`fill_or_follow` either fetches the object from the origin (`_fill`), writing
it to a part file on the disk tier as it arrives when this worker holds the
key's lock, or follows another worker's fetch of the same key through that
part file (`_follow`). Nothing is stored unless the whole body arrived.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Mapping

from multidict import CIMultiDict

from edge.cache.store import Fill, Stored
from edge.http.client import OriginError
from edge.cache.disk import UNKNOWN, DiskStore, PartWriter, digest, part_meta
from edge.origin.forward import end_to_end
from edge.cache.freshness import Policy, initial_age, request_wants_fresh, response_policy
from edge.model import Customer
from edge.cache.serve import Exchange
from edge.origin.upstream import Unreachable, pull

log = logging.getLogger("edge.cache.fill")

COALESCE_TIMEOUT = 10.0     # a waiter whose fill has no response headers by then goes itself


@dataclass(frozen=True)
class FillJob:
    """What a fill needs to fetch one object for everyone waiting on it: the first
    client's exchange (what to ask of whom), the stale copy, the primary key."""

    ex: Exchange
    stale: Stored | None
    primary: str

    @property
    def request_headers(self) -> "Mapping":
        return self.ex.request.headers

    @property
    def request_cc(self) -> list[str]:
        return self.ex.request.headers.getall("Cache-Control", [])

    @property
    def authorization(self) -> bool:
        return "Authorization" in self.ex.request.headers


FOLLOW_POLL = 0.005     # seconds between looks at another worker's growing part file
READ_CHUNK = 64 * 1024


async def fill_or_follow(job: FillJob, fill: Fill) -> None:
    """Fill from the origin, or, when another worker is filling this key, follow its file.

    However it ends, the fill is no longer the key's once it has: a later request must
    look at the cache again, never be served this fill's (by then old) response.
    """
    try:
        await _fill_or_follow(job, fill)
    except Exception:
        # A fault of ours, not the origin's (the origin's are handled in _fill): said
        # once, with the URL; the origin is not blamed, and the clients are answered below.
        log.exception("cache fill of %s%s failed", job.ex.host, job.ex.path)
    finally:
        fills = job.ex.state.cache.fills
        if fills.get(fill.key) is fill:
            del fills[fill.key]
        if not fill.headers_ready.done() or (fill.shareable and not fill.done):
            # Nobody may wait on it for ever: a 502 before the head, an aborted body
            # (never a short one that looks whole) after it.
            fill.fail()


async def _fill_or_follow(job: FillJob, fill: Fill) -> None:
    disk = job.ex.state.cache.disk
    if disk is None:
        return await _fill(job, fill, None)
    name = digest(fill.key)
    try:
        if disk.try_lock(name):
            if _stored_meanwhile(job, fill):
                return        # another worker filled it between our lookup and the lock
            return await _fill(job, fill, disk)
        if await _follow(job, fill, disk, name):
            return
        # Not followable (it stalled, or was not storable): go to the origin ourselves.
        await _fill(job, fill, disk if disk.try_lock(name) else None)
    finally:
        disk.unlock(name)


def _stored_meanwhile(job: FillJob, fill: Fill) -> bool:
    """If the disk tier now holds a fresh copy newer than the one this fill started from,
    end the fill with it: its waiters are served from the cache."""
    state = job.ex.state
    if request_wants_fresh(job.request_cc, job.ex.customer.cache.honour_client_no_cache):
        return False
    stored = state.cache.get(fill.key)
    if (stored is None or not stored.fresh(time.time())
            or (job.stale is not None and stored.stored_at <= job.stale.stored_at)):
        return False
    fill.from_cache = True
    fill.start(stored.status, stored.reason, list(stored.headers), stored.size, True,
               stored.initial_age)
    fill.finish()
    return True


async def _follow(job: FillJob, fill: Fill, disk: DiskStore, name: str) -> bool:
    """Stream another worker's fill from its part file; False if there is none to follow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COALESCE_TIMEOUT
    while True:
        try:
            f = open(disk.part_path(name), "rb")
            break
        except FileNotFoundError:
            if not disk.locked_elsewhere(name):
                return _stored_meanwhile(job, fill)     # it ended in between
            if loop.time() > deadline:
                return False
            await asyncio.sleep(FOLLOW_POLL)
    with f:
        meta = None
        while meta is None:
            meta = part_meta(f)
            if meta is None:
                if not disk.locked_elsewhere(name) or loop.time() > deadline:
                    return False
                await asyncio.sleep(FOLLOW_POLL)
        meta, length = meta
        known = length != UNKNOWN
        fill.start(meta.status, meta.reason, list(meta.headers), length if known else None,
                   True, meta.initial_age)
        fill.spill_to(os.dup(f.fileno()), f.tell(), job.ex.state.cache.promote_bytes)
        while fill.received < length:
            chunk = f.read(READ_CHUNK)
            if chunk:
                fill.append(chunk)
                continue
            if not disk.locked_elsewhere(name):
                chunk = f.read(READ_CHUNK)       # written just before the lock was let go?
                if chunk:
                    fill.append(chunk)
                    continue
                obj = None if known else disk.lookup(fill.key)
                if obj is None or obj.size != fill.received:
                    fill.fail()             # the other worker's fetch failed mid-body
                    return True
                length = fill.received      # a body of unknown length, now complete
                break
            await asyncio.sleep(FOLLOW_POLL)
    fill.finish()
    if not fill.spilled:     # a big one is on disk; the next hit finds it there
        job.ex.state.cache.put_variant(
            job.primary, job.request_headers,
            Stored(meta.status, meta.reason, meta.headers, tuple(fill.chunks), length,
                   meta.stored_at, meta.initial_age, meta.policy), fill.key)
    return True


async def _fill(job: FillJob, fill: Fill, disk: DiskStore | None) -> None:
    """Fetch one object for every request waiting on `fill`; store it when allowed.

    With `disk` (this worker holds the key's lock) the body is also written to
    a part file as it arrives, renamed into the disk tier when complete.
    """
    state, customer, path = job.ex.state, job.ex.customer, job.ex.path
    stale, primary, request_headers = job.stale, job.primary, job.request_headers
    cache, label = state.cache, customer.directory
    # The fill fetches the whole object for everyone; a client's range is cut from it.
    headers = [(k, v) for k, v in job.ex.headers if k.lower() not in ("range", "if-range")]
    if stale is not None:
        # RFC 9111 4.3.1: revalidate with the validators we hold; without any,
        # this is an unconditional GET.
        etag, modified = stale.header("ETag"), stale.header("Last-Modified")
        if etag:
            headers = headers + [("If-None-Match", etag)]
        if modified:
            headers = headers + [("If-Modified-Since", modified)]
    resp = None
    part: PartWriter | None = None
    handed_over = False
    sent = time.time()
    try:
        try:
            resp = await pull(state, customer, job.ex.pool, job.ex.scheme, job.ex.host, "GET", path,
                              headers, None, True, fill.interim)
        except Unreachable as exc:
            fill.fail(exc.status)
            return
        if resp.status >= 500 and stale is not None:
            fill.fail(resp.status)   # with a stale copy, an origin error may be answered from it
            return
        now = time.time()
        age = initial_age(resp.headers, now, sent)
        if resp.status == 304 and stale is not None:
            merged = stale.revalidated(end_to_end(resp.headers), stale.policy, now, age)
            policy = policy_for(job, merged.status, CIMultiDict(merged.headers), now)
            fresh = replace(merged, policy=policy,
                            headers=storable(list(merged.headers), policy))
            if policy.store:
                cache.put_variant(primary, request_headers, fresh)
            else:
                cache.forget(fill.key)
            fill.revalidated = True
            if policy.store:
                fill.from_cache = True       # waiters are served the refreshed object
            fill.start(fresh.status, fresh.reason, list(fresh.headers), fresh.size, True, age)
            for chunk in fresh.chunks:
                fill.append(chunk)
            fill.finish()
            return
        policy = policy_for(job, resp.status, resp.headers, now)
        bucket = customer.origin.bucket
        if bucket is not None and resp.status >= 400 and not bucket.cache_errors:
            policy = replace(policy, store=False, reason="bucket error")
        length = resp.content_length
        limit = customer.cache.max_object
        shareable = policy.store and (length is None or length <= limit)
        if not shareable:
            # Not ours to share (or too big to hold): the first client gets the
            # response directly; later ones go to the origin themselves.
            cache.remember_pass(fill.key)
            fill.direct = resp
            handed_over = True
            fill.start(resp.status, resp.reason, end_to_end(resp.headers), length, False, age)
            return
        fill.policy, fill.stored = policy, True
        fill.start(resp.status, resp.reason, end_to_end(resp.headers), length, True, age)
        stored = Stored(resp.status, resp.reason or "", storable(fill.headers, policy), (),
                        length or 0, now, age, policy)
        if disk is not None:
            part = disk.writer(stored.meta(fill.key), length)      # None if unwritable
            if part is not None:
                # Big bodies are read back from the part file, not held in memory.
                fill.spill_to(os.open(part.path, os.O_RDONLY), part.body_offset,
                              cache.promote_bytes)
        size = 0
        from_origin = state.metrics.from_origin.labels(label)
        async for chunk in resp.chunks():
            size += len(chunk)
            from_origin.inc(len(chunk))
            if part is not None:
                part.append(chunk)           # first: readers of a spilled fill read the file
                if not part.ok and fill.spilled:
                    raise OSError("cache file write failed with the body only there")
            fill.append(chunk)
            if size > limit and fill.stored:
                # A body of unknown length turned out too big to keep: it still goes to
                # the clients reading it, and is not stored.
                fill.stored = False
                fill.overflowed()
                cache.remember_pass(fill.key)
        if length is not None and size != length:
            raise OriginError("origin closed early")
        on_disk = fill.stored and part is not None and part.commit(size)
        if part is not None and not on_disk:
            part.abort()
        part = None
        fill.finish()
        if fill.stored and (on_disk or not fill.spilled):
            cache.put_variant(primary, request_headers,
                              replace(stored, chunks=tuple(fill.chunks), size=size),
                              fill.key if on_disk else None)
    except (OriginError, OSError):
        state.metrics.origin_errors.labels(label, "?", "truncated").inc()
        fill.fail()            # nothing is stored: an origin failure never corrupts the cache
    except asyncio.CancelledError:
        fill.fail()
        raise
    finally:
        if part is not None:
            part.abort()
        if resp is not None and not handed_over:
            resp.release() if fill.done else resp.close()
        if cache.fills.get(fill.key) is fill:
            del cache.fills[fill.key]


def policy_for(job: FillJob, status: int, headers, now: float) -> Policy:
    """RFC 9111 freshness (RFC 9213 targeted fields first) with the customer's default
    TTL and its first matching TTL rule."""
    return customer_policy(job.ex.customer, job.ex.path, job.request_cc, job.authorization, status,
                           headers, now)


def customer_policy(customer: Customer, path: str, request_cc: list[str], authorization: bool,
                    status: int, headers, now: float) -> Policy:
    rules = customer.cache
    rule = rules.ttl_rule(path)
    default = rule.ttl if rule and not rule.override else rules.default_ttl
    override = rule.ttl if rule and rule.override else None
    return response_policy(status, headers, request_cc, authorization, now, default,
                           override, rules.targeted)


# Describes one fetch, not the object: the next hit gets this edge's entry alone.
NOT_STORED = frozenset({"cache-status"})


def storable(headers: list[tuple[str, str]], policy: Policy) -> tuple[tuple[str, str], ...]:
    """The response headers that are kept with the object (RFC 9111 3.1, 5.2.2.4/7)."""
    drop = NOT_STORED.union(policy.strip)
    return tuple((k, v) for k, v in headers if k.lower() not in drop)
