"""The store client every wing uses: `file:PATH` (the YAML files as before) or etcd.

    --store file:data/edge.yaml
    --store etcd://[USER@]HOST:PORT[,HOST:PORT...][/?ca=FILE&cert=FILE&key=FILE&prefix=/cdn/]

The etcd client is etcd3aio (grpc.aio, current protobuf; checked here against
etcd 3.4: ranges, transactions, watches from a revision with the compaction
error, leases with keep-alive, users with tokens, TLS). This module adds what a
config follower needs on top: load a prefix at one revision, then follow it from
that revision, resuming after a disconnect from the last event it saw, and
loading everything again when that revision has been compacted away. The
password comes from $CDN_ETCD_PASSWORD (or the URL), never from the command line.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end
from etcd3aio.watch import WatchService

from .snapshot import Entry, Snapshot
from .storespec import PASSWORD_ENV, StoreSpec, parse_store, store_arg  # noqa: F401 (re-exported)

log = logging.getLogger("cdnkit.store")

RPC_TIMEOUT = 5.0
RETRY_MIN, RETRY_MAX = 0.2, 2.0
MAX_MESSAGE = 256 * 1024 * 1024


class StoreError(Exception):
    """The store cannot be reached or refused the request; the message says which."""


class StoreUnavailable(StoreError):
    """No etcd endpoint answers (down, partitioned, or refusing connections)."""


class _ResumingWatch(WatchService):
    """etcd3aio's watch stream, resumed from the last event seen.

    etcd3aio 0.3 resumes a broken stream from the response header's revision,
    which is the store's current revision: events of a catch-up that were not
    delivered yet would be skipped. This resumes after the last event received
    (or a progress notification), and ends the stream on a compaction so the
    caller can load everything again.
    """

    async def watch_from(self, key: bytes, range_end: bytes,
                         start: int) -> AsyncIterator[Any]:
        from etcd3aio._protobuf import WatchCreateRequest, WatchRequest

        next_revision, delay = start, RETRY_MIN
        while True:
            async def requests(rev: int = next_revision) -> AsyncIterator[Any]:
                yield WatchRequest(create_request=WatchCreateRequest(
                    key=key, range_end=range_end, start_revision=rev))
                await asyncio.Future()     # keep the request side open

            stream = self._stub.Watch(requests(), metadata=self._metadata or None)
            try:
                async for resp in stream:
                    delay = RETRY_MIN
                    if resp.compact_revision:
                        yield resp
                        return
                    if resp.events:
                        next_revision = resp.events[-1].kv.mod_revision + 1
                    elif not resp.created and resp.header.revision:
                        next_revision = max(next_revision, resp.header.revision + 1)
                    yield resp
                raise StoreUnavailable("watch stream ended")
            except (grpc.aio.AioRpcError, StoreUnavailable) as exc:
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
                if code is not None and code not in (grpc.StatusCode.UNAVAILABLE,
                                                     grpc.StatusCode.DEADLINE_EXCEEDED,
                                                     grpc.StatusCode.INTERNAL):
                    raise StoreError(f"watch refused: {exc.details()}") from None
                log.debug("watch interrupted (%s); resuming from %d in %.1f s",
                          code.name if code else exc, next_revision, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            finally:
                stream.cancel()


def _unavailable(exc: BaseException) -> StoreError:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return StoreUnavailable("etcd did not answer in time")
    text = str(exc).split("\n", 1)[0]
    if "UNAVAILABLE" in text or "connect" in text.lower():
        return StoreUnavailable(f"etcd is unreachable ({text})")
    return StoreError(text)


class EtcdStore:
    """One connection (channel) to an etcd cluster, for loading, following and writing."""

    def __init__(self, spec: StoreSpec):
        self.spec = spec
        tls: dict[str, bytes] = {}
        if spec.ca:
            tls["ca_cert"] = Path(spec.ca).read_bytes()
        if spec.cert:
            tls["cert_chain"] = Path(spec.cert).read_bytes()
            tls["cert_key"] = Path(spec.key).read_bytes()
        self.client = Etcd3Client(list(spec.endpoints), rpc_max_attempts=1, **tls)
        # One revision of 10,000 customers is several MB; gRPC's default cap is 4 MB.
        self.client._manager.grpc_options += [("grpc.max_receive_message_length", MAX_MESSAGE),
                                              ("grpc.max_send_message_length", MAX_MESSAGE)]
        # gRPC's reconnect backoff grows to 120 s; after an etcd restart a node must be back
        # well inside its lease TTL (5 s), or its record expires and clients move for nothing.
        self.client._manager.grpc_options += [("grpc.initial_reconnect_backoff_ms", 250),
                                              ("grpc.min_reconnect_backoff_ms", 250),
                                              ("grpc.max_reconnect_backoff_ms", 1000)]
        self._refresher: Any = None
        self._watch: _ResumingWatch | None = None

    @property
    def ready(self) -> bool:
        """Connected (and authenticated, with a user); calls may still fail."""
        return self._watch is not None and (not self.spec.user or self._refresher is not None)

    async def connect(self) -> "EtcdStore":
        """Open the channel (it connects lazily) and, with a user, authenticate.

        Safe to call again after a failure: what is done is not done twice.
        """
        if self._watch is None:
            await self.client.connect()
            # Ours in the client's place, so token refreshes reach it like every service.
            self._watch = self.client.watch = _ResumingWatch(self.client._channel)
        if self.spec.user and self._refresher is None:
            try:
                self._refresher = self.client.token_refresher(self.spec.user,
                                                              self.spec.password)
                await self._refresher.__aenter__()
            except (EtcdError, grpc.aio.AioRpcError, OSError) as exc:
                self._refresher = None
                raise _unavailable(exc) from None
        return self

    async def close(self) -> None:
        if self._refresher is not None:
            await self._refresher.__aexit__(None, None, None)
        await self.client.close()

    @property
    def kv(self) -> Any:
        return self.client.kv

    async def call(self, coro: Any, timeout: float = RPC_TIMEOUT) -> Any:
        """Await an etcd3aio call, turning its failures into StoreError/StoreUnavailable."""
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except (EtcdError, grpc.aio.AioRpcError, asyncio.TimeoutError, OSError) as exc:
            raise _unavailable(exc) from None

    async def load(self, prefix: str, revision: int = 0) -> Snapshot:
        """Every key under `prefix`, at one revision (the current one by default)."""
        resp = await self.call(self.kv.get(prefix, range_end=prefix_range_end(prefix),
                                           revision=revision))
        entries = {kv.key.decode(): Entry(kv.value, kv.mod_revision, kv.create_revision)
                   for kv in resp.kvs}
        return Snapshot(resp.header.revision, prefix, entries)

    async def follow(self, snap: Snapshot) -> AsyncIterator[Snapshot]:
        """Each new state of `snap.prefix` after `snap`, one per store revision.

        Survives disconnects (resuming where it stopped) and compaction (a full
        load, yielded as the next state). Runs until cancelled.
        """
        prefix = snap.prefix
        assert self._watch is not None, "connect() first"
        while True:
            stream = self._watch.watch_from(prefix.encode(), prefix_range_end(prefix),
                                            snap.revision + 1)
            try:
                async for resp in stream:
                    if resp.compact_revision:
                        log.warning("revision %d of %s was compacted; loading it whole",
                                    snap.revision + 1, prefix)
                        break
                    if not resp.events:
                        continue
                    entries = dict(snap.entries)
                    for event in resp.events:
                        key = event.kv.key.decode()
                        if event.type == 1:               # DELETE
                            entries.pop(key, None)
                        else:
                            entries[key] = Entry(event.kv.value, event.kv.mod_revision,
                                                 event.kv.create_revision)
                    snap = Snapshot(resp.events[-1].kv.mod_revision, prefix, entries)
                    yield snap
            finally:
                await stream.aclose()
            snap = await self.load_retrying(prefix)
            yield snap

    async def load_retrying(self, prefix: str) -> Snapshot:
        """load(), tried until the store answers."""
        delay = RETRY_MIN
        while True:
            try:
                return await self.load(prefix)
            except StoreError as exc:
                log.warning("cannot load %s yet (%s); retrying", prefix, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def txn(self, compare: Sequence[Any], success: Sequence[Any],
                  failure: Sequence[Any] = ()) -> Any:
        """One transaction; returns etcd's response (`succeeded`, `header.revision`)."""
        return await self.call(self.kv.txn(compare, success, failure))

    # Comparisons and operations for txn(), built with etcd3aio's helpers.

    def same_revision(self, key: str, mod_revision: int) -> Any:
        """Compare: `key` is unchanged since `mod_revision` (0: it does not exist)."""
        from etcd3aio._protobuf import Compare
        if mod_revision == 0:
            return self.kv.txn_compare_create_revision(key, 0)
        return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key.encode(),
                       mod_revision=mod_revision)

    def put(self, key: str, value: bytes | str, lease: int = 0) -> Any:
        return self.kv.txn_op_put(key, value, lease=lease)

    def delete(self, key: str) -> Any:
        return self.kv.txn_op_delete(key)
