"""TCP and UDP headers -> ports, flags, sequence numbers and where the payload starts."""

from __future__ import annotations

from collections import Counter

import numpy as np

from vpnid.features.decode.columns import Ip, Rows, be16, be32, gather
from vpnid.features.decode.ip import drop
from vpnid.features.packets import IPPROTO_TCP, IPPROTO_UDP

TCP_MIN_HLEN = 20  # RFC 9293 section 3.1
UDP_HLEN = 8  # RFC 768


def transport_layer(buf: np.ndarray, ip: Ip, stats: Counter[str]) -> Rows:
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
        h = gather(buf, l4, TCP_MIN_HLEN, fits)
        doff = (h[:, 12] >> 4).astype(np.int64) * 4
        fits &= l4 + doff <= l4_end
        cut[tcp], bad[tcp] = ~fits & ~captured_all[tcp], ~fits | (doff < TCP_MIN_HLEN)
        sport[tcp], dport[tcp], seq[tcp], flags[tcp] = be16(h, 0), be16(h, 2), be32(h, 4), h[:, 13]
        poff[tcp] = l4 + doff

    udp = np.flatnonzero(ip.proto == IPPROTO_UDP)
    if udp.size:
        l4 = ip.l4[udp]
        fits = l4 + UDP_HLEN <= ip.l4_end[udp]
        h = gather(buf, l4, UDP_HLEN, fits)
        cut[udp], bad[udp] = ~fits & ~captured_all[udp], ~fits
        sport[udp], dport[udp] = be16(h, 0), be16(h, 2)
        ulen = be16(h, 4).astype(np.int64)  # 0 in IPv6 jumbograms: the IP length rules then
        poff[udp] = l4 + UDP_HLEN
        pend[udp] = np.where(ulen >= UDP_HLEN, np.minimum(pend[udp], l4 + ulen), pend[udp])

    rows = Rows(
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
    return rows.take(drop(stats, cut, bad))
