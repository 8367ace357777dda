"""Frames found in a read buffer become pieces (numpy columns over the buffer); pieces are regrouped into
chunks of a fixed number of frames, copying bytes only where a chunk spans two buffers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np
from numba import njit

from vpnid.features.packets import LINKTYPE_RAW, RAW_IP_DLTS, RawChunk

NS_PER_S = 1_000_000_000


@njit(inline="always")
def u32(buf: np.ndarray, pos: int, big_endian: bool) -> int:  # pragma: no cover - compiled
    """The 32-bit unsigned field at `pos` of a capture's bytes, in the file's byte order (pcap record
    headers, pcapng blocks): for the compiled walks, which read one field at a time."""
    v = 0
    for i in range(4):
        v |= np.int64(buf[pos + i]) << (8 * (3 - i) if big_endian else 8 * i)
    return v


def normalise_linktype(linktype: int) -> int:
    """DLT_RAW is 12 or 14 depending on the platform that wrote the file; one value downstream."""
    return LINKTYPE_RAW if linktype in RAW_IP_DLTS else linktype


def new_piece(u8: np.ndarray, start: int, end: int, offset: np.ndarray, caplen: Iterable[int] | np.ndarray,
           wirelen: Iterable[int] | np.ndarray, ts_ns: np.ndarray, linktype: np.ndarray,
           frame: np.ndarray) -> RawChunk:
    """A RawChunk over u8[start:end]; captured lengths are cut to the bytes present (a cut last record)."""
    data = u8[start:end]
    offset = offset - start
    caplen = np.minimum(np.asarray(caplen, np.int64), len(data) - offset).astype(np.int32)
    wirelen = np.asarray(wirelen, np.int64).astype(np.int32)
    return RawChunk(data, offset, caplen, wirelen, ts_ns, linktype, frame)


def rechunk(pieces: Iterable[RawChunk], size: int, eager: bool = False) -> Iterator[RawChunk]:
    """Regroup pieces (one per block walked, of any length) into chunks of `size` frames, the last shorter
    (`eager`: every piece's frames are yielded at once, in chunks of at most `size`)."""
    pending: list[RawChunk] = []
    count = 0
    for piece in pieces:
        while count + len(piece) >= size:
            take = size - count
            pending.append(_slice(piece, 0, take))
            yield _concat(pending)
            piece = _slice(piece, take, len(piece))
            pending, count = [], 0
        if len(piece):
            pending.append(piece)
            count += len(piece)
        if eager and pending:
            yield _concat(pending)
            pending, count = [], 0
    if pending:
        yield _concat(pending)


_COLUMNS = tuple(f.name for f in dataclasses.fields(RawChunk) if f.name not in ("data", "offset"))


def _slice(chunk: RawChunk, i: int, j: int) -> RawChunk:
    """Frames i..j-1 of a chunk, as views; `data` narrowed to their bytes (frames lie in buffer order)."""
    if i >= j:
        return RawChunk.empty()
    first = int(chunk.offset[i])
    last_end = int(chunk.offset[j - 1]) + int(chunk.caplen[j - 1])
    columns = {name: getattr(chunk, name)[i:j] for name in _COLUMNS}
    return RawChunk(data=chunk.data[first:last_end], offset=chunk.offset[i:j] - first, **columns)


def _concat(parts: list[RawChunk]) -> RawChunk:
    if len(parts) == 1:
        return parts[0]
    shifts = np.cumsum([0] + [len(p.data) for p in parts[:-1]])
    columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _COLUMNS}
    return RawChunk(data=np.concatenate([p.data for p in parts]),
                    offset=np.concatenate([p.offset + s for p, s in zip(parts, shifts)]), **columns)
