"""Link layers (Ethernet with VLAN/QinQ/MPLS/PPPoE, Linux cooked v1/v2, raw IP, BSD loopback) -> where IP starts."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from vpnid.features.decode.columns import Cursor, be32, gather, u8_at, u16_at
from vpnid.features.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
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


# A link handler maps (buf, frame start, frame end) to (IP header offset, IP version or 0, header cut).
_LinkResult = tuple[np.ndarray, np.ndarray, np.ndarray]


def ethertype_chain(buf: np.ndarray, etype: np.ndarray, pos: np.ndarray, end: np.ndarray) -> _LinkResult:
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
        etype[tag] = u16_at(buf, pos[tag] + 2)
        pos[tag] += VLAN_HLEN
    mpls = ~cut & ((etype == ETH_P_MPLS_UC) | (etype == ETH_P_MPLS_MC))
    if mpls.any():
        i = np.flatnonzero(mpls)
        etype[i], pos[i], cut[i] = _mpls(buf, pos[i], end[i])
    pppoe = ~cut & (etype == ETH_P_PPP_SES)
    if pppoe.any():
        cut |= pppoe & (pos + PPPOE_HLEN > end)
        pppoe &= ~cut
        ppp = u16_at(buf, pos[pppoe] + PPPOE_HLEN - 2)
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
        bos = (u8_at(buf, pos[active] + 2) & MPLS_BOS) != 0
        pos[active] += MPLS_HLEN
        active = active[~bos]
    has_byte = ~cut & (pos < end)
    has_byte[active] = False  # label stack deeper than MAX_LINK_TAGS
    nibble = u8_at(buf, pos, has_byte) >> 4
    etype = np.select([has_byte & (nibble == 4), has_byte & (nibble == 6)], [ETH_P_IP, ETH_P_IPV6], 0)
    return etype, pos, cut


def ethernet(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
    ok = start + ETH_HLEN <= end
    l3, ver, cut = ethertype_chain(buf, u16_at(buf, start + 12, ok), start + ETH_HLEN, end)
    return l3, ver, cut | ~ok


def _cooked(hlen: int, proto_off: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]:
    """Linux cooked capture v1/v2: an EtherType at a fixed offset, the packet after a fixed header."""

    def handler(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
        ok = start + hlen <= end
        l3, ver, cut = ethertype_chain(buf, u16_at(buf, start + proto_off, ok), start + hlen, end)
        return l3, ver, cut | ~ok

    return handler


def _raw(version: int | None) -> Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]:
    """Raw IP: a fixed version (228/229) or, for LINKTYPE_RAW, the version nibble of the first byte."""

    def handler(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
        cut = start >= end
        if version is not None:
            ver = np.full(start.size, version, np.int8)
        else:
            nibble = u8_at(buf, start, ~cut) >> 4
            ver = np.select([nibble == 4, nibble == 6], [4, 6], 0).astype(np.int8)
        ver[cut] = 0
        return start, ver, cut

    return handler


def _loopback(either_order: bool) -> Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]:
    """BSD loopback: a 4-byte address family, host order for NULL (so either), network order for LOOP."""

    def handler(buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> _LinkResult:
        cut = start + LOOPBACK_HLEN > end
        h = gather(buf, start, LOOPBACK_HLEN, ~cut)
        af = be32(h, 0)
        if either_order:  # the family is small, so the byte order that reads the smaller value is right
            af = np.minimum(af, np.ascontiguousarray(h).view("<u4")[:, 0])
        ver = np.select([af == AF_INET, np.isin(af, AF_INET6)], [4, 6], 0).astype(np.int8)
        ver[cut] = 0
        return start + LOOPBACK_HLEN, ver, cut

    return handler


_LINK_HANDLERS: dict[int, Callable[[np.ndarray, np.ndarray, np.ndarray], _LinkResult]] = {
    LINKTYPE_ETHERNET: ethernet,
    LINKTYPE_LINUX_SLL: _cooked(SLL_HLEN, SLL_PROTO),
    LINKTYPE_LINUX_SLL2: _cooked(SLL2_HLEN, SLL2_PROTO),
    LINKTYPE_RAW: _raw(None),
    LINKTYPE_IPV4: _raw(4),
    LINKTYPE_IPV6: _raw(6),
    LINKTYPE_NULL: _loopback(either_order=True),
    LINKTYPE_LOOP: _loopback(either_order=False),
}


def link_layer(chunk: RawChunk, stats: Counter[str]) -> Cursor:
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
    return Cursor(keep, l3[keep], end[keep], ver[keep], np.zeros(keep.size, np.uint8))
