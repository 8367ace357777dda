"""Build RawChunks from frame bytes the tests make themselves (with scapy), without a capture file."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vpnid.features.packets import LINKTYPE_ETHERNET, RawChunk

NS = 1_000_000_000


def chunk(
    frames: Sequence[bytes],
    linktype: int | Sequence[int] = LINKTYPE_ETHERNET,
    *,
    caplen: Sequence[int | None] | None = None,
    ts_s: Sequence[float] | None = None,
    first_frame: int = 1,
) -> RawChunk:
    """Frames back to back in one buffer. `caplen[i]` (if not None) cuts frame i like a snaplen would;
    timestamps default to one second apart."""
    n = len(frames)
    wire = np.array([len(f) for f in frames], np.int32)
    cuts = [None] * n if caplen is None else caplen
    cap = np.array([w if c is None else c for w, c in zip(wire.tolist(), cuts)], np.int32)
    data = b"".join(f[:c] for f, c in zip(frames, cap.tolist()))
    offset = np.cumsum(cap, dtype=np.int64) - cap
    ts = np.arange(n, dtype=np.float64) if ts_s is None else np.array(ts_s, np.float64)
    links = np.full(n, linktype, np.int32) if isinstance(linktype, int) else np.array(linktype, np.int32)
    return RawChunk(
        data=np.frombuffer(data, np.uint8).copy(),
        offset=offset,
        caplen=cap,
        wirelen=wire,
        ts_ns=(ts * NS).astype(np.int64),
        linktype=links,
        frame=np.arange(first_frame, first_frame + n, dtype=np.int64),
    )
