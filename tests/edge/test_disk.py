"""The disk tier: restart persistence, corruption checks, eviction, sendfile, worker sharing."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from edge.cache.disk import DiskStore, Meta, digest
from edge.cache.freshness import Policy
from tests.conftest import free_port, stop
from tests.edge.test_cache import CountingOrigin, cfg, fetch
from tests.edge.test_proxy import Edge

ROOT = Path(__file__).resolve().parents[2]
BIG = bytes(range(256)) * 12 * 1024          # 3 MiB, more than the memory tier below holds


def disk_cfg(origin: CountingOrigin, root: Path, **top) -> dict:
    return {**cfg(origin), "cache_disk": str(root), **top}


def object_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


def edge_serve(tmp_path: Path, config: dict, workers: int = 1,
               stderr: int = subprocess.DEVNULL) -> tuple[subprocess.Popen, int]:
    """`edge serve` (on its own event loop, uvloop) with `config`, on a free port."""
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "-c", str(path),
                             "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    return proc, port


async def test_objects_survive_a_restart(tmp_path):
    async with CountingOrigin() as origin:
        origin.routes["/a"] = {"headers": {"Cache-Control": "max-age=60", "ETag": '"v1"',
                                           "X-Origin": "yes"}}
        async with Edge(disk_cfg(origin, tmp_path)) as edge:
            status, body, headers = await fetch(edge, "/a")
            assert (status, headers["X-Cache"]) == (200, "MISS")
        assert len(object_files(tmp_path)) == 1 and not list((tmp_path / "tmp").iterdir())
        await asyncio.sleep(1.1)
        async with Edge(disk_cfg(origin, tmp_path)) as edge:      # a new process's view
            status, again, headers = await fetch(edge, "/a")
            assert (status, again, headers["X-Cache"]) == (200, body, "HIT")
            assert headers["X-Origin"] == "yes" and headers["ETag"] == '"v1"'
            assert int(headers["Age"]) >= 1                      # age kept across the restart
            status, _, _ = await fetch(edge, "/a", **{"If-None-Match": '"v1"'})
            assert status == 304
        assert origin.hits["/a"] == 1


async def test_big_objects_stay_on_disk_and_are_sent_whole_and_in_ranges(tmp_path):
    async with CountingOrigin() as origin:
        origin.routes["/big"] = {"body": BIG, "headers": {"Cache-Control": "max-age=60",
                                                          "Content-Type": "video/mp4"}}
        config = disk_cfg(origin, tmp_path, cache_memory="1M")
        async with Edge(config) as edge:
            _, body, _ = await fetch(edge, "/big")
        assert body == BIG
        async with Edge(config) as edge:
            status, body, headers = await fetch(edge, "/big")
            assert (status, headers["X-Cache"], len(body)) == (200, "HIT", len(BIG))
            assert body == BIG and edge.state.cache.memory.bytes == 0    # never read into RAM
            status, part, headers = await fetch(edge, "/big", Range="bytes=1000000-1000099")
            assert (status, part) == (206, BIG[1000000:1000100])
            assert headers["Content-Range"] == f"bytes 1000000-1000099/{len(BIG)}"
            status, multi, headers = await fetch(edge, "/big", Range="bytes=0-9,-10")
            assert status == 206 and BIG[:10] in multi and BIG[-10:] in multi
        assert origin.hits["/big"] == 1


async def test_a_big_fill_is_read_back_from_its_file_not_held_in_memory(tmp_path):
    async with CountingOrigin() as origin:
        origin.routes["/big"] = {"body": BIG, "slow": True, "split": 2 * 1024 * 1024,
                                 "headers": {"Cache-Control": "max-age=60"}}
        async with Edge(disk_cfg(origin, tmp_path, cache_memory="1M")) as edge:
            whole = asyncio.ensure_future(fetch(edge, "/big"))
            part = asyncio.ensure_future(fetch(edge, "/big", Range="bytes=2500000-2500009"))
            early = await fetch(edge, "/big", Range="bytes=100-109")      # already arrived
            assert (early[0], early[1]) == (206, BIG[100:110])
            fill = edge.state.cache.fills["http://t/big"]
            for _ in range(100):                       # the origin's first 2 MiB
                if fill.received >= 2 * 1024 * 1024:
                    break
                await asyncio.sleep(0.05)
            assert fill.spilled and fill.chunks == [] and fill.received >= 2 * 1024 * 1024
            origin.release.set()
            status, body, headers = await whole
            assert (status, len(body), body == BIG, headers["X-Cache"]) == (200, len(BIG),
                                                                             True, "MISS")
            assert (await part)[:2] == (206, BIG[2500000:2500010])
            status, body, headers = await fetch(edge, "/big")
            assert (status, body == BIG, headers["X-Cache"]) == (200, True, "HIT")
            assert origin.hits["/big"] == 1 and edge.state.cache.memory.bytes == 0


async def test_corrupt_or_truncated_files_are_never_served(tmp_path):
    async with CountingOrigin() as origin:
        for path in ("/flip", "/short", "/bigflip"):
            origin.routes[path] = {"headers": {"Cache-Control": "max-age=60"}}
        origin.routes["/bigflip"]["body"] = BIG
        config = disk_cfg(origin, tmp_path, cache_memory="1M")
        async with Edge(config) as edge:
            for path in ("/flip", "/short", "/bigflip"):
                await fetch(edge, path)
        files = {p: tmp_path / "objects" / digest(f"http://t{p}")[:2] / digest(f"http://t{p}")
                 for p in ("/flip", "/short", "/bigflip")}
        for path in ("/flip", "/bigflip"):              # one bit of the body's last byte
            data = bytearray(files[path].read_bytes())
            data[-1] ^= 1
            files[path].write_bytes(bytes(data))
        with open(files["/short"], "r+b") as f:          # a crash mid-copy, say
            f.truncate(files["/short"].stat().st_size - 3)
        async with Edge(config) as edge:
            for path in ("/flip", "/short", "/bigflip"):
                status, body, headers = await fetch(edge, path)
                assert headers["X-Cache"] == "MISS", path
                if path == "/bigflip":
                    assert body == BIG
                else:
                    assert body == f"body of {path} #2".encode()
        assert all(origin.hits[p] == 2 for p in files)


async def test_leftover_part_files_are_cleared_and_an_origin_cut_stores_nothing(tmp_path):
    (tmp_path / "tmp").mkdir(parents=True)
    (tmp_path / "tmp" / f"{digest('http://t/x')}.part").write_bytes(b"half an object")
    async with CountingOrigin() as origin:
        origin.routes["/cut"] = {"slow": True, "cut": True, "body": "x" * 1000,
                                 "headers": {"Cache-Control": "max-age=60"}}
        async with Edge(disk_cfg(origin, tmp_path)) as edge:
            assert not list((tmp_path / "tmp").iterdir())          # the dead writer's part
            task = asyncio.ensure_future(fetch(edge, "/cut"))
            await asyncio.sleep(0.3)
            assert len(list((tmp_path / "tmp").iterdir())) == 1    # being written
            origin.release.set()
            try:
                await task
                raise AssertionError("a cut origin body must abort the client")
            except aiohttp.ClientPayloadError:
                pass
            await asyncio.sleep(0.1)
        assert not object_files(tmp_path) and not list((tmp_path / "tmp").iterdir())


async def test_revalidation_and_purge_reach_the_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "tok")
    async with CountingOrigin() as origin:
        origin.routes["/r"] = {"headers": {"Cache-Control": "max-age=1", "ETag": '"e"'}}
        async with Edge(disk_cfg(origin, tmp_path)) as edge:
            await fetch(edge, "/r")
            await asyncio.sleep(2.1)
            _, _, headers = await fetch(edge, "/r")
            assert headers["X-Cache"] == "REVALIDATED" and len(origin.conditional) == 1
        async with Edge(disk_cfg(origin, tmp_path)) as edge:
            # The 304 gave it max-age=60 (CountingOrigin's 304); the file says so too.
            _, _, headers = await fetch(edge, "/r")
            assert headers["X-Cache"] == "HIT" and origin.hits["/r"] == 2
            async with edge.client.post(edge.base + "/.edge/purge", json={"url": "http://www.test.com/r"},
                                        headers={"Authorization": "Bearer tok",
                                                 "Host": "admin"}) as r:
                assert r.status == 200
        assert not object_files(tmp_path)
        async with Edge(disk_cfg(origin, tmp_path)) as edge:
            _, _, headers = await fetch(edge, "/r")
            assert headers["X-Cache"] == "MISS" and origin.hits["/r"] == 3


def test_eviction_keeps_the_recently_used_under_the_cap(tmp_path):
    store = DiskStore(tmp_path, 10 * 1024)
    policy = Policy(True, 60.0, "test")
    for i in range(20):
        assert store.put_bytes(Meta(f"k{i}", 200, "OK", (), time.time(), 0.0, policy),
                               b"x" * 1000)
        os.utime(store.object_path(digest(f"k{i}")), (1000 + i, 1000 + i))
    store = DiskStore(tmp_path, 10 * 1024)  # a restart: the index comes from the files
    store.scan()
    assert len(store) == 20
    store.touch("k0")                      # used just now: the newest of all
    store.forget(store.sweep())
    on_disk = sum(p.stat().st_size for p in object_files(tmp_path))
    assert on_disk <= 10 * 1024 * 0.9
    assert store.lookup("k0") is not None and store.lookup("k19") is not None
    assert store.lookup("k1") is None and store.lookup("k2") is None
    assert len(store) == len(object_files(tmp_path))


async def test_workers_share_the_disk_and_one_fill(tmp_path):
    """Two edge processes on one cache directory: a miss in flight in one is streamed
    to the other's clients from its part file, and the origin is asked once."""
    async with CountingOrigin() as origin:
        origin.routes["/shared"] = {"slow": True, "body": "s" * 5000,
                                    "headers": {"Cache-Control": "max-age=60"}}
        config = tmp_path / "edge.yaml"
        config.write_text(yaml.safe_dump(disk_cfg(origin, tmp_path / "cache")))
        ports = [free_port(), free_port()]
        procs = [subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "-c", str(config),
                                   "--listen", f"127.0.0.1:{port}"], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for port in ports]
        try:
            async with aiohttp.ClientSession() as client:
                for port in ports:
                    await _wait_up(client, port)

                async def first_bytes(port: int) -> bytes:
                    async with client.get(f"http://127.0.0.1:{port}/shared",
                                          headers={"Host": "www.test.com"}) as r:
                        head = await r.content.readexactly(10)
                        assert r.headers["X-Cache"] in ("MISS", "HIT")
                        return head + await r.read()

                tasks = [asyncio.ensure_future(first_bytes(ports[0]))]
                await asyncio.sleep(0.3)
                tasks += [asyncio.ensure_future(first_bytes(ports[i % 2])) for i in range(10)]
                await asyncio.sleep(0.5)
                assert not any(t.done() for t in tasks)           # all waiting on the one fill
                origin.release.set()
                bodies = await asyncio.gather(*tasks)
                assert bodies == [b"s" * 5000] * 11
                assert origin.hits["/shared"] == 1
                async with client.get(f"http://127.0.0.1:{ports[1]}/shared",
                                      headers={"Host": "www.test.com"}) as r:
                    assert r.headers["X-Cache"] == "HIT" and origin.hits["/shared"] == 1
        finally:
            for proc in procs:
                stop(proc)


async def test_a_burst_of_misses_across_workers_asks_the_origin_once(tmp_path):
    """A fast origin: the first worker's fill may end before the other worker even takes
    the key's lock; that worker must find the stored copy, not fetch again."""
    async with CountingOrigin() as origin:
        origin.routes["/burst"] = {"headers": {"Cache-Control": "max-age=60"}}
        proc, port = edge_serve(tmp_path, disk_cfg(origin, tmp_path / "cache"), workers=2)
        try:
            connector = aiohttp.TCPConnector(limit=0, force_close=True)   # spread over both
            async with aiohttp.ClientSession(connector=connector) as client:
                await _wait_up(client, port)
                for round_ in range(5):
                    path = f"/burst?round={round_}"

                    async def one() -> bytes:
                        async with client.get(f"http://127.0.0.1:{port}{path}",
                                              headers={"Host": "www.test.com"}) as r:
                            return await r.read()

                    bodies = await asyncio.gather(*(one() for _ in range(100)))
                    assert len(set(bodies)) == 1
                    assert origin.hits["/burst"] == round_ + 1, f"round {round_}"
        finally:
            stop(proc)


async def _wait_up(client: aiohttp.ClientSession, port: int) -> None:
    for _ in range(100):
        try:
            async with client.get(f"http://127.0.0.1:{port}/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"edge on {port} did not start")


async def test_quick_mode_workers_are_one_cache_and_one_fill(tmp_path):
    """`edge serve --origin` with several workers and no config: still one cache (a disk
    tier in a temp dir), one origin request for a burst of misses, and an invalidation
    by POST reaches every worker."""
    async with CountingOrigin() as origin:
        origin.routes["/q"] = {"headers": {"Cache-Control": "max-age=60"}}
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--origin",
                                 f"http://127.0.0.81:{origin.port}", "--host", "www.test.com",
                                 "--listen", f"127.0.0.1:{port}", "--workers", "2"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            connector = aiohttp.TCPConnector(limit=0, force_close=True)   # spread over both
            async with aiohttp.ClientSession(connector=connector) as client:
                await _wait_up(client, port)

                async def one(path: str = "/q") -> tuple[bytes, str]:
                    async with client.get(f"http://127.0.0.1:{port}{path}") as r:
                        return await r.read(), r.headers["X-Cache"]

                results = await asyncio.gather(*(one() for _ in range(50)))
                assert origin.hits["/q"] == 1
                assert {body for body, _ in results} == {b"body of /q #1"}
                later = await asyncio.gather(*(one() for _ in range(20)))
                assert {state for _, state in later} == {"HIT"}           # in both workers
                origin.routes["/q"]["post"] = (200, {})
                async with client.post(f"http://127.0.0.1:{port}/q", data=b"x") as r:
                    assert r.status == 200
                await asyncio.sleep(0.6)            # workers follow the bans file every 0.2 s
                after = await asyncio.gather(*(one() for _ in range(20)))
                assert b"body of /q #1" not in {body for body, _ in after}
        finally:
            stop(proc)
            err = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in err, err


async def test_edge_serve_sends_disk_objects_on_its_own_event_loop(tmp_path):
    """`edge serve` runs on uvloop, which has no loop.sendfile: bodies on the disk tier go
    out through edge/http/filesend.py, whole and in ranges, pipelined too."""
    async with CountingOrigin() as origin:
        origin.routes["/big"] = {"body": BIG, "headers": {"Cache-Control": "max-age=60"}}
        proc, port = edge_serve(tmp_path, disk_cfg(origin, tmp_path / "cache", cache_memory="1M"))
        try:
            async with aiohttp.ClientSession() as client:
                await _wait_up(client, port)
                url = f"http://127.0.0.1:{port}/big"
                for want in ("MISS", "HIT", "HIT"):
                    async with client.get(url, headers={"Host": "www.test.com"}) as r:
                        assert r.headers["X-Cache"] == want and await r.read() == BIG
                async with client.get(url, headers={"Host": "www.test.com",
                                                    "Range": "bytes=2000000-2000099"}) as r:
                    assert r.status == 206 and await r.read() == BIG[2000000:2000100]
            # two hits pipelined on one connection: the second starts after the first ends
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /big HTTP/1.1\r\nHost: www.test.com\r\n\r\n" * 2)
            for _ in range(2):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert b" 200 " in head.split(b"\r\n")[0]
                assert await asyncio.wait_for(reader.readexactly(len(BIG)), 10) == BIG
            writer.close()
            assert origin.hits["/big"] == 1
        finally:
            stop(proc)
