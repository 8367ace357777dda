"""Build `PacketTable`s directly (no capture file, no decoder) for flow-table tests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from vpnid.features.packets import PacketTable, ipv4_mapped


@dataclass
class P:
    ts: float
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    proto: int = 17
    flags: int = 0
    payload: bytes = b""
    seq: int = 0


def addr16(text: str) -> bytes:
    ip = ipaddress.ip_address(text)
    return ipv4_mapped(ip.packed) if ip.version == 4 else ip.packed


def table(pkts: list[P], first_frame: int = 1) -> PacketTable:
    data = b"".join(p.payload for p in pkts)
    offs = np.cumsum([0] + [len(p.payload) for p in pkts])[:-1].astype(np.int64)
    n = len(pkts)
    return PacketTable(
        data=np.frombuffer(data, np.uint8).copy() if data else np.zeros(0, np.uint8),
        frame=np.arange(first_frame, first_frame + n, dtype=np.int64),
        ts_ns=np.array([round(p.ts * 1e9) for p in pkts], np.int64),
        src=np.array([addr16(p.src) for p in pkts], "V16"),
        dst=np.array([addr16(p.dst) for p in pkts], "V16"),
        proto=np.array([p.proto for p in pkts], np.uint8),
        sport=np.array([p.sport for p in pkts], np.uint16),
        dport=np.array([p.dport for p in pkts], np.uint16),
        ip_bytes=np.array([28 + len(p.payload) for p in pkts], np.int64),
        payload_off=offs,
        payload_len=np.array([len(p.payload) for p in pkts], np.int32),
        tcp_flags=np.array([p.flags for p in pkts], np.uint8),
        tcp_seq=np.array([p.seq for p in pkts], np.uint32),
        encap=np.zeros(n, np.uint8),
    )
