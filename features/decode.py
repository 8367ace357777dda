"""RawChunk -> PacketTable: link layer, IP, fragment reassembly, transport, tunnel decapsulation.

Every stage works on index arrays over the whole chunk: header bytes are gathered with numpy fancy
indexing at per-packet offsets, behind bounds masks so a frame cut by the snaplen is never read past
its caplen. Python runs per packet only for IP fragments, which are rare and need state across chunks.

    link layer -> IP header -> fragment? -> Reassembler -> (datagram decoded like a packet)
                            -> transport -> tunnel? -> IP header of the inner packet (up to MAX_ENCAP)

A packet whose IP or transport header is cut by the snaplen (`truncated`) or inconsistent (`bad_ip`)
produces no row: without addresses and ports it cannot be put into a flow. A tunnel packet whose inner
IP header is not captured whole stays a row of the outer flow.

Counters in `PacketTable.stats`: non_ip, truncated, bad_ip, fragments (fragment packets seen),
reassembled (datagrams completed), fragments_dropped (fragments discarded, whatever the reason),
decapsulated (tunnel layers removed), linktype_<n> (frames of an unsupported link type); and, per
datagram given up, fragment_timeouts / fragment_evictions / fragment_overlaps / fragment_oversize /
fragment_truncated / fragment_inconsistent.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple, Self

import numpy as np

from vpnid.features.packets import (
    IPPROTO_GRE,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PacketTable,
    RawChunk,
)

# EtherTypes (IEEE 802 numbers registry).
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_QINQ_LEGACY = 0x9100  # pre-802.1ad vendor QinQ
ETH_P_MPLS_UC = 0x8847
ETH_P_MPLS_MC = 0x8848
ETH_P_PPP_SES = 0x8864  # PPPoE session stage (RFC 2516)
ETH_P_TEB = 0x6558  # transparent Ethernet bridging, as a GRE protocol type
ETH_HLEN = 14
VLAN_HLEN = 4  # IEEE 802.1Q tag: TCI + inner EtherType
MPLS_HLEN = 4  # RFC 3032 section 2.1 label stack entry
MPLS_BOS = 0x01  # bottom-of-stack bit, in byte 2 of the entry
PPPOE_HLEN = 8  # RFC 2516 section 4 (6 bytes) + PPP protocol field (2 bytes)
PPP_IP = 0x0021  # RFC 1332
PPP_IPV6 = 0x0057  # RFC 5072
MAX_LINK_TAGS = 8  # VLAN tags / MPLS labels followed before a frame is called non-IP

# Linux cooked capture (tcpdump.org LINKTYPE_LINUX_SLL / _SLL2): header length, protocol field offset.
SLL_HLEN, SLL_PROTO = 16, 14
SLL2_HLEN, SLL2_PROTO = 20, 0

# BSD loopback address families: the values differ by OS for IPv6.
LOOPBACK_HLEN = 4
AF_INET = 2
AF_INET6 = (10, 24, 28, 30)  # Linux, NetBSD/OpenBSD, FreeBSD, macOS

IPV4_MIN_HLEN = 20  # RFC 791 section 3.1
IPV4_DF = 0x4000
IPV4_MF = 0x2000
IPV4_OFFSET = 0x1FFF  # in 8-byte units
IPV6_HLEN = 40  # RFC 8200 section 3
IPV6_NH = 6  # offset of the next-header field
IPV6_FRAGMENT = 44  # RFC 8200 section 4.5
IPV6_FRAG_HLEN = 8
IPV6_FRAG_OFFSET = 0xFFF8  # offset already in bytes (13-bit field << 3)
IPV6_FRAG_M = 0x0001
IPV6_NONXT = 59
# Extension headers walked to reach the transport (RFC 8200 section 4; 135 RFC 6275, 139 RFC 7401,
# 140 RFC 5533); all but the fragment header are (next header, length in 8-byte units - 1).
IPV6_EXT_HEADERS = (0, 43, IPV6_FRAGMENT, 60, 135, 139, 140)
MAX_IPV6_EXT = 8
IP_MAXPACKET = 65535  # 16-bit total length (RFC 791) / payload length (RFC 8200)

TCP_MIN_HLEN = 20  # RFC 9293 section 3.1
UDP_HLEN = 8  # RFC 768

# GRE (RFC 2784, key and sequence number RFC 2890). Other bits in the first 13 must be zero, else the
# packet is RFC 1701 source-routed GRE or PPTP's enhanced GRE (version 1), which stay GRE flows.
GRE_C, GRE_K, GRE_S = 0x8000, 0x2000, 0x1000
GRE_MUST_BE_ZERO = 0x4FF8 | 0x0007  # reserved0 bits and the version
GRE_HLEN = 4  # flags/version + protocol type; each of C, K, S adds 4 bytes
# PPTP's enhanced GRE (RFC 2637 section 4.1): version 1, K set, protocol 0x880B, payload length + call ID,
# then a sequence number (S) and an acknowledgement (A) when flagged. Its PPP frame carries IP in the
# clear unless MPPE is on; only clear IP is decapsulated (encrypted PPP stays a GRE flow).
GRE_V1, GRE_A, GRE_VERSION = 0x0001, 0x0080, 0x0007
GRE_PPP = 0x880B
GRE_V1_HLEN = 8
PPP_ADDRESS_CONTROL = 0xFF03  # RFC 1662 section 3.1, omitted when address/control compression is on

# GTP-U (3GPP TS 29.281 section 5).
GTPU_PORT = 2152
GTP_V1 = 1  # version, top three bits of byte 0
GTP_PT = 0x10  # protocol type: GTP (not GTP')
GTP_E, GTP_OPTIONAL = 0x04, 0x07  # any of E/S/PN adds the 4-byte sequence / N-PDU / next-ext field
GTP_GPDU = 0xFF
GTPU_HLEN, GTPU_OPT_HLEN = 8, 4
MAX_GTP_EXT = 8

# VXLAN (RFC 7348 section 5).
VXLAN_PORT = 4789
VXLAN_I = 0x08
VXLAN_HLEN = 8

MAX_ENCAP = 4  # tunnel layers removed per packet; stops GRE-in-GRE loops
COUNTERS = ("non_ip", "truncated", "bad_ip", "fragments", "reassembled", "fragments_dropped", "decapsulated")

_V4_MAPPED_PREFIX = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)


# --- byte access ---------------------------------------------------------------------------------------


def _gather(buf: np.ndarray, pos: np.ndarray, k: int, ok: np.ndarray | None = None) -> np.ndarray:
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


def _be16(h: np.ndarray, i: int) -> np.ndarray:
    return (h[:, i].astype(np.uint16) << 8) | h[:, i + 1]


def _be32(h: np.ndarray, i: int) -> np.ndarray:
    return (_be16(h, i).astype(np.uint32) << 16) | _be16(h, i + 2)


def _u8_at(buf: np.ndarray, pos: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    return _gather(buf, pos, 1, ok)[:, 0]


def _u16_at(buf: np.ndarray, pos: np.ndarray, ok: np.ndarray | None = None) -> np.ndarray:
    return _be16(_gather(buf, pos, 2, ok), 0)


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
class _Cursor(_Columns):
    """Packets about to be parsed as IP: where the IP header starts and where the captured bytes end."""

    pkt: np.ndarray  # int64 row in the chunk (frame number and time come from there)
    l3: np.ndarray  # int64 offset of the IP header in the buffer
    end: np.ndarray  # int64 end of the bytes that belong to this packet
    ver: np.ndarray  # int8 IP version announced by the layer below (4 or 6)
    encap: np.ndarray  # uint8 tunnel layers removed so far


@dataclass(slots=True)
class _Ip(_Columns):
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
class _Rows(_Columns):
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


# --- link layer ---------------------------------------------------------------------------------------

# A link handler maps (buf, frame start, frame end) to (IP header offset, IP version or 0, header cut).
_LinkResult = tuple[np.ndarray, np.ndarray, np.ndarray]


def _ethertype_chain(buf: np.ndarray, etype: np.ndarray, pos: np.ndarray, end: np.ndarray) -> _LinkResult:
    """Follow VLAN tags, an MPLS label stack or a PPPoE session from an EtherType whose payload starts
    at `pos`, down to IPv4/IPv6. Returns version 0 for anything else."""
    etype, pos = etype.astype(np.int32), pos.copy()
    cut = pos > end
    for _ in range(MAX_LINK_TAGS):
        tag = ~cut & ((etype == ETH_P_8021Q) | (etype == ETH_P_8021AD) | (etype == ETH_P_QINQ_LEGACY))
        if not tag.any():
            break
        cut |= tag & (pos + VLAN_HLEN > end)
        tag &= ~cut
        etype[tag] = _u16_at(buf, pos[tag] + 2)
        pos[tag] += VLAN_HLEN
    mpls = ~cut & ((etype == ETH_P_MPLS_UC) | (etype == ETH_P_MPLS_MC))
    if mpls.any():
        i = np.flatnonzero(mpls)
        etype[i], pos[i], cut[i] = _mpls(buf, pos[i], end[i])
    pppoe = ~cut & (etype == ETH_P_PPP_SES)
    if pppoe.any():
        cut |= pppoe & (pos + PPPOE_HLEN > end)
        pppoe &= ~cut
        ppp = _u16_at(buf, pos[pppoe] + PPPOE_HLEN - 2)
        etype[pppoe] = np.select([ppp == PPP_IP, ppp == PPP_IPV6], [ETH_P_IP, ETH_P_IPV6], 0)
        pos[pppoe] += PPPOE_HLEN
    ver = np.select([etype == ETH_P_IP, etype == ETH_P_IPV6], [4, 6], 0).astype(np.int8)
    ver[cut] = 0
    return pos, ver, cut


def _mpls(buf: np.ndarray, pos: np.ndarray, end: np.ndarray) -> _LinkResult:
    """Skip an MPLS label stack (RFC 3032); the payload's version nibble says IPv4 or IPv6, as routers
    do. Returns (EtherType equivalent or 0, payload offset, cut)."""
    pos = pos.copy()
    cut = np.zeros(pos.size, bool)
    active = np.arange(pos.size)
    for _ in range(MAX_LINK_TAGS):
        if not active.size:
            break
        fits = pos[active] + MPLS_HLEN <= end[active]
        cut[active[~fits]] = True
        active = active[fits]
        bos = (_u8_at(buf, pos[active] + 2) & MPLS_BOS) != 0
        pos[active] += MPLS_HLEN
        active = active[~bos]
    has_byte = ~cut & (pos < end)
    has_byte[active] = False  # label stack deeper than MAX_LINK_TAGS
    nibble = _u8_at(buf, pos, has_byte) >> 4
    etype = np.select([has_byte & (nibble == 4), has_byte & (nibble == 6)], [ETH_P_IP, ETH_P_IPV6], 0)
    return etype, pos, cut


def _ethernet(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
    ok = start + ETH_HLEN <= end
    l3, ver, cut = _ethertype_chain(buf, _u16_at(buf, start + 12, ok), start + ETH_HLEN, end)
    return l3, ver, cut | ~ok


def _cooked(hlen: int, proto_off: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]:
    """Linux cooked capture v1/v2: an EtherType at a fixed offset, the packet after a fixed header."""

    def handler(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
        ok = start + hlen <= end
        l3, ver, cut = _ethertype_chain(buf, _u16_at(buf, start + proto_off, ok), start + hlen, end)
        return l3, ver, cut | ~ok

    return handler


def _raw(version: int | None) -> Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]:
    """Raw IP: a fixed version (228/229) or, for LINKTYPE_RAW, the version nibble of the first byte."""

    def handler(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
        cut = start >= end
        if version is not None:
            ver = np.full(start.size, version, np.int8)
        else:
            nibble = _u8_at(buf, start, ~cut) >> 4
            ver = np.select([nibble == 4, nibble == 6], [4, 6], 0).astype(np.int8)
        ver[cut] = 0
        return start, ver, cut

    return handler


def _loopback(either_order: bool) -> Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]:
    """BSD loopback: a 4-byte address family, host order for NULL (so either), network order for LOOP."""

    def handler(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
        cut = start + LOOPBACK_HLEN > end
        h = _gather(buf, start, LOOPBACK_HLEN, ~cut)
        af = _be32(h, 0)
        if either_order:  # the family is small, so the byte order that reads the smaller value is right
            af = np.minimum(af, np.ascontiguousarray(h).view("<u4")[:, 0])
        ver = np.select([af == AF_INET, np.isin(af, AF_INET6)], [4, 6], 0).astype(np.int8)
        ver[cut] = 0
        return start + LOOPBACK_HLEN, ver, cut

    return handler


_LINK_HANDLERS: dict[int, Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]] = {
    LINKTYPE_ETHERNET: _ethernet,
    LINKTYPE_LINUX_SLL: _cooked(SLL_HLEN, SLL_PROTO),
    LINKTYPE_LINUX_SLL2: _cooked(SLL2_HLEN, SLL2_PROTO),
    LINKTYPE_RAW: _raw(None),
    LINKTYPE_IPV4: _raw(4),
    LINKTYPE_IPV6: _raw(6),
    LINKTYPE_NULL: _loopback(either_order=True),
    LINKTYPE_LOOP: _loopback(either_order=False),
}


def _link_layer(chunk: RawChunk, stats: Counter[str]) -> _Cursor:
    """Locate the IP header of every frame; count and drop non-IP frames and unknown link types."""
    n = len(chunk)
    start = chunk.offset.astype(np.int64)
    end = np.minimum(start + chunk.caplen, chunk.data.size)
    lt = chunk.linktype
    l3 = np.zeros(n, np.int64)
    ver = np.zeros(n, np.int8)
    cut = np.zeros(n, bool)
    unknown = np.zeros(n, bool)
    types = [int(lt[0])] if n and (lt == lt[0]).all() else [int(t) for t in np.unique(lt)]
    for t in types:
        rows = slice(None) if len(types) == 1 else lt == t  # files with one link type skip the mask
        handler = _LINK_HANDLERS.get(t)
        if handler is None:
            unknown[rows] = True
            stats[f"linktype_{t}"] += int(np.count_nonzero(unknown[rows]))
            continue
        l3[rows], ver[rows], cut[rows] = handler(chunk.data, start[rows], end[rows])
    stats["truncated"] += int(np.count_nonzero(cut))
    stats["non_ip"] += int(np.count_nonzero(~unknown & ~cut & (ver == 0)))
    keep = np.flatnonzero(ver != 0)
    return _Cursor(keep, l3[keep], end[keep], ver[keep], np.zeros(keep.size, np.uint8))


# --- IP -----------------------------------------------------------------------------------------------


def _drop(stats: Counter[str], cut: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Count rows lost to the snaplen (`cut`) or to inconsistent headers (`bad`); returns the rows kept."""
    stats["truncated"] += int(np.count_nonzero(cut))
    stats["bad_ip"] += int(np.count_nonzero(bad & ~cut))
    return ~(cut | bad)


def _presumed_length(from_header: np.ndarray, captured: np.ndarray) -> np.ndarray:
    """A length field of 0 (IPv4 total length, IPv6 payload length) is what captures on a host doing
    TCP segmentation offload contain, and IPv6 jumbograms (RFC 2675) too: then the captured length is
    the best guess, as in Wireshark."""
    return np.where(from_header == 0, captured, from_header)


def _ipv4(buf: np.ndarray, c: _Cursor, stats: Counter[str]) -> _Ip:
    fits = c.l3 + IPV4_MIN_HLEN <= c.end
    h = _gather(buf, c.l3, IPV4_MIN_HLEN, fits)
    ihl = (h[:, 0] & 0x0F).astype(np.int64) * 4
    total = _presumed_length(_be16(h, 2).astype(np.int64), c.end - c.l3)
    bad = fits & (((h[:, 0] >> 4) != 4) | (ihl < IPV4_MIN_HLEN) | (total < ihl))
    keep = _drop(stats, ~fits | (~bad & (c.l3 + ihl > c.end)), bad)
    c, h, ihl, total = c.take(keep), h[keep], ihl[keep], total[keep]
    addrs = np.empty((len(c), 2, 16), np.uint8)
    addrs[:, :, :12] = _V4_MAPPED_PREFIX
    addrs[:, :, 12:] = h[:, 12:20].reshape(-1, 2, 4)
    addrs = addrs.view("V16")[:, :, 0]
    flags = _be16(h, 6)
    frag_off = (flags & IPV4_OFFSET).astype(np.int64) * 8
    more = (flags & IPV4_MF) != 0
    return _Ip(
        pkt=c.pkt,
        encap=c.encap,
        src=addrs[:, 0],
        dst=addrs[:, 1],
        proto=h[:, 9],
        ip_bytes=total,
        l3=c.l3,
        l4=c.l3 + ihl,
        l4_end=np.minimum(c.l3 + total, c.end),
        frag=more | (frag_off != 0),
        frag_off=frag_off,
        more=more,
        ident=_be16(h, 4).astype(np.uint32),
    )


def _ipv6(buf: np.ndarray, c: _Cursor, stats: Counter[str]) -> _Ip:
    fits = c.l3 + IPV6_HLEN <= c.end
    h = _gather(buf, c.l3, IPV6_HLEN, fits)
    keep = _drop(stats, ~fits, fits & ((h[:, 0] >> 4) != 6))
    c, h = c.take(keep), h[keep]
    addrs = np.ascontiguousarray(h[:, 8:40]).view("V16")
    captured = np.where(h[:, IPV6_NH] == IPV6_NONXT, 0, c.end - c.l3 - IPV6_HLEN)
    ip_bytes = IPV6_HLEN + _presumed_length(_be16(h, 4).astype(np.int64), captured)
    l4_end = np.minimum(c.l3 + ip_bytes, c.end)
    first_nh = h[:, IPV6_NH].copy()
    nh, l4, frag_off, more, ident, alive = _ipv6_extensions(buf, first_nh, c.l3 + IPV6_HLEN, l4_end)
    cut = ~alive & (l4_end < c.l3 + ip_bytes)
    keep = _drop(stats, cut, ~alive)
    l4_end = np.where(nh == IPV6_NONXT, l4, l4_end)
    ip = _Ip(
        pkt=c.pkt,
        encap=c.encap,
        src=addrs[:, 0],
        dst=addrs[:, 1],
        proto=nh,
        ip_bytes=ip_bytes,
        l3=c.l3,
        l4=l4,
        l4_end=l4_end,
        frag=more | (frag_off != 0),
        frag_off=frag_off,
        more=more,
        ident=ident,
    )
    return ip.take(keep)


def _ipv6_extensions(
    buf: np.ndarray, nh: np.ndarray, pos: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Walk IPv6 extension headers to the transport (or to a fragment header, whose data is only
    readable after reassembly). Atomic fragments (offset 0, M=0, RFC 6946) are walked through.
    Returns next header, its offset, fragment offset, M flag, identification, and a mask of rows whose
    chain fit in the captured bytes."""
    n = nh.size
    frag_off = np.zeros(n, np.int64)
    more = np.zeros(n, bool)
    ident = np.zeros(n, np.uint32)
    alive = np.ones(n, bool)
    def walkable() -> np.ndarray:
        return np.isin(nh, IPV6_EXT_HEADERS) & ~more & (frag_off == 0)

    for _ in range(MAX_IPV6_EXT):
        i = np.flatnonzero(alive & walkable())
        if not i.size:
            break
        fits = pos[i] + 8 <= end[i]
        alive[i[~fits]] = False
        i = i[fits]
        e = _gather(buf, pos[i], 8)
        is_frag = nh[i] == IPV6_FRAGMENT
        field = _be16(e, 2)
        frag_off[i] = np.where(is_frag, field & IPV6_FRAG_OFFSET, 0)
        more[i] = is_frag & ((field & IPV6_FRAG_M) != 0)
        ident[i] = np.where(is_frag, _be32(e, 4), 0)
        nh[i] = e[:, 0]
        pos[i] += np.where(is_frag, IPV6_FRAG_HLEN, (e[:, 1].astype(np.int64) + 1) * 8)
    else:
        alive &= ~walkable()  # chain longer than MAX_IPV6_EXT
    return nh, pos, frag_off, more, ident, alive & (pos <= end)  # the last header's length may lie


def _ip_layer(buf: np.ndarray, c: _Cursor, stats: Counter[str]) -> list[_Ip]:
    """One `_Ip` per IP version present; they go through the later stages separately, because
    concatenating them would cost a full copy."""
    v4 = c.ver == 4
    if v4.all():
        return [_ipv4(buf, c, stats)]
    if not v4.any():
        return [_ipv6(buf, c, stats)]
    return [_ipv4(buf, c.take(v4), stats), _ipv6(buf, c.take(~v4), stats)]


# --- transport ----------------------------------------------------------------------------------------


def _transport(buf: np.ndarray, ip: _Ip, stats: Counter[str]) -> _Rows:
    """Ports, TCP flags/sequence and the payload; ESP, AH, ICMP and others have ports 0 and their
    payload right after the IP header (for ESP/AH that is the ESP/AH header itself)."""
    n = len(ip)
    sport = np.zeros(n, np.uint16)
    dport = np.zeros(n, np.uint16)
    flags = np.zeros(n, np.uint8)
    seq = np.zeros(n, np.uint32)
    poff, pend = ip.l4.copy(), ip.l4_end.copy()
    cut = np.zeros(n, bool)
    bad = np.zeros(n, bool)
    captured_all = ip.l4_end >= ip.l3 + ip.ip_bytes

    tcp = np.flatnonzero(ip.proto == IPPROTO_TCP)
    if tcp.size:
        l4, l4_end = ip.l4[tcp], ip.l4_end[tcp]
        fits = l4 + TCP_MIN_HLEN <= l4_end
        h = _gather(buf, l4, TCP_MIN_HLEN, fits)
        doff = (h[:, 12] >> 4).astype(np.int64) * 4
        fits &= l4 + doff <= l4_end
        cut[tcp], bad[tcp] = ~fits & ~captured_all[tcp], ~fits | (doff < TCP_MIN_HLEN)
        sport[tcp], dport[tcp], seq[tcp], flags[tcp] = _be16(h, 0), _be16(h, 2), _be32(h, 4), h[:, 13]
        poff[tcp] = l4 + doff

    udp = np.flatnonzero(ip.proto == IPPROTO_UDP)
    if udp.size:
        l4 = ip.l4[udp]
        fits = l4 + UDP_HLEN <= ip.l4_end[udp]
        h = _gather(buf, l4, UDP_HLEN, fits)
        cut[udp], bad[udp] = ~fits & ~captured_all[udp], ~fits
        sport[udp], dport[udp] = _be16(h, 0), _be16(h, 2)
        ulen = _be16(h, 4).astype(np.int64)  # 0 in IPv6 jumbograms: the IP length rules then
        poff[udp] = l4 + UDP_HLEN
        pend[udp] = np.where(ulen >= UDP_HLEN, np.minimum(pend[udp], l4 + ulen), pend[udp])

    rows = _Rows(
        pkt=ip.pkt,
        src=ip.src,
        dst=ip.dst,
        proto=ip.proto,
        sport=sport,
        dport=dport,
        ip_bytes=ip.ip_bytes,
        payload_off=poff,
        payload_len=np.maximum(pend - poff, 0),
        tcp_flags=flags,
        tcp_seq=seq,
        encap=ip.encap,
    )
    return rows.take(_drop(stats, cut, bad))


# --- tunnels ------------------------------------------------------------------------------------------

# A tunnel handler returns, for the rows it recognises, (row indices, inner IP offset, inner version).
_Inner = tuple[np.ndarray, np.ndarray, np.ndarray]


def _ip_in_ip(buf: np.ndarray, r: _Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    i = np.flatnonzero(room & ((r.proto == IPPROTO_IPIP) | (r.proto == IPPROTO_IPV6)))
    return i, r.payload_off[i], np.where(r.proto[i] == IPPROTO_IPIP, 4, 6).astype(np.int8)


def _gre(buf: np.ndarray, r: _Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    """GRE version 0 with optional checksum, key and sequence number; version 1 (PPTP) is left alone."""
    i = np.flatnonzero(room & (r.proto == IPPROTO_GRE) & (r.payload_len >= GRE_HLEN))
    h = _gather(buf, r.payload_off[i], GRE_HLEN)
    flags, ptype = _be16(h, 0), _be16(h, 2)
    v0 = (flags & GRE_MUST_BE_ZERO) == 0
    i, flags, ptype = i[v0], flags[v0], ptype[v0]
    options = sum(((flags & bit) != 0).astype(np.int64) for bit in (GRE_C, GRE_K, GRE_S))
    pos = r.payload_off[i] + GRE_HLEN + 4 * options
    l3, ver, _ = _ethertype_chain(buf, ptype, pos, end[i])
    teb = ptype == ETH_P_TEB
    if teb.any():
        l3[teb], ver[teb], _ = _ethernet(buf, pos[teb], end[i][teb])
    return i, l3, ver


def _pptp_gre(buf: np.ndarray, r: _Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    """PPTP data (enhanced GRE) whose PPP frame carries clear IPv4/IPv6, with or without the PPP
    address/control bytes and with a 1- or 2-byte protocol field (RFC 1661 section 6.5)."""
    i = np.flatnonzero(room & (r.proto == IPPROTO_GRE) & (r.payload_len >= GRE_V1_HLEN + 2))
    h = _gather(buf, r.payload_off[i], GRE_HLEN)
    flags, ptype = _be16(h, 0), _be16(h, 2)
    ok = ((flags & GRE_VERSION) == GRE_V1) & ((flags & GRE_K) != 0) & (ptype == GRE_PPP)
    i, flags = i[ok], flags[ok]
    pos = r.payload_off[i] + GRE_V1_HLEN + 4 * ((flags & GRE_S) != 0) + 4 * ((flags & GRE_A) != 0)
    e = end[i]
    ac = _be16(_gather(buf, pos, 2, pos + 2 <= e), 0) == PPP_ADDRESS_CONTROL
    pos = pos + 2 * ac
    first = _u8_at(buf, pos, pos < e).astype(np.int64)
    short = (first & 1) == 1  # an odd first byte is a compressed 1-byte protocol field
    proto = np.where(short, first, (first << 8) | _u8_at(buf, pos + 1, pos + 1 < e))
    pos = pos + np.where(short, 1, 2)
    ver = np.select([(proto & 0xFF) == PPP_IP, (proto & 0xFF) == PPP_IPV6], [4, 6], 0)
    ver = np.where((proto == PPP_IP) | (proto == PPP_IPV6) | short, ver, 0).astype(np.int8)
    return i, pos, ver


def _gtpu(buf: np.ndarray, r: _Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    """GTP-U G-PDU: skip the optional fields and the extension header chain; the version nibble of
    what follows says IPv4 or IPv6."""
    port = (r.sport == GTPU_PORT) | (r.dport == GTPU_PORT)
    i = np.flatnonzero(room & port & (r.proto == IPPROTO_UDP) & (r.payload_len >= GTPU_HLEN + GTPU_OPT_HLEN))
    h = _gather(buf, r.payload_off[i], GTPU_HLEN + GTPU_OPT_HLEN)
    gpdu = ((h[:, 0] >> 5) == GTP_V1) & ((h[:, 0] & GTP_PT) != 0) & (h[:, 1] == GTP_GPDU)
    i, h = i[gpdu], h[gpdu]
    pos = r.payload_off[i] + GTPU_HLEN + np.where((h[:, 0] & GTP_OPTIONAL) != 0, GTPU_OPT_HLEN, 0)
    nxt = np.where((h[:, 0] & GTP_E) != 0, h[:, GTPU_HLEN + 3], 0).astype(np.int16)
    e_end = end[i]
    for _ in range(MAX_GTP_EXT):  # each extension: length in 4-byte units, ..., next extension type
        j = np.flatnonzero(nxt != 0)
        if not j.size:
            break
        has_len = pos[j] < e_end[j]
        units = _u8_at(buf, pos[j], has_len).astype(np.int64)
        ok = has_len & (units > 0) & (pos[j] + 4 * units <= e_end[j])
        nxt[j[~ok]] = -1  # malformed: not decapsulated
        j, units = j[ok], units[ok]
        pos[j] += 4 * units
        nxt[j] = _u8_at(buf, pos[j] - 1)
    has_ip = (nxt == 0) & (pos < e_end)
    nibble = _u8_at(buf, pos, has_ip) >> 4
    ver = np.where(has_ip & ((nibble == 4) | (nibble == 6)), nibble, 0).astype(np.int8)
    return i, pos, ver


def _vxlan(buf: np.ndarray, r: _Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    vxlan = (r.proto == IPPROTO_UDP) & (r.dport == VXLAN_PORT) & (r.payload_len >= VXLAN_HLEN)
    i = np.flatnonzero(room & vxlan)
    i = i[(_u8_at(buf, r.payload_off[i]) & VXLAN_I) != 0]
    l3, ver, _ = _ethernet(buf, r.payload_off[i] + VXLAN_HLEN, end[i])
    return i, l3, ver


_TUNNELS = (_ip_in_ip, _gre, _pptp_gre, _gtpu, _vxlan)


def _decapsulate(buf: np.ndarray, r: _Rows, stats: Counter[str]) -> tuple[np.ndarray, _Cursor]:
    """Find tunnel packets whose inner packet starts with an IP header of the announced version.
    Returns the rows that stay as they are, and a cursor over the inner packets of the others."""
    end = r.payload_off + r.payload_len
    room = r.encap < MAX_ENCAP
    l3 = np.zeros(len(r), np.int64)
    ver = np.zeros(len(r), np.int8)
    for tunnel in _TUNNELS:
        rows, inner_l3, inner_ver = tunnel(buf, r, end, room)
        l3[rows], ver[rows] = inner_l3, inner_ver
    # Decapsulate only if the inner IP header was captured whole: if it was not, the outer packet is
    # still a useful tunnel row.
    has_header = (ver != 0) & (l3 + np.where(ver == 4, IPV4_MIN_HLEN, IPV6_HLEN) <= end)
    inner = has_header & ((_u8_at(buf, l3, has_header) >> 4) == ver)
    stats["decapsulated"] += int(np.count_nonzero(inner))
    i = np.flatnonzero(inner)
    return ~inner, _Cursor(r.pkt[i], l3[i], end[i], ver[i], r.encap[i] + 1)


# --- fragments ----------------------------------------------------------------------------------------


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


def _reassemble(
    buf: np.ndarray, ip: _Ip, ts_ns: np.ndarray, reasm: Reassembler, stats: Counter[str]
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


# --- pipeline -----------------------------------------------------------------------------------------


def _decode_ip(
    buf: np.ndarray, cur: _Cursor, ts_ns: np.ndarray, reasm: Reassembler, stats: Counter[str]
) -> tuple[list[_Rows], list[tuple[int, int, bytes]]]:
    """IP -> fragments / transport -> tunnels -> inner IP ..., until no tunnel is left. Returns the rows
    (in parts) and the datagrams completed by fragments on the way."""
    rows, done, todo = [], [], [cur]
    while todo:
        for ip in _ip_layer(buf, todo.pop(), stats):
            if ip.frag.any():
                done += _reassemble(buf, ip.take(ip.frag), ts_ns, reasm, stats)
                ip = ip.take(~ip.frag)
            r = _transport(buf, ip, stats)
            stay, inner = _decapsulate(buf, r, stats)
            rows.append(r.take(stay))
            if len(inner):
                todo.append(inner)
    return rows, done


def _datagram_cursor(done: list[tuple[int, int, bytes]]) -> tuple[np.ndarray, _Cursor]:
    """A buffer holding reassembled datagrams back to back, and a cursor over them."""
    blob = np.frombuffer(b"".join(d for _, _, d in done), np.uint8)
    lengths = np.array([len(d) for _, _, d in done], np.int64)
    l3 = np.cumsum(lengths) - lengths
    ver = (blob[l3] >> 4).astype(np.int8)
    pkt = np.array([p for p, _, _ in done], np.int64)
    encap = np.array([e for _, e, _ in done], np.uint8)
    return blob, _Cursor(pkt, l3, l3 + lengths, ver, encap)


def decode(chunk: RawChunk, reassembler: Reassembler) -> PacketTable:
    """Decode one chunk into one row per IP packet (after reassembly and decapsulation), in capture
    order. Reassembled datagrams are appended to the returned table's `data`."""
    stats: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
    rows, done = _decode_ip(chunk.data, _link_layer(chunk, stats), chunk.ts_ns, reassembler, stats)
    buffers = [chunk.data]
    base = chunk.data.size
    while done:  # datagrams completed by fragments, then by fragments found inside those, ...
        blob, cur = _datagram_cursor(done)
        more_rows, done = _decode_ip(blob, cur, chunk.ts_ns, reassembler, stats)
        for r in more_rows:
            r.payload_off += base
        rows += more_rows
        buffers.append(blob)
        base += blob.size
    if len(chunk):
        reassembler.expire(int(chunk.ts_ns.max()), stats)
    out = _in_capture_order(rows, len(chunk))
    return PacketTable(
        data=chunk.data,
        extra=(np.concatenate(buffers[1:]) if len(buffers) > 2 else buffers[1] if len(buffers) > 1
               else np.zeros(0, np.uint8)),
        frame=chunk.frame[out.pkt],
        ts_ns=chunk.ts_ns[out.pkt],
        src=out.src,
        dst=out.dst,
        proto=out.proto.astype(np.uint8),
        sport=out.sport,
        dport=out.dport,
        ip_bytes=out.ip_bytes.astype(np.int64),
        payload_off=out.payload_off,
        payload_len=out.payload_len.astype(np.int32),
        tcp_flags=out.tcp_flags,
        tcp_seq=out.tcp_seq,
        encap=out.encap,
        stats={k: int(v) for k, v in stats.items()},
    )


def _in_capture_order(parts: list[_Rows], n: int) -> _Rows:
    """Merge row parts into capture order. Each chunk row yields at most one output row (a fragment
    yields none, the datagram it completes one), so a row's place is the rank of its chunk row."""
    if len(parts) == 1:
        return parts[0]
    present = np.zeros(n, bool)
    for p in parts:
        present[p.pkt] = True
    place = np.cumsum(present) - 1
    total = int(np.count_nonzero(present))
    columns = []
    for f in fields(_Rows):
        first = getattr(parts[0], f.name)
        column = np.empty(total, first.dtype)
        for p in parts:
            column[place[p.pkt]] = getattr(p, f.name)
        columns.append(column)
    return _Rows(*columns)

