"""IPv4/IPv6 fragment reassembly with bounded memory: the one stage with state across chunks."""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vpnid.features.decode.columns import Ip
from vpnid.features.decode.ip import IP_MAXPACKET, IPV4_DF, IPV6_HLEN, IPV6_NH


class Fragment(NamedTuple):
    """What the reassembler keeps of one fragment."""

    offset: int  # of its data in the datagram's data, in bytes
    more: bool  # more fragments follow (MF / M flag)
    data: bytes | None  # None if the fragment was not captured whole: its datagram cannot complete
    header: bytes | None  # for the offset-0 fragment: the IP header the datagram will get


@dataclass(slots=True)
class _Datagram:
    """Fragments of one datagram so far: data bytes at their offsets and which bytes are present."""

    first_ts: int
    data: np.ndarray
    have: np.ndarray  # bool per byte of `data`
    have_bytes: int = 0
    length: int = -1  # data length, known once the last fragment (MF=0) arrived
    header: bytes | None = None  # IP header of the offset-0 fragment
    fragments: int = 0
    dead: bool = False  # cannot complete: later fragments are dropped without starting a new datagram


class Reassembler:
    """IPv4 (RFC 791) and IPv6 (RFC 8200 section 4.5) fragment reassembly, persisting across the chunks
    of one file.

    Memory is bounded: at most `max_datagrams` datagrams in progress and `max_bytes` bytes held (the
    oldest datagram is evicted first); a datagram whose first fragment is more than `timeout_s` older
    than the current packet is dropped, like Linux's ipfrag_time. A datagram that cannot complete
    (overlapping fragments with different bytes, longer than 65535, a fragment cut by the snaplen) is
    kept as an empty tombstone so its remaining fragments are dropped rather than start a new one.
    """

    def __init__(
        self, *, max_datagrams: int = 4096, max_bytes: int = 64 * 1024 * 1024, timeout_s: float = 30.0
    ) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout_ns = int(timeout_s * 1e9)
        self._pending: OrderedDict[tuple, _Datagram] = OrderedDict()
        self._bytes = 0

    def add(self, key: tuple, ts_ns: int, frag: Fragment, stats: Counter[str]) -> bytes | None:
        """Take one fragment of the datagram `key`; returns the whole datagram, IP header included,
        when this fragment completes it."""
        self.expire(ts_ns, stats)
        stats["fragments"] += 1
        dg = self._pending.get(key)
        if dg is None:
            while len(self._pending) >= self.max_datagrams:
                self._evict(stats)
            dg = self._pending[key] = _Datagram(ts_ns, np.zeros(0, np.uint8), np.zeros(0, bool))
        dg.fragments += 1
        if dg.dead:
            stats["fragments_dropped"] += 1
            return None
        problem = self._insert(dg, frag)
        if problem:
            self._kill(dg, problem, stats)
            return None
        while self._bytes > self.max_bytes and key in self._pending:
            self._evict(stats)
        if key not in self._pending or dg.header is None or dg.have_bytes != dg.length:
            return None
        del self._pending[key]
        self._bytes -= dg.data.size
        whole = _datagram_bytes(dg.header, dg.data)
        if whole is None:
            stats["fragment_oversize"] += 1
            stats["fragments_dropped"] += dg.fragments
            return None
        stats["reassembled"] += 1
        return whole

    def expire(self, now_ns: int, stats: Counter[str]) -> None:
        """Drop datagrams whose first fragment is older than the timeout (oldest are first in order)."""
        while self._pending:
            key, dg = next(iter(self._pending.items()))
            if dg.first_ts >= now_ns - self.timeout_ns:
                return
            self._remove(key, dg, "fragment_timeouts", stats)

    def _insert(self, dg: _Datagram, frag: Fragment) -> str:
        """Store a fragment's bytes; returns why the datagram cannot complete (a stats key), or ''."""
        offset, more, data = frag.offset, frag.more, frag.data
        if data is None:
            return "fragment_truncated"
        end = offset + len(data)
        if end > IP_MAXPACKET:
            return "fragment_oversize"
        ends_elsewhere = not more and (dg.length not in (-1, end) or dg.data.size > end)
        if ends_elsewhere or 0 <= dg.length < end:
            return "fragment_inconsistent"
        if end > dg.data.size:
            self._bytes += end - dg.data.size
            dg.data = np.concatenate([dg.data, np.zeros(end - dg.data.size, np.uint8)])
            dg.have = np.concatenate([dg.have, np.zeros(end - dg.have.size, bool)])
        new = np.frombuffer(data, np.uint8)
        seen = dg.have[offset:end]
        if (dg.data[offset:end][seen] != new[seen]).any():
            return "fragment_overlaps"
        dg.have_bytes += len(data) - int(np.count_nonzero(seen))
        dg.data[offset:end] = new
        dg.have[offset:end] = True
        if not more:
            dg.length = end
        if offset == 0:
            dg.header = frag.header
        return ""

    def _kill(self, dg: _Datagram, reason: str, stats: Counter[str]) -> None:
        stats[reason] += 1
        stats["fragments_dropped"] += dg.fragments
        self._bytes -= dg.data.size
        dg.dead = True
        dg.data, dg.have = np.zeros(0, np.uint8), np.zeros(0, bool)

    def _evict(self, stats: Counter[str]) -> None:
        key, dg = next(iter(self._pending.items()))
        self._remove(key, dg, "fragment_evictions", stats)

    def _remove(self, key: tuple, dg: _Datagram, reason: str, stats: Counter[str]) -> None:
        del self._pending[key]
        if not dg.dead:
            self._kill(dg, reason, stats)


def _datagram_bytes(header: bytes, data: np.ndarray) -> bytes | None:
    """The reassembled IP packet: the first fragment's header with its length fixed and fragmentation
    cleared (IPv4 checksum not recomputed; IPv6 extension headers before the fragment header are
    dropped). None if the length does not fit the 16-bit field."""
    hdr = bytearray(header)
    if hdr[0] >> 4 == 4:
        if len(hdr) + data.size > IP_MAXPACKET:
            return None
        struct.pack_into("!H", hdr, 2, len(hdr) + data.size)
        hdr[6] &= IPV4_DF >> 8  # keep DF, clear MF and the offset
        hdr[7] = 0
    else:
        struct.pack_into("!H", hdr, 4, data.size)
    return bytes(hdr) + data.tobytes()


def _fragment_header(buf: np.ndarray, l3: int, l4: int, proto: int) -> bytes:
    """IP header of an offset-0 fragment, as the reassembled datagram's header: for IPv6 the fixed
    header with the next header set to the fragmented protocol."""
    if buf[l3] >> 4 == 4:
        return buf[l3:l4].tobytes()
    hdr = bytearray(buf[l3 : l3 + IPV6_HLEN].tobytes())
    hdr[IPV6_NH] = proto
    return bytes(hdr)


def reassemble(
    buf: np.ndarray, ip: Ip, ts_ns: np.ndarray, reasm: Reassembler, stats: Counter[str]
) -> list[tuple[int, int, bytes]]:
    """Feed fragments to the reassembler in capture order; returns (chunk row, encap, datagram) for
    the datagrams they complete."""
    done = []
    for k in np.argsort(ip.pkt, kind="stable").tolist():
        l3, l4, l4_end = int(ip.l3[k]), int(ip.l4[k]), int(ip.l4_end[k])
        proto, offset = int(ip.proto[k]), int(ip.frag_off[k])
        v4 = buf[l3] >> 4 == 4
        key = (ip.src[k].tobytes(), ip.dst[k].tobytes(), proto if v4 else -1, int(ip.ident[k]))
        data = buf[l4:l4_end].tobytes() if l4_end == l3 + int(ip.ip_bytes[k]) else None
        header = _fragment_header(buf, l3, l4, proto) if offset == 0 else None
        pkt = int(ip.pkt[k])
        whole = reasm.add(key, int(ts_ns[pkt]), Fragment(offset, bool(ip.more[k]), data, header), stats)
        if whole is not None:
            done.append((pkt, int(ip.encap[k]), whole))
    return done
