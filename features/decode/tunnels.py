"""Tunnel decapsulation (IP-in-IP, GRE, PPTP's enhanced GRE with clear PPP, GTP-U, VXLAN): the inner
packet is decoded again, at most MAX_ENCAP layers deep."""

from __future__ import annotations

from collections import Counter

import numpy as np

from vpnid.features.decode.columns import Cursor, Rows, be16, gather, u8_at
from vpnid.features.decode.ip import IPV4_MIN_HLEN, IPV6_HLEN
from vpnid.features.decode.link import ETH_P_TEB, PPP_IP, PPP_IPV6, ethernet, ethertype_chain
from vpnid.features.packets import IPPROTO_GRE, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_UDP

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

# A tunnel handler returns, for the rows it recognises, (row indices, inner IP offset, inner version).
_Inner = tuple[np.ndarray, np.ndarray, np.ndarray]


def _ip_in_ip(buf: np.ndarray, r: Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    i = np.flatnonzero(room & ((r.proto == IPPROTO_IPIP) | (r.proto == IPPROTO_IPV6)))
    return i, r.payload_off[i], np.where(r.proto[i] == IPPROTO_IPIP, 4, 6).astype(np.int8)


def _gre(buf: np.ndarray, r: Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    """GRE version 0 with optional checksum, key and sequence number; version 1 (PPTP) is left alone."""
    i = np.flatnonzero(room & (r.proto == IPPROTO_GRE) & (r.payload_len >= GRE_HLEN))
    h = gather(buf, r.payload_off[i], GRE_HLEN)
    flags, ptype = be16(h, 0), be16(h, 2)
    v0 = (flags & GRE_MUST_BE_ZERO) == 0
    i, flags, ptype = i[v0], flags[v0], ptype[v0]
    options = sum(((flags & bit) != 0).astype(np.int64) for bit in (GRE_C, GRE_K, GRE_S))
    pos = r.payload_off[i] + GRE_HLEN + 4 * options
    l3, ver, _ = ethertype_chain(buf, ptype, pos, end[i])
    teb = ptype == ETH_P_TEB
    if teb.any():
        l3[teb], ver[teb], _ = ethernet(buf, pos[teb], end[i][teb])
    return i, l3, ver


def _pptp_gre(buf: np.ndarray, r: Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    """PPTP data (enhanced GRE) whose PPP frame carries clear IPv4/IPv6, with or without the PPP
    address/control bytes and with a 1- or 2-byte protocol field (RFC 1661 section 6.5)."""
    i = np.flatnonzero(room & (r.proto == IPPROTO_GRE) & (r.payload_len >= GRE_V1_HLEN + 2))
    h = gather(buf, r.payload_off[i], GRE_HLEN)
    flags, ptype = be16(h, 0), be16(h, 2)
    ok = ((flags & GRE_VERSION) == GRE_V1) & ((flags & GRE_K) != 0) & (ptype == GRE_PPP)
    i, flags = i[ok], flags[ok]
    pos = r.payload_off[i] + GRE_V1_HLEN + 4 * ((flags & GRE_S) != 0) + 4 * ((flags & GRE_A) != 0)
    e = end[i]
    ac = be16(gather(buf, pos, 2, pos + 2 <= e), 0) == PPP_ADDRESS_CONTROL
    pos = pos + 2 * ac
    first = u8_at(buf, pos, pos < e).astype(np.int64)
    short = (first & 1) == 1  # an odd first byte is a compressed 1-byte protocol field
    proto = np.where(short, first, (first << 8) | u8_at(buf, pos + 1, pos + 1 < e))
    pos = pos + np.where(short, 1, 2)
    ver = np.select([(proto & 0xFF) == PPP_IP, (proto & 0xFF) == PPP_IPV6], [4, 6], 0)
    ver = np.where((proto == PPP_IP) | (proto == PPP_IPV6) | short, ver, 0).astype(np.int8)
    return i, pos, ver


def _gtpu(buf: np.ndarray, r: Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    """GTP-U G-PDU: skip the optional fields and the extension header chain; the version nibble of
    what follows says IPv4 or IPv6."""
    port = (r.sport == GTPU_PORT) | (r.dport == GTPU_PORT)
    i = np.flatnonzero(room & port & (r.proto == IPPROTO_UDP) & (r.payload_len >= GTPU_HLEN + GTPU_OPT_HLEN))
    h = gather(buf, r.payload_off[i], GTPU_HLEN + GTPU_OPT_HLEN)
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
        units = u8_at(buf, pos[j], has_len).astype(np.int64)
        ok = has_len & (units > 0) & (pos[j] + 4 * units <= e_end[j])
        nxt[j[~ok]] = -1  # malformed: not decapsulated
        j, units = j[ok], units[ok]
        pos[j] += 4 * units
        nxt[j] = u8_at(buf, pos[j] - 1)
    has_ip = (nxt == 0) & (pos < e_end)
    nibble = u8_at(buf, pos, has_ip) >> 4
    ver = np.where(has_ip & ((nibble == 4) | (nibble == 6)), nibble, 0).astype(np.int8)
    return i, pos, ver


def _vxlan(buf: np.ndarray, r: Rows, end: np.ndarray, room: np.ndarray) -> _Inner:
    vxlan = (r.proto == IPPROTO_UDP) & (r.dport == VXLAN_PORT) & (r.payload_len >= VXLAN_HLEN)
    i = np.flatnonzero(room & vxlan)
    i = i[(u8_at(buf, r.payload_off[i]) & VXLAN_I) != 0]
    l3, ver, _ = ethernet(buf, r.payload_off[i] + VXLAN_HLEN, end[i])
    return i, l3, ver


_TUNNELS = (_ip_in_ip, _gre, _pptp_gre, _gtpu, _vxlan)


def decapsulate(buf: np.ndarray, r: Rows, stats: Counter[str]) -> tuple[np.ndarray, Cursor]:
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
    inner = has_header & ((u8_at(buf, l3, has_header) >> 4) == ver)
    stats["decapsulated"] += int(np.count_nonzero(inner))
    i = np.flatnonzero(inner)
    return ~inner, Cursor(r.pkt[i], l3[i], end[i], ver[i], r.encap[i] + 1)
