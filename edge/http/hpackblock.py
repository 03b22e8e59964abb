"""HPACK header blocks encoded once: a cache hit's response head without the encoder.

Encoding a response head is a quarter of the CPU of an HTTP/2 hit (hpack's
encoder searches its tables and logs for every field). A hit's fields are the
same every time but for `Age` and the `ttl` of `Cache-Status`, so the block is
encoded when the hit is rendered (front.Hits) and only those two fields per
answer.

Blocks made here touch no dynamic table: every field is an indexed static entry
or a literal *without indexing* (RFC 7541 6.2.2) naming a static entry where
one exists. The connection's encoder state is then the same whether a block
came from here or from hpack, so the two mix freely on one connection.
`Encoder` is hpack's encoder that passes such a block through (h2.py installs
it); h2 hands the encoder the header list untouched since the connection does
not normalise or validate outbound headers.
"""
from __future__ import annotations

import hpack
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.struct import HeaderTuple
from hpack.table import HeaderTable

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_FULL: dict[tuple[bytes, bytes], int] = {}
_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _FULL.setdefault((_name, _value), _index)
    _NAMES.setdefault(_name, _index)


class Encoded(HeaderTuple):
    """A whole header block encoded already, carried through h2 as one pseudo field
    (named so h2 takes it for neither an informational response nor trailers)."""

    __slots__ = ()


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes, huffman: bool) -> bytes:
    if huffman:
        packed = _HUFFMAN.encode(data)
        if len(packed) < len(data):
            return _integer(len(packed), 7, 0x80) + packed
    return _integer(len(data), 7, 0) + data


def field(name: bytes, value: bytes, huffman: bool = False) -> bytes:
    """One field, stateless: a static entry's index, else a literal without indexing."""
    index = _FULL.get((name, value))
    if index is not None:
        return _integer(index, 7, 0x80)
    index = _NAMES.get(name)
    if index is not None:
        return _integer(index, 4, 0) + _string(value, huffman)
    return b"\x00" + _string(name, huffman) + _string(value, huffman)


def block(headers: "list[tuple[bytes, bytes]]") -> bytes:
    """The header block of `headers` (lower-case names, pseudo-fields first)."""
    return b"".join(field(name, value, True) for name, value in headers)


def encoded(data: bytes) -> list[HeaderTuple]:
    """What to give h2's send_headers for a block made here."""
    return [Encoded(b":encoded", data)]


class Encoder(hpack.Encoder):
    """hpack's encoder, but a block made here goes out as it is."""

    def encode(self, headers, huffman: bool = True) -> bytes:    # type: ignore[override]
        if headers and type(headers[0]) is Encoded:
            data = headers[0][1]
            if self.header_table.resized:
                # A size update the peer asked for must open the next block.
                return super().encode([], huffman) + data
            return data
        return super().encode(headers, huffman)
