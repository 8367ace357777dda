"""Columnar packet containers passed between the capture reader, the decoder and the flow table.

Nothing here holds one Python object per packet: a chunk is one byte buffer plus numpy columns that
index into it. Readers fill `RawChunk`; the decoder turns it into a `PacketTable`; the flow table
consumes `PacketTable`s. Each stage only ever looks at the columns of the stage before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# LINKTYPE_* values (tcpdump.org link-layer header types) the decoder understands.
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6 (DLT_RAW on most platforms is 12 or 14; readers map those here)
LINKTYPE_LOOP = 108  # OpenBSD loopback: 4-byte address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# DLT values that mean "raw IP" in some pcap writers; readers normalise them to LINKTYPE_RAW.
RAW_IP_DLTS = frozenset({12, 14, LINKTYPE_RAW})


class CaptureError(Exception):
    """A capture file cannot be read at all; the message names the file and says why, in one line."""


@dataclass(slots=True)
class RawChunk:
    """Up to a few hundred thousand captured frames of one file, as offsets into one buffer.

    `data` is a uint8 array; frame i is `data[offset[i] : offset[i] + caplen[i]]`.
    """

    data: np.ndarray  # uint8
    offset: np.ndarray  # int64
    caplen: np.ndarray  # int32, bytes captured
    wirelen: np.ndarray  # int32, bytes on the wire
    ts_ns: np.ndarray  # int64, epoch nanoseconds
    linktype: np.ndarray  # int32, LINKTYPE_* of each frame (pcapng interfaces may differ)
    frame: np.ndarray  # int64, 1-based frame number within the file

    def __len__(self) -> int:
        return int(self.offset.shape[0])

    @classmethod
    def empty(cls) -> RawChunk:
        z64 = np.zeros(0, np.int64)
        z32 = np.zeros(0, np.int32)
        return cls(np.zeros(0, np.uint8), z64, z32, z32.copy(), z64.copy(), z32.copy(), z64.copy())


# Transport protocol numbers (IANA "Assigned Internet Protocol Numbers").
IPPROTO_ICMP = 1
IPPROTO_IPIP = 4
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58

TRANSPORT_NAMES = {
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_ESP: "esp",
    IPPROTO_AH: "ah",
    IPPROTO_GRE: "gre",
    IPPROTO_ICMP: "icmp",
    IPPROTO_ICMPV6: "icmpv6",
}

# Transports whose flows are keyed by ports; every other protocol is keyed by the address pair only.
PORTED = frozenset({IPPROTO_TCP, IPPROTO_UDP})

# TCP flag bits (RFC 9293 section 3.1).
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10


def transport_name(proto: int) -> str:
    """Lower-case transport name used in flow records: the IANA keyword, else the number."""
    return TRANSPORT_NAMES.get(proto, str(proto))


@dataclass(slots=True)
class PacketTable:
    """Decoded IP packets of one chunk: one row per packet that carried IP (after reassembly and
    decapsulation), in capture order.

    Addresses are 16-byte values (`V16`): IPv6 as is, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so both
    families share one column and one flow key. `payload_off`/`payload_len` locate the transport payload
    (for ESP and AH: the ESP/AH header onwards) in `data` followed by `extra`, as if the two were one
    buffer; `payload_len` counts captured bytes only. (Reassembled datagrams go to `extra` rather than
    being appended to the chunk's data: that would copy the whole chunk, ~35 MB, for a few datagrams.)
    """

    data: np.ndarray  # uint8 buffer: the chunk's data
    frame: np.ndarray  # int64 file frame number (of the last fragment, for reassembled datagrams)
    ts_ns: np.ndarray  # int64
    src: np.ndarray  # V16
    dst: np.ndarray  # V16
    proto: np.ndarray  # uint8, innermost transport protocol
    sport: np.ndarray  # uint16 (0 where the transport has no ports)
    dport: np.ndarray  # uint16
    ip_bytes: np.ndarray  # int64, the innermost IP packet's length from its header
    payload_off: np.ndarray  # int64
    payload_len: np.ndarray  # int32
    tcp_flags: np.ndarray  # uint8 (0 for non-TCP)
    tcp_seq: np.ndarray  # uint32 (0 for non-TCP)
    encap: np.ndarray  # uint8, number of tunnel layers removed (GRE, GTP-U, IP-in-IP)
    stats: dict[str, int] = field(default_factory=dict)  # counters: non_ip, truncated, fragments_*, ...
    extra: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # reassembled datagrams

    def __len__(self) -> int:
        return int(self.frame.shape[0])

    def payload(self, i: int) -> bytes:
        """Captured transport payload of row i (used only on the few packets dissectors look at)."""
        start, n = int(self.payload_off[i]), self.data.size
        if start >= n:  # a reassembled datagram's
            return self.extra[start - n : start - n + int(self.payload_len[i])].tobytes()
        return self.data[start : start + int(self.payload_len[i])].tobytes()

    def byte_count(self) -> int:
        """Bytes in `data` and `extra` together."""
        return self.data.size + self.extra.size


_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"  # the leading bytes of an IPv4-mapped IPv6 address


def ipv4_mapped(addr4: bytes) -> bytes:
    """16-byte form of an IPv4 address, as stored in `PacketTable.src`/`dst`."""
    return _V4_MAPPED + addr4


def address_text(addr16: bytes) -> str:
    """Printable address: dotted quad for IPv4-mapped values, compressed IPv6 otherwise."""
    if addr16[:12] == _V4_MAPPED:
        return "%d.%d.%d.%d" % tuple(addr16[12:])  # as str(ipaddress.IPv4Address(...)), without building one
    import ipaddress

    return str(ipaddress.IPv6Address(addr16))

