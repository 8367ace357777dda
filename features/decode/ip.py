"""IPv4 and IPv6 headers (extension headers walked) -> addresses, protocol, transport offset, fragments."""

from __future__ import annotations

from collections import Counter

import numpy as np

from vpnid.features.decode.columns import Cursor, Ip, be16, be32, gather

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

_V4_MAPPED_PREFIX = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)


def drop(stats: Counter[str], cut: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Count rows lost to the snaplen (`cut`) or to inconsistent headers (`bad`); returns the rows kept."""
    stats["truncated"] += int(np.count_nonzero(cut))
    stats["bad_ip"] += int(np.count_nonzero(bad & ~cut))
    return ~(cut | bad)


def _presumed_length(from_header: np.ndarray, captured: np.ndarray) -> np.ndarray:
    """A length field of 0 (IPv4 total length, IPv6 payload length) is what captures on a host doing
    TCP segmentation offload contain, and IPv6 jumbograms (RFC 2675) too: then the captured length is
    the best guess, as in Wireshark."""
    return np.where(from_header == 0, captured, from_header)


def _ipv4(buf: np.ndarray, c: Cursor, stats: Counter[str]) -> Ip:
    fits = c.l3 + IPV4_MIN_HLEN <= c.end
    h = gather(buf, c.l3, IPV4_MIN_HLEN, fits)
    ihl = (h[:, 0] & 0x0F).astype(np.int64) * 4
    total = _presumed_length(be16(h, 2).astype(np.int64), c.end - c.l3)
    bad = fits & (((h[:, 0] >> 4) != 4) | (ihl < IPV4_MIN_HLEN) | (total < ihl))
    keep = drop(stats, ~fits | (~bad & (c.l3 + ihl > c.end)), bad)
    c, h, ihl, total = c.take(keep), h[keep], ihl[keep], total[keep]
    addrs = np.empty((len(c), 2, 16), np.uint8)
    addrs[:, :, :12] = _V4_MAPPED_PREFIX
    addrs[:, :, 12:] = h[:, 12:20].reshape(-1, 2, 4)
    addrs = addrs.view("V16")[:, :, 0]
    flags = be16(h, 6)
    frag_off = (flags & IPV4_OFFSET).astype(np.int64) * 8
    more = (flags & IPV4_MF) != 0
    return Ip(
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
        ident=be16(h, 4).astype(np.uint32),
    )


def _ipv6(buf: np.ndarray, c: Cursor, stats: Counter[str]) -> Ip:
    fits = c.l3 + IPV6_HLEN <= c.end
    h = gather(buf, c.l3, IPV6_HLEN, fits)
    keep = drop(stats, ~fits, fits & ((h[:, 0] >> 4) != 6))
    c, h = c.take(keep), h[keep]
    addrs = np.ascontiguousarray(h[:, 8:40]).view("V16")
    captured = np.where(h[:, IPV6_NH] == IPV6_NONXT, 0, c.end - c.l3 - IPV6_HLEN)
    ip_bytes = IPV6_HLEN + _presumed_length(be16(h, 4).astype(np.int64), captured)
    l4_end = np.minimum(c.l3 + ip_bytes, c.end)
    first_nh = h[:, IPV6_NH].copy()
    nh, l4, frag_off, more, ident, alive = _ipv6_extensions(buf, first_nh, c.l3 + IPV6_HLEN, l4_end)
    cut = ~alive & (l4_end < c.l3 + ip_bytes)
    keep = drop(stats, cut, ~alive)
    l4_end = np.where(nh == IPV6_NONXT, l4, l4_end)
    ip = Ip(
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
        e = gather(buf, pos[i], 8)
        is_frag = nh[i] == IPV6_FRAGMENT
        field = be16(e, 2)
        frag_off[i] = np.where(is_frag, field & IPV6_FRAG_OFFSET, 0)
        more[i] = is_frag & ((field & IPV6_FRAG_M) != 0)
        ident[i] = np.where(is_frag, be32(e, 4), 0)
        nh[i] = e[:, 0]
        pos[i] += np.where(is_frag, IPV6_FRAG_HLEN, (e[:, 1].astype(np.int64) + 1) * 8)
    else:
        alive &= ~walkable()  # chain longer than MAX_IPV6_EXT
    return nh, pos, frag_off, more, ident, alive & (pos <= end)  # the last header's length may lie


def ip_layer(buf: np.ndarray, c: Cursor, stats: Counter[str]) -> list[Ip]:
    """One `Ip` per IP version present; they go through the later stages separately, because
    concatenating them would cost a full copy."""
    v4 = c.ver == 4
    if v4.all():
        return [_ipv4(buf, c, stats)]
    if not v4.any():
        return [_ipv6(buf, c, stats)]
    return [_ipv4(buf, c.take(v4), stats), _ipv6(buf, c.take(~v4), stats)]
