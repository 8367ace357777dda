"""Byte-exact builders for pcap and pcapng files, so tests control every header field (byte order,
resolution, block layout, damage) instead of relying on what a writer library chooses."""

from __future__ import annotations

import struct

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 1
PB_TYPE = 2
SPB_TYPE = 3
NRB_TYPE = 4
ISB_TYPE = 5
EPB_TYPE = 6
CUSTOM_TYPE = 0x00000BAD
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14


def pcap_header(order: str = "<", magic: int = PCAP_MAGIC_US, linktype: int = 1,
                snaplen: int = 65535) -> bytes:
    return struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(data: bytes, sec: int, frac: int, order: str = "<", wirelen: int | None = None) -> bytes:
    wirelen = len(data) if wirelen is None else wirelen
    return struct.pack(order + "IIII", sec, frac, len(data), wirelen) + data


def pcap_file(frames: list[tuple[bytes, int, int]], order: str = "<", magic: int = PCAP_MAGIC_US,
              linktype: int = 1) -> bytes:
    """A classic pcap of (data, seconds, fraction) frames."""
    return pcap_header(order, magic, linktype) + b"".join(pcap_record(d, s, f, order) for d, s, f in frames)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def block(btype: int, body: bytes, order: str = "<") -> bytes:
    """A pcapng block: type, total length, body padded to 4 bytes, total length again."""
    body = _pad4(body)
    length = 12 + len(body)
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def options(opts: list[tuple[int, bytes]], order: str = "<") -> bytes:
    """An option list ending in opt_endofopt."""
    out = b"".join(struct.pack(order + "HH", code, len(value)) + _pad4(value) for code, value in opts)
    return out + struct.pack(order + "HH", 0, 0)


def shb(order: str = "<") -> bytes:
    return block(SHB_TYPE, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order)


def idb(linktype: int, order: str = "<", tsresol: int | None = None, tsoffset: int | None = None,
        snaplen: int = 0) -> bytes:
    opts = []
    if tsresol is not None:
        opts.append((OPT_IF_TSRESOL, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((OPT_IF_TSOFFSET, struct.pack(order + "q", tsoffset)))
    body = struct.pack(order + "HHI", linktype, 0, snaplen) + (options(opts, order) if opts else b"")
    return block(IDB_TYPE, body, order)


def epb(iface: int, ts: int, data: bytes, order: str = "<", wirelen: int | None = None) -> bytes:
    wirelen = len(data) if wirelen is None else wirelen
    head = struct.pack(order + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), wirelen)
    return block(EPB_TYPE, head + data, order)


def pb(iface: int, ts: int, data: bytes, order: str = "<") -> bytes:
    """The obsolete Packet Block: 16-bit interface id, 16-bit drops count."""
    head = struct.pack(order + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return block(PB_TYPE, head + data, order)


def spb(data: bytes, order: str = "<") -> bytes:
    return block(SPB_TYPE, struct.pack(order + "I", len(data)) + data, order)
