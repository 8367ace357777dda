"""Large synthetic captures written straight from numpy (millions of packets in seconds), for the scale
and integrity tests: one raw IP packet template repeated, with per-packet rewrites."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

T0 = 1_700_000_000
BLOCK = 1 << 20  # packets generated per write

RECORD = np.dtype([("sec", "<u4"), ("usec", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4"), ("ip", "u1", (36,))])
# Raw IPv4 (link type 101), 198.18.0.1 -> 198.18.0.2, total length 36: an ICMP echo request (8-byte header,
# 8 bytes of data), or a UDP datagram 40000 -> 51820 with 8 bytes of payload.
ICMP_ECHO = bytes.fromhex("45000024000000004001" "0000" "c6120001c6120002" "0800f7ff00000000" "0000000000000000")
UDP_8 = bytes.fromhex("45000024000000004011" "0000" "c6120001c6120002" "9c40ca6c00100000" "0102030405060708")


def write_capture(out: BinaryIO, packets: int, template: bytes, per_second: int,
                  vary: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
    """A pcap of `packets` copies of one raw IP packet, `per_second` of them a second; `vary(ip, index)`
    may rewrite header bytes per packet (e.g. a scan's source address)."""
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
    for start in range(0, packets, BLOCK):
        i = np.arange(start, min(start + BLOCK, packets), dtype=np.int64)
        rec = np.zeros(len(i), RECORD)
        rec["sec"], rec["usec"] = T0 + i // per_second, i % per_second * (1_000_000 // per_second)
        rec["caplen"] = rec["wirelen"] = len(template)
        rec["ip"] = np.frombuffer(template, np.uint8)
        if vary is not None:
            vary(rec["ip"], i)
        out.write(rec.tobytes())


def sweep_source(ip: np.ndarray, i: np.ndarray) -> None:
    """Every packet from another address of 10.0.0.0/8 onwards: one flow per packet."""
    src = (10 << 24) + i
    for k in range(4):
        ip[:, 12 + k] = src >> (8 * (3 - k)) & 0xFF
