"""The one assembly point: capture files in, labelled flow records out.

The CLI, evaluation and (later) batch, live and trial runs all call `classify_capture`; none of them
re-implements a step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from classifier.labels import label
from classifier.records import FlowRecord, base_record
from features.dissectors import registry
from features.capture import read_chunks
from features.decode import Reassembler, decode
from features.flows import Flow, FlowTable, FlowTableConfig
from features.packets import PacketTable

Warn = Callable[[str], None]


@dataclass(slots=True)
class Options:
    idle_timeout: float = 120.0
    active_timeout: float = 1800.0
    max_flows: int = 1_000_000
    chunk_frames: int = 262_144


@dataclass(slots=True)
class CaptureStats:
    """What happened to one capture's packets, for the run summary."""

    frames: int = 0
    packets: int = 0  # decoded IP packets
    flows: int = 0
    evicted: int = 0
    counters: dict[str, int] = field(default_factory=dict)


def _tables(path: str, opts: Options, stats: CaptureStats, warn: Warn) -> Iterator[PacketTable]:
    reassembler = Reassembler()
    for chunk in read_chunks(path, chunk_frames=opts.chunk_frames, warn=warn):
        stats.frames += len(chunk)
        table = decode(chunk, reassembler)
        for k, v in table.stats.items():
            stats.counters[k] = stats.counters.get(k, 0) + int(v)
        yield table
    for k, v in stats.counters.items():
        if k.startswith("linktype_") and v:
            warn(f"{path}: {v} frames with unsupported link type {k.removeprefix('linktype_')} skipped")


def classify_capture(path: str, opts: Options | None = None, *, warn: Warn = lambda _m: None,
                     stats: CaptureStats | None = None) -> Iterator[FlowRecord]:
    """Labelled flow records of one capture, yielded as flows end. Raises CaptureError if the file
    cannot be read as a capture."""
    opts = opts or Options()
    stats = stats if stats is not None else CaptureStats()
    table = FlowTable(registry.ALL, FlowTableConfig(opts.idle_timeout, opts.active_timeout, opts.max_flows))

    def records(flows: list[Flow]) -> Iterator[FlowRecord]:
        for flow in flows:
            stats.flows += 1
            yield FlowRecord(**base_record(path, flow), **label(flow))

    for t in _tables(path, opts, stats, warn):
        table.add(t)
        yield from records(table.drain())
    yield from records(table.close())
    stats.packets = table.stats["packets"]
    stats.evicted = table.stats["evicted"]
    if stats.evicted:
        warn(f"{path}: flow table full ({opts.max_flows} flows): {stats.evicted} flows ended early (evicted)")
