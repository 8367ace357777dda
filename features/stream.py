"""Capture file -> ended flows: the read/decode/flow-table loop that classification and feature
extraction share, so both see exactly the same flows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from features.capture import read_chunks
from features.decode import Reassembler, decode
from features.flows import Flow, FlowTable
from features.packets import PacketTable

Warn = Callable[[str], None]


def packet_tables(path: str, chunk_frames: int, counters: dict[str, int], warn: Warn,
                  eager: bool = False) -> Iterator[PacketTable]:
    """Decoded chunks of one capture; frame and decoder counters are added to `counters` (`eager`: see
    `read_chunks`)."""
    reassembler = Reassembler()
    for chunk in read_chunks(path, chunk_frames=chunk_frames, warn=warn, eager=eager):
        counters["frames"] = counters.get("frames", 0) + len(chunk)
        table = decode(chunk, reassembler)
        for k, v in table.stats.items():
            counters[k] = counters.get(k, 0) + int(v)
        yield table
    for k, v in counters.items():
        if k.startswith("linktype_") and v:
            warn(f"{path}: {v} frames with unsupported link type {k.removeprefix('linktype_')} skipped")


def flows_of(path: str, table: FlowTable, chunk_frames: int, counters: dict[str, int],
             warn: Warn, *, close: bool = True, eager: bool = False) -> Iterator[list[Flow]]:
    """Batches of ended flows of one capture, one per chunk, in the order the flow table ends them.
    `close=False` leaves the flows still open at the end in `table`, for the next rotated file."""
    for t in packet_tables(path, chunk_frames, counters, warn, eager):
        table.add(t)
        yield table.drain()
    if close:
        yield table.close()
