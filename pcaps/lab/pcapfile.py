"""Reading, trimming and checking classic pcap files, byte-exactly.

Trimming copies the original record headers and frames untouched (no timestamp
rounding), so a committed capture is a true subset of what tcpdump wrote.
"""
from __future__ import annotations

import hashlib
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt

_LE_MAGIC = {b"\xd4\xc3\xb2\xa1": 1e6, b"\x4d\x3c\xb2\xa1": 1e9}
_BE_MAGIC = {b"\xa1\xb2\xc3\xd4": 1e6, b"\xa1\xb2\x3c\x4d": 1e9}
OPENVPN_CONTROL_OPCODES = {1, 2, 3, 4, 5, 7, 8, 10, 11}  # everything but P_DATA_V1/V2
SMALL_UDP = 120  # keepalives, ACKs, WireGuard/IKE/NAT-T control all fit


@dataclass(frozen=True)
class Record:
    ts: float
    raw: bytes  # 16-byte record header + frame, as on disk
    frame: bytes


def read(path: Path) -> tuple[bytes, list[Record]]:
    """Global header and records of a classic (not pcapng) capture."""
    data = path.read_bytes()
    head, magic = data[:24], data[:4]
    if magic in _LE_MAGIC:
        endian, scale = "<", _LE_MAGIC[magic]
    elif magic in _BE_MAGIC:
        endian, scale = ">", _BE_MAGIC[magic]
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from(endian + "IIII", data, off)
        out.append(Record(sec + frac / scale, data[off:off + 16 + incl], data[off + 16:off + 16 + incl]))
        off += 16 + incl
    return head, out


def write(path: Path, head: bytes, records: list[Record]) -> None:
    path.write_bytes(head + b"".join(r.raw for r in records))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary(path: Path) -> tuple[int, float]:
    """(packets, duration in seconds)."""
    _, recs = read(path)
    return len(recs), (recs[-1].ts - recs[0].ts) if recs else 0.0


def is_control(frame: bytes) -> bool:
    """Handshakes, rekeys, keepalives and connection edges: what a trim must never drop."""
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    if not isinstance(ip, dpkt.ip.IP):
        return True  # ARP and the like: rare and cheap
    if ip.mf or ip.offset:
        return True  # IP fragments only come from oversized IKE messages here
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP):
        return bool(l4.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN | dpkt.tcp.TH_RST))
    if not isinstance(l4, dpkt.udp.UDP):
        return True
    p = bytes(l4.data)
    if 500 in (l4.sport, l4.dport) or len(p) < SMALL_UDP or not p:
        return True
    if 4500 in (l4.sport, l4.dport):
        return p[:4] == b"\0\0\0\0"  # IKE behind the non-ESP marker (incl. RFC 7383 fragments)
    wireguard_handshake = p[0] in (1, 2, 3) and p[1:4] == b"\0\0\0"
    dtls_handshake = p[0] in (20, 21, 22) and p[1] == 0xFE
    quic_long_header = bool(p[0] & 0x80) and p[1:5] == b"\0\0\0\1"
    return wireguard_handshake or dtls_handshake or quic_long_header or p[0] >> 3 in OPENVPN_CONTROL_OPCODES


def trim(src: Path, dst: Path, head_packets: int, window_s: float, period_s: float) -> None:
    """Keep the first ``head_packets``, then every control packet plus ``window_s`` out of every ``period_s``."""
    head, recs = read(src)
    t0 = recs[0].ts if recs else 0.0
    keep = [r for i, r in enumerate(recs)
            if i < head_packets or (r.ts - t0) % period_s < window_s or is_control(r.frame)]
    write(dst, head, keep)


def addresses(path: Path) -> set[str]:
    """Every network address in the capture; non-IPv4/ARP frames are reported by ethertype."""
    seen: set[str] = set()
    for rec in read(path)[1]:
        eth = dpkt.ethernet.Ethernet(rec.frame)
        if isinstance(eth.data, dpkt.ip.IP):
            seen |= {socket.inet_ntoa(eth.data.src), socket.inet_ntoa(eth.data.dst)}
        elif isinstance(eth.data, dpkt.arp.ARP):
            seen |= {socket.inet_ntoa(eth.data.spa), socket.inet_ntoa(eth.data.tpa)}
        elif isinstance(eth.data, dpkt.ip6.IP6):
            seen |= {socket.inet_ntop(socket.AF_INET6, eth.data.src), socket.inet_ntop(socket.AF_INET6, eth.data.dst)}
        else:
            seen.add(f"ethertype 0x{eth.type:04x}")
    return seen
