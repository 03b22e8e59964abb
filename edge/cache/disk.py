"""The disk tier: one file per cached object, shared by every worker process.

A file is a fixed header, the object's metadata as JSON, then the body. It is
written under `tmp/` and renamed into `objects/` only when complete, with the
body's CRC-32 in the header, so no reader ever finds half an object under its
final name; a file whose header, length or checksum does not add up is deleted
and treated as a miss, never served.

Workers share the directory. A byte-range lock per key (POSIX `lockf`, held
by a process, released by the kernel if it dies) says which worker is filling
a key; the others read its `.part` file as it grows instead of asking the
origin again (read-while-writer across processes, as ATS does within one).
Eviction is least recently used by file mtime (a hit refreshes it, at most
once a minute), run by one worker at a time under another lock.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import json
import logging
import os
import struct
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.cache.freshness import Policy

log = logging.getLogger("edge.cache.disk")

MAGIC = b"GSLBEDC1"
HEAD = struct.Struct("<8sIQII")     # magic, metadata length, body length, body CRC, meta CRC
TOUCH_EVERY = 60.0                  # seconds between mtime refreshes of a hot object
SWEEP_TARGET = 0.9                  # an eviction sweep frees space down to 90 % of the cap
READ_CHUNK = 256 * 1024
SWEEP_LOCK = 0                      # lock byte of the sweeper; keys lock bytes >= 1
UNKNOWN = 2**64 - 1                 # body length in a part file whose length is not known yet


def digest(key: str) -> str:
    """The file name of a key."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Meta:
    """Everything about a stored object but its body."""

    key: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    stored_at: float
    initial_age: float
    policy: Policy
    vary: tuple[str, ...] = ()      # set on a Vary stub: the primary key's varied headers

    def encode(self) -> bytes:
        raw = asdict(self)
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Meta":
        d = json.loads(raw)
        policy = {**d["policy"], "strip": tuple(d["policy"].get("strip", ()))}
        return cls(d["key"], int(d["status"]), d["reason"],
                   tuple((str(k), str(v)) for k, v in d["headers"]), float(d["stored_at"]),
                   float(d["initial_age"]), Policy(**policy), tuple(d.get("vary", ())))


@dataclass(frozen=True)
class DiskObject:
    """An object found on disk: its metadata and where its body lies in the file."""

    meta: Meta
    path: str
    offset: int          # of the body in the file
    size: int            # body length
    crc: int
    inode: tuple[int, int]   # (st_ino, st_mtime_ns) of the file the metadata came from


class CorruptObject(Exception):
    pass


def _parse_head(data: bytes, path: str) -> tuple[int, int, int, int]:
    if len(data) < HEAD.size:
        raise CorruptObject(f"{path}: short header")
    magic, meta_len, body_len, body_crc, meta_crc = HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorruptObject(f"{path}: not a cache file")
    return meta_len, body_len, body_crc, meta_crc


def read_object(path: str) -> DiskObject:
    """Header and metadata of a complete object file; CorruptObject when it does not add up."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        head = f.read(HEAD.size)
        meta_len, body_len, body_crc, meta_crc = _parse_head(head, path)
        if meta_len > 1 << 24:
            raise CorruptObject(f"{path}: metadata length {meta_len}")
        raw = f.read(meta_len)
    if len(raw) != meta_len or zlib.crc32(raw) != meta_crc:
        raise CorruptObject(f"{path}: metadata checksum")
    offset = HEAD.size + meta_len
    if st.st_size != offset + body_len:
        raise CorruptObject(f"{path}: {st.st_size} bytes, header says {offset + body_len}")
    try:
        meta = Meta.decode(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"{path}: metadata {exc}") from None
    return DiskObject(meta, path, offset, body_len, body_crc, (st.st_ino, st.st_mtime_ns))


def part_meta(f) -> tuple[Meta, int] | None:
    """(metadata, body length) of a part file being written, once its head is all there;
    leaves `f` at the start of the body."""
    f.seek(0)
    head = f.read(HEAD.size)
    if len(head) < HEAD.size:
        return None
    try:
        meta_len, body_len, _crc, meta_crc = _parse_head(head, f.name)
    except CorruptObject:
        return None
    raw = f.read(meta_len)
    if len(raw) != meta_len or zlib.crc32(raw) != meta_crc:
        return None
    try:
        return Meta.decode(raw), body_len
    except (ValueError, KeyError, TypeError):
        return None


def body_crc(path: str, offset: int, size: int) -> int:
    """CRC-32 of `size` bytes of a file from `offset` (run in a thread for big files)."""
    crc = 0
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left > 0:
            chunk = f.read(min(READ_CHUNK, left))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return crc if left == 0 else -1


@dataclass
class _Entry:
    key: str
    size: int            # file size
    touched: float       # last mtime refresh (wall clock)


class PartWriter:
    """An object being written under tmp/; `commit` makes it visible, `abort` drops it."""

    def __init__(self, store: "DiskStore", name: str, meta: Meta, length: int | None):
        self.store, self.name, self.meta = store, name, meta
        self.length = UNKNOWN if length is None else length
        self.path = store.part_path(name)
        raw = meta.encode()
        self._meta_len = len(raw)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # Header and metadata in one write, so a reader sees either none or all of them.
        os.write(self._fd, HEAD.pack(MAGIC, len(raw), self.length, 0, zlib.crc32(raw)) + raw)
        self._crc = 0
        self.written = 0
        self.body_offset = HEAD.size + len(raw)

    @property
    def ok(self) -> bool:
        """False once a write failed (the part file is gone)."""
        return self._fd >= 0

    def append(self, chunk: bytes) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, chunk)
        except OSError as exc:       # disk full, I/O error: the clients are served anyway
            log.warning("cache write of %s failed: %s", self.path, exc)
            self.abort()
            return
        self._crc = zlib.crc32(chunk, self._crc)
        self.written += len(chunk)

    def copy_from(self, obj: DiskObject) -> None:
        """The body of another object file, copied in the kernel (same bytes, same CRC)."""
        with open(obj.path, "rb") as src:
            left, offset = obj.size, obj.offset
            while left > 0:
                n = os.copy_file_range(src.fileno(), self._fd, left, offset)
                if n <= 0:
                    break
                left -= n
                offset += n
                self.written += n
        self._crc = obj.crc

    def commit(self, size: int | None = None) -> bool:
        """Rename into place when every promised byte is there (`size`: the length of a
        body whose length was not known up front); False (and gone) otherwise."""
        if self.length == UNKNOWN and size is not None:
            self.length = size
        if self._fd < 0 or self.written != self.length:
            self.abort()
            return False
        final = self.store.object_path(self.name)
        try:
            os.pwrite(self._fd, HEAD.pack(MAGIC, self._meta_len, self.length, self._crc,
                                          zlib.crc32(self.meta.encode())), 0)
            os.close(self._fd)
            self._fd = -1
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(self.path, final)
        except OSError as exc:
            log.warning("cache commit of %s failed: %s", final, exc)
            self.abort()
            return False
        self.store.indexed(self.name, self.meta.key, HEAD.size + self._meta_len + self.length)
        return True

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class DiskStore:
    """The shared object directory, this process's index of it, and the key locks."""

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self._lock_fd = os.open(self.root / "locks", os.O_RDWR | os.O_CREAT, 0o644)
        self._index: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._held: set[str] = set()
        self.written_since_sweep = 0

    # --- names and locks ------------------------------------------------------------------

    def object_path(self, name: str) -> str:
        return f"{self.root}/objects/{name[:2]}/{name}"

    def part_path(self, name: str) -> str:
        return f"{self.root}/tmp/{name}.part"

    @staticmethod
    def _lock_byte(name: str) -> int:
        return 1 + int(name[:15], 16)

    def try_lock(self, name: str) -> bool:
        """Take the fill lock of a key; False when another process holds it."""
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self._lock_byte(name))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        self._held.add(name)
        return True

    def unlock(self, name: str) -> None:
        if name in self._held:
            self._held.discard(name)
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, self._lock_byte(name))

    def locked_elsewhere(self, name: str) -> bool:
        """Whether another process is filling this key right now."""
        if name in self._held:
            return False
        if not self.try_lock(name):
            return True
        self.unlock(name)
        return False

    # --- reading --------------------------------------------------------------------------

    def lookup(self, key: str) -> DiskObject | None:
        """The complete object stored for `key`, or None; a bad file is deleted."""
        name = digest(key)
        path = self.object_path(name)
        try:
            obj = read_object(path)
        except FileNotFoundError:
            self._index.pop(name, None)
            return None
        except CorruptObject as exc:
            self._discard(name, path, str(exc))
            return None
        except OSError:
            return None          # out of file descriptors, say: a miss, not a bad file
        if obj.meta.key != key:
            return None          # a SHA-256 collision would need to be astronomically lucky
        self.indexed(name, key, obj.offset + obj.size)
        return obj

    def read_body(self, obj: DiskObject) -> bytes | None:
        """The whole body, checked against its CRC; None (and the file gone) if it is bad."""
        try:
            with open(obj.path, "rb") as f:
                if (os.fstat(f.fileno()).st_ino, os.fstat(f.fileno()).st_mtime_ns) != obj.inode:
                    return None           # replaced since we read its metadata
                f.seek(obj.offset)
                body = f.read(obj.size)
        except OSError:
            return None
        if len(body) != obj.size or zlib.crc32(body) != obj.crc:
            self._discard(digest(obj.meta.key), obj.path, "body checksum")
            return None
        return body

    def verify(self, obj: DiskObject) -> bool:
        """Check a body's CRC without holding it in memory (for objects sent from their file)."""
        if body_crc(obj.path, obj.offset, obj.size) == obj.crc:
            return True
        self._discard(digest(obj.meta.key), obj.path, "body checksum")
        return False

    def touch(self, key: str) -> None:
        """Note a hit: the file's mtime is its place in the LRU order across workers."""
        name = digest(key)
        entry = self._index.get(name)
        now = time.time()
        if entry is not None:
            self._index.move_to_end(name)
            if now - entry.touched < TOUCH_EVERY:
                return
            entry.touched = now
        try:
            os.utime(self.object_path(name))
        except OSError:
            pass

    def _discard(self, name: str, path: str, why: str) -> None:
        log.warning("cache file discarded: %s", why)
        self._index.pop(name, None)
        try:
            os.unlink(path)
        except OSError:
            pass

    # --- writing --------------------------------------------------------------------------

    def writer(self, meta: Meta, length: int | None) -> PartWriter | None:
        """A part file for `meta.key` (the caller holds the key's lock); None if unwritable."""
        try:
            return PartWriter(self, digest(meta.key), meta, length)
        except OSError as exc:
            log.warning("cache file for a new object not created: %s", exc)
            return None

    def put_bytes(self, meta: Meta, body: bytes) -> bool:
        """Store a whole object in one go (a Vary stub, or a revalidated copy)."""
        return self._put(meta, len(body), lambda part: part.append(body))

    def rewrite(self, obj: DiskObject, meta: Meta) -> bool:
        """The same body under new metadata (after a 304), copied without reading it here."""
        return self._put(meta, obj.size, lambda part: part.copy_from(obj))

    def _put(self, meta: Meta, length: int, fill_body) -> bool:
        name = digest(meta.key)
        mine = name not in self._held
        if mine and not self.try_lock(name):
            return False           # another worker is writing it; theirs wins
        try:
            part = self.writer(meta, length)
            if part is None:
                return False
            try:
                fill_body(part)
            except OSError:
                part.abort()
                return False
            return part.commit()
        finally:
            if mine:
                self.unlock(name)

    def indexed(self, name: str, key: str, size: int) -> None:
        old = self._index.pop(name, None)
        if old is None or old.size != size:
            self.written_since_sweep += size
        self._index[name] = _Entry(key, size, time.time())

    def delete(self, key: str) -> None:
        name = digest(key)
        self._index.pop(name, None)
        try:
            os.unlink(self.object_path(name))
        except FileNotFoundError:
            pass

    def purge(self, matches) -> int:
        """Delete every indexed object whose key matches; returns how many."""
        gone = [(name, e.key) for name, e in self._index.items() if matches(e.key)]
        for _, key in gone:
            self.delete(key)
        return len(gone)

    def keys(self) -> list[str]:
        return [e.key for e in self._index.values()]

    def __len__(self) -> int:
        return len(self._index)

    # --- startup and eviction -------------------------------------------------------------

    def scan(self) -> None:
        """Index what is on disk (at start): complete objects only; leftovers are removed."""
        for part in (self.root / "tmp").iterdir():
            name = part.name.removesuffix(".part")
            if self.try_lock(name):          # nobody is writing it: a dead worker's leftover
                try:
                    part.unlink()
                except FileNotFoundError:
                    pass
                self.unlock(name)
        found = []
        for sub in (self.root / "objects").iterdir():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                try:
                    obj = read_object(entry.path)
                    found.append((entry.stat().st_mtime, entry.name, obj.meta.key,
                                  obj.offset + obj.size))
                except FileNotFoundError:
                    continue
                except CorruptObject as exc:
                    self._discard(entry.name, entry.path, str(exc))
                except OSError as exc:
                    log.warning("cache file %s unreadable at start: %s", entry.path, exc)
        for mtime, name, key, size in sorted(found):
            self._index[name] = _Entry(key, size, mtime)
        self.written_since_sweep = 0

    def sweep(self) -> list[str]:
        """Evict least recently used files until the directory is under its cap.

        One worker sweeps at a time; the others skip. Runs in a thread, so it
        leaves the index alone: it returns the names it deleted for `forget`.
        """
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SWEEP_LOCK)
        except OSError:
            return []
        try:
            files = []
            total = 0
            for sub in os.scandir(self.root / "objects"):
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub.path):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    files.append((st.st_mtime, st.st_size, entry.name, entry.path))
                    total += st.st_size
            if total <= self.max_bytes:
                return []
            freed, names = 0, []
            goal = total - int(self.max_bytes * SWEEP_TARGET)
            for _mtime, size, name, path in sorted(files):
                if freed >= goal:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                names.append(name)
                freed += size
            log.info("disk cache over %d bytes: evicted %d files, %d bytes", self.max_bytes,
                     len(names), freed)
            return names
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, SWEEP_LOCK)

    def forget(self, names: list[str]) -> None:
        for name in names:
            self._index.pop(name, None)

    def wants_sweep(self) -> bool:
        return self.written_since_sweep > self.max_bytes * (1 - SWEEP_TARGET) / 2

    def close(self) -> None:
        os.close(self._lock_fd)

