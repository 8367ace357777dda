"""Compiled reads of payload bytes for many packets at once (the feature and cheap stages' hot loops).

NumPy's fancy indexing builds an offset array per byte read (for the leading 256 bytes of every flow's
first payloads, ~8 index arrays of tens of MB per chunk); these loops read the bytes in place.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vpnid.features.packets import PacketTable


@njit(cache=True, nogil=True)
def _heads(data: np.ndarray, extra: np.ndarray, off: np.ndarray, length: np.ndarray, width: int) -> np.ndarray:
    n, split = len(off), len(data)
    out = np.zeros((n, width), np.uint8)
    for i in range(n):
        a = off[i]
        m = min(width, length[i])
        for j in range(m):
            k = a + j
            out[i, j] = data[k] if k < split else extra[k - split]
    return out


@njit(cache=True, nogil=True)
def _count_bytes(data: np.ndarray, extra: np.ndarray, off: np.ndarray, take: np.ndarray, at: np.ndarray,
                 into: np.ndarray) -> None:
    split = len(data)
    for i in range(len(off)):
        a, o = off[i], at[i]
        for k in range(a, a + take[i]):
            into[o, data[k] if k < split else extra[k - split]] += 1


def payload_heads(t: PacketTable, rows: np.ndarray, width: int) -> np.ndarray:
    """The first `width` payload bytes of each of `rows`, zero beyond the payload: (len(rows), width) uint8."""
    return _heads(t.data, t.extra, t.payload_off[rows].astype(np.int64),
                  t.payload_len[rows].astype(np.int64), width)


def count_bytes(t: PacketTable, rows: np.ndarray, max_bytes: int, into: np.ndarray, at: np.ndarray) -> None:
    """Add to `into[at[i]]` (a row of 256 counters) the byte values of the first `max_bytes` payload bytes
    of `rows[i]`, for every i."""
    take = np.minimum(t.payload_len[rows].astype(np.int64), max_bytes)
    _count_bytes(t.data, t.extra, t.payload_off[rows].astype(np.int64), take, at.astype(np.int64), into)
