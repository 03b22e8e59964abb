"""Purge: by URL, by URL prefix, or everything of a customer, in every worker.

Each purge is appended as one JSON line to a bans file that all worker
processes of an edge share; every worker follows the file and drops matching
objects from its own store. `edge purge` writes the same line, so a purge
reaches every worker whichever one (or none) took the request.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edge.model import EdgeConfig
from edge.route import BadPath, canonical


@dataclass(frozen=True)
class Ban:
    directory: str
    path: str = ""          # "" with prefix=True: the whole customer
    prefix: bool = False

    def matches(self, key: str) -> bool:
        """Whether a cache key (scheme://directory/path[\\0variant]) falls under this ban."""
        _, _, rest = key.partition("://")
        directory, slash, path = rest.partition("/")
        if directory != self.directory:
            return False
        path = slash + path.split("\x00", 1)[0]
        return path.startswith(self.path) if self.prefix else path == self.path


def ban_for(config: EdgeConfig, url: str | None = None, prefix: str | None = None,
            customer: str | None = None) -> Ban:
    """Turn what an operator gives into a Ban; ValueError when it names nothing we serve."""
    if customer is not None:
        if customer not in config.by_directory:
            raise ValueError(f"no customer with directory {customer!r}")
        return Ban(customer, "", True)
    target = url if url is not None else prefix
    if not target:
        raise ValueError("give a url, a prefix or a customer")
    parts = urlsplit(target)
    host = (parts.hostname or "").lower()
    path = parts.path or "/"
    if parts.query and url is not None:
        path += "?" + parts.query
    found = config.by_cname.get(host)
    if found is None:
        head = f"/{config.account}/"
        if path.startswith(head):
            directory, _, rest = path[len(head):].partition("/")
            found = config.by_directory.get(directory)
            path = "/" + rest
    if found is None:
        raise ValueError(f"{target!r} is not a URL of any customer")
    try:
        path = canonical(found, path)          # the key a request for it is stored under
    except BadPath:
        raise ValueError(f"{target!r} climbs out of the customer's root") from None
    return Ban(found.directory, path, url is None)


@dataclass(frozen=True)
class Invalidation:
    """RFC 9111 4.4 for the other workers: `url` (cached.url_id) is obsolete since `at`."""

    url: str
    keys: tuple[str, ...]
    at: float


def append(bans_file: Path, ban: "Ban | Invalidation") -> None:
    """Record a ban for every worker (one small append: atomic on a local file)."""
    bans_file.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(ban, Invalidation):
        entry = {"at": ban.at, "invalidate": ban.url, "keys": list(ban.keys)}
    else:
        entry = {"at": time.time(), "directory": ban.directory, "path": ban.path,
                 "prefix": ban.prefix}
    line = json.dumps(entry) + "\n"
    fd = os.open(bans_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class BanFollower:
    """Reads bans appended since the last look (a worker calls `new()` periodically)."""

    def __init__(self, bans_file: Path, from_start: bool = False):
        self.path = bans_file
        self.offset = 0 if from_start or not bans_file.exists() else bans_file.stat().st_size

    def new(self) -> "list[Ban | Invalidation]":
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0            # the file was replaced: read it again
        if size == self.offset:
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        complete = data.rfind(b"\n") + 1          # a half-written last line waits
        self.offset += complete
        bans = []
        for line in data[:complete].splitlines():
            try:
                entry = json.loads(line)
                if "invalidate" in entry:
                    bans.append(Invalidation(entry["invalidate"], tuple(entry["keys"]),
                                             float(entry["at"])))
                else:
                    bans.append(Ban(entry["directory"], entry["path"], entry["prefix"]))
            except (ValueError, KeyError, TypeError):
                continue
        return bans
