"""Tunnel payloads with the real wire layout, for end-to-end tests through captures and the CLI."""

from __future__ import annotations

import os
import struct


def wireguard_session(n_data: int = 4, seed: int = 1) -> list[tuple[int, bytes]]:
    """(direction, UDP payload) of a WireGuard handshake then transport data (whitepaper section 5.4)."""
    rnd = lambda n: os.urandom(n)  # noqa: E731 - contents are encrypted, only sizes and indices matter
    i_idx, r_idx = 0x11110000 + seed, 0x22220000 + seed
    init = struct.pack("<B3xI", 1, i_idx) + rnd(32 + 48 + 28) + rnd(32)  # 148 B
    resp = struct.pack("<B3xII", 2, r_idx, i_idx) + rnd(32 + 16) + rnd(32)  # 92 B
    out = [(0, init), (1, resp)]
    for n in range(n_data):
        out.append((0, struct.pack("<B3xIQ", 4, r_idx, n) + rnd(16 * (n % 4 + 1) + 16)))
        out.append((1, struct.pack("<B3xIQ", 4, i_idx, n) + rnd(16 * (n % 3 + 1) + 16)))
    return out
