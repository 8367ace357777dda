"""Bounds-checked byte access over a chunk and the column sets each decoding stage hands to the next."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Self

import numpy as np


def gather(buf: np.ndarray, pos: np.ndarray, k: int, ok: np.ndarray | None = None) -> np.ndarray:
    """buf[pos : pos + k] of every row as an (n, k) array. Rows where `ok` is False (bytes not captured)
    read junk from offset 0 instead of past the buffer, and callers must ignore them; without `ok` the
    caller has checked that every row fits."""
    if buf.size < k:  # then no row can be ok
        return np.zeros((pos.size, k), np.uint8)
    if ok is not None and not ok.all():
        pos = np.where(ok, pos, 0)
    # One k-byte item starting at every byte of buf: a single 1-D gather, much faster than (n, k) indices.
    windows = np.ndarray((buf.size - k + 1,), f"V{k}", buf, 0, (1,))
    return windows[pos].view(np.uint8).reshape(-1, k)


def be16(h: np.ndarray, i: int) -> np.ndarray:
    return (h[:, i].astype(np.uint16) << 8) | h[:, i + 1]


def be32(h: np.ndarray, i: int) -> np.ndarray:
    return (be16(h, i).astype(np.uint32) << 16) | be16(h, i + 2)


def u8_at(buf: np.ndarray, pos: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    return gather(buf, pos, 1, ok)[:, 0]


def u16_at(buf: np.ndarray, pos: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    return be16(gather(buf, pos, 2, ok), 0)


# --- columns ------------------------------------------------------------------------------------------


class _Columns:
    """Struct of arrays with one entry per packet; stages filter rows with `take`."""

    def __len__(self) -> int:
        return len(getattr(self, fields(self)[0].name))

    def take(self, sel: np.ndarray) -> Self:
        if sel.dtype == np.bool_ and sel.all():
            return self
        return type(self)(*(getattr(self, f.name)[sel] for f in fields(self)))


@dataclass(slots=True)
class Cursor(_Columns):
    """Packets about to be parsed as IP: where the IP header starts and where the captured bytes end."""

    pkt: np.ndarray  # int64 row in the chunk (frame number and time come from there)
    l3: np.ndarray  # int64 offset of the IP header in the buffer
    end: np.ndarray  # int64 end of the bytes that belong to this packet
    ver: np.ndarray  # int8 IP version announced by the layer below (4 or 6)
    encap: np.ndarray  # uint8 tunnel layers removed so far


@dataclass(slots=True)
class Ip(_Columns):
    """Parsed IP headers. For fragments `proto` is the fragmented protocol and `l4` the fragment data."""

    pkt: np.ndarray
    encap: np.ndarray
    src: np.ndarray  # V16
    dst: np.ndarray
    proto: np.ndarray  # uint8
    ip_bytes: np.ndarray  # int64 length from the header
    l3: np.ndarray  # int64
    l4: np.ndarray  # int64 start of the transport header
    l4_end: np.ndarray  # int64 end of the captured bytes the IP header accounts for
    frag: np.ndarray  # bool: part of a fragmented datagram
    frag_off: np.ndarray  # int64 byte offset of this fragment's data
    more: np.ndarray  # bool: more fragments follow
    ident: np.ndarray  # uint32 identification


@dataclass(slots=True)
class Rows(_Columns):
    """Output rows, the PacketTable columns still keyed by chunk row (`pkt`)."""

    pkt: np.ndarray
    src: np.ndarray  # V16
    dst: np.ndarray
    proto: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    ip_bytes: np.ndarray
    payload_off: np.ndarray
    payload_len: np.ndarray  # int64 here, int32 in the PacketTable
    tcp_flags: np.ndarray
    tcp_seq: np.ndarray
    encap: np.ndarray
