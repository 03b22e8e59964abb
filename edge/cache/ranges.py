"""Byte ranges (RFC 9110 14): parse a Range header against a known length, slice bodies."""
from __future__ import annotations

from typing import Iterable, Iterator

MAX_RANGES = 16


def parse(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """[(first, last)] inclusive; [] = unsatisfiable (416); None = ignore the header (serve 200)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    ranges = []
    for part in spec.split(","):
        first, dash, last = part.strip().partition("-")
        if not dash:
            return None
        try:
            if first == "":                                  # suffix: the last N bytes
                n = int(last)
                if n <= 0:
                    continue
                ranges.append((max(0, size - n), size - 1))
                continue
            start = int(first)
            end = int(last) if last else None
        except ValueError:
            return None                                      # bad syntax: ignore the header
        if start < 0 or (end is not None and end < start):
            return None
        if start < size:                                     # else unsatisfiable: skipped
            ranges.append((start, size - 1 if end is None else min(end, size - 1)))
    if len(ranges) > MAX_RANGES:
        return None                                          # too many: the whole body instead
    return ranges if ranges or size == 0 else []


def if_range_holds(if_range: str | None, etag: str | None, last_modified: str | None) -> bool:
    """RFC 9110 13.1.5: the ranges apply only while the validator still matches (strongly)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', 'W/"')):
        return bool(etag) and not value.startswith("W/") and value == etag
    return bool(last_modified) and value == last_modified


def slice_chunks(chunks: Iterable[bytes], first: int, last: int) -> Iterator[bytes]:
    """The bytes first..last (inclusive) of a body held as chunks."""
    offset = 0
    for chunk in chunks:
        end = offset + len(chunk)
        if end > first and offset <= last:
            yield chunk[max(0, first - offset):min(len(chunk), last - offset + 1)]
        offset = end
        if offset > last:
            return
