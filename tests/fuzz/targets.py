"""Fuzz targets: one function per stage, taking the fuzzer's bytes and raising only on a bug.

Each target turns its bytes into the stage's input with a small fixed encoding (`encode_*` build the
same layout, so seeds come from real traffic: see seeds.py), runs the stage and checks the invariants
the next stage relies on. An exception, a failed check, a hang (libFuzzer -timeout) or a memory blow-up
(-rss_limit_mb) is a finding; the one documented input error, `CaptureError`, is not.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import struct
from collections.abc import Callable, Iterator

import numpy as np

from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.capture import read_chunks
from vpnid.features.capture import sources as capture
from vpnid.features.decode import MAX_ENCAP, Reassembler, decode
from vpnid.features.dissectors import catalog
from vpnid.features.dissectors.base import Dissector, FlowPacket, State
from vpnid.features.flows import Flow, FlowTable, FlowTableConfig
from vpnid.features.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    PORTED,
    CaptureError,
    PacketTable,
    RawChunk,
    ipv4_mapped,
)

NS = 1_000_000_000


class Finding(AssertionError):
    """An invariant the pipeline relies on does not hold."""


def expect(ok: bool, what: str, *args: object) -> None:
    """Raise a Finding unless ok; `what` is formatted with `args` only then (the checks run millions of
    times)."""
    if not ok:
        raise Finding(what.format(*args))


# --- capture reader -----------------------------------------------------------------------------------

CHUNK_FRAMES = 3  # tiny chunks, so that regrouping pieces into chunks is exercised on every input
SMALL_READ = 61  # an odd block size: records and gzip output straddle block ends at every offset


@functools.cache
def _memfd() -> int:
    """One anonymous in-memory file per process: a regular file (so the reader memory-maps it, as it does
    real captures) without touching the disk on every execution."""
    return os.memfd_create("vpnid-fuzz")


def memfile(data: bytes) -> str:
    """A path whose file holds exactly `data`."""
    fd = _memfd()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return f"/proc/self/fd/{fd}"


Frames = list[tuple[int, int, int, int, bytes]]  # frame number, ts_ns, link type, wire length, bytes


def read_frames(path: str) -> tuple[Frames, list[str]]:
    """Every frame `read_chunks` yields, checked chunk by chunk, and the warnings it gave."""
    warnings: list[str] = []
    frames: Frames = []
    for chunk in read_chunks(path, chunk_frames=CHUNK_FRAMES, warn=warnings.append):
        check_chunk(chunk, frames[-1][0] if frames else 0)
        for i in range(len(chunk)):
            off, cap = int(chunk.offset[i]), int(chunk.caplen[i])
            frames.append((int(chunk.frame[i]), int(chunk.ts_ns[i]), int(chunk.linktype[i]),
                           int(chunk.wirelen[i]), chunk.data[off:off + cap].tobytes()))
    return frames, warnings


def check_chunk(chunk: RawChunk, last_frame: int) -> None:
    """What the decoder assumes of a chunk: aligned columns, every frame inside `data`, frame numbers
    increasing across chunks, at most `CHUNK_FRAMES` frames."""
    n = len(chunk)
    expect(1 <= n <= CHUNK_FRAMES, "chunk of {} frames", n)
    for name in ("caplen", "wirelen", "ts_ns", "linktype", "frame"):
        expect(len(getattr(chunk, name)) == n, "column {} has {} rows, not {}", name, len(getattr(chunk, name)), n)
    expect(chunk.data.dtype == np.uint8, "data is {}", chunk.data.dtype)
    expect(bool((chunk.offset >= 0).all() and (chunk.caplen >= 0).all()), "negative offset or caplen")
    expect(bool((chunk.offset + chunk.caplen <= chunk.data.size).all()), "frame runs past the chunk's data")
    numbers = np.r_[last_frame, chunk.frame]
    expect(bool((np.diff(numbers) > 0).all()), "frame numbers not increasing: {}", numbers)


def capture_file(data: bytes) -> None:
    """The bytes as a capture file on disk (memory-mapped): CaptureError or frames, at most one warning."""
    try:
        _, warnings = read_frames(memfile(data))
    except CaptureError:
        return
    expect(len(warnings) <= 1, "{} warnings: {}", len(warnings), warnings)


@contextlib.contextmanager
def small_blocks() -> Iterator[None]:
    saved, capture.READ_BYTES = capture.READ_BYTES, SMALL_READ
    try:
        yield
    finally:
        capture.READ_BYTES = saved


def capture_gzip(data: bytes) -> None:
    """The bytes gzip-compressed, read as a stream in small blocks: exactly the frames, warnings and error
    of the same bytes read memory-mapped (the two paths share no buffering). Bytes that are themselves
    gzip (corrupt, mostly) take the stream path in `capture_file` already."""
    if not data or data.startswith(capture.GZIP_MAGIC):
        return  # an empty file is not an empty gzip member; gzip inside gzip is unwrapped once only
    outcomes = []
    for blob in (data, gzip.compress(data, compresslevel=1, mtime=0)):
        with small_blocks():
            try:
                outcomes.append(read_frames(memfile(blob)))
            except CaptureError as e:
                outcomes.append(str(e))
    if outcomes[0] != outcomes[1]:
        raise Finding(f"mapped read {_brief(outcomes[0])} != gzip read {_brief(outcomes[1])}")


def _brief(outcome: object) -> str:
    if isinstance(outcome, tuple):
        frames, warnings = outcome
        return f"({len(frames)} frames {[f[:4] for f in frames][:6]}, warnings {warnings})"
    return repr(outcome)


# --- whole pipeline -----------------------------------------------------------------------------------

PIPELINE_OPTIONS = Options(idle_timeout=10.0, active_timeout=60.0, max_flows=8, chunk_frames=5)


def pipeline(data: bytes) -> None:
    """The bytes as a capture through `classify_capture`: CaptureError or records the output can write."""
    try:
        records = list(classify_capture(memfile(data), PIPELINE_OPTIONS))
    except CaptureError:
        return
    for r in records:
        expect(r.src2dst_packets + r.dst2src_packets >= 1, "record without packets: {}", r)
        expect(0.0 <= r.confidence <= 1.0, "confidence {}", r.confidence)
        expect(r.first_seen <= r.last_seen, "first_seen {} after last_seen {}", r.first_seen, r.last_seen)
        json.dumps(r.as_dict(), allow_nan=False)


# --- decoder ------------------------------------------------------------------------------------------

LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_NULL, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
             LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, 147)  # 147: a user DLT nobody decodes
PER_FRAME_LINKTYPE = 0x80
NEW_CHUNK = 0x04
REASM_DATAGRAMS, REASM_BYTES = 4, 4096  # tiny reassembler limits, so eviction is reached


def encode_frames(frames: list[tuple[bytes, int]], linktype: int, *, cut: int = 0, dt_s: int = 0) -> bytes:
    """`decode` target input: (frame bytes, link type) with one link type for all unless they differ."""
    mixed = len({lt for _, lt in frames} | {linktype}) > 1
    out = bytearray([(PER_FRAME_LINKTYPE if mixed else 0) | LINKTYPES.index(linktype)])
    for frame, lt in frames:
        out.append(dt_s << 3 | cut)
        if mixed:
            out.append(LINKTYPES.index(lt))
        out += struct.pack(">H", len(frame)) + frame
    return bytes(out)


def raw_chunks(data: bytes) -> list[RawChunk]:
    """Chunks of frames from the `decode` encoding: a link-type byte (high bit: each frame names its
    own), then per frame a meta byte (bits 0-1 cut the captured length, bit 2 starts a new chunk, bits
    3-7 seconds since the previous frame), [a link-type byte], a 16-bit length and the bytes."""
    if not data:
        return []
    mixed, default = data[0] & PER_FRAME_LINKTYPE, LINKTYPES[data[0] % PER_FRAME_LINKTYPE % len(LINKTYPES)]
    groups: list[list[tuple[bytes, int, int, int]]] = [[]]
    pos, ts = 1, 1_700_000_000 * NS
    while pos < len(data):
        meta = data[pos]
        linktype = LINKTYPES[data[pos + 1] % len(LINKTYPES)] if mixed and pos + 1 < len(data) else default
        pos += 2 if mixed else 1
        (size,) = struct.unpack(">H", data[pos:pos + 2].ljust(2, b"\0"))
        frame = data[pos + 2:pos + 2 + size]
        pos += 2 + size
        ts += (meta >> 3) * NS
        caplen = (len(frame), len(frame) // 2, max(len(frame) - 1, 0), len(frame))[meta & 3]
        if meta & NEW_CHUNK and groups[-1]:
            groups.append([])
        groups[-1].append((frame, caplen, ts, linktype))
    chunks, first = [], 1
    for g in groups:
        caps = np.array([c for _, c, _, _ in g], np.int32)
        chunks.append(RawChunk(
            data=np.frombuffer(b"".join(f[:c] for f, c, _, _ in g), np.uint8).copy(),
            offset=(np.cumsum(caps, dtype=np.int64) - caps),
            caplen=caps,
            wirelen=np.array([len(f) for f, _, _, _ in g], np.int32),
            ts_ns=np.array([t for _, _, t, _ in g], np.int64),
            linktype=np.array([lt for _, _, _, lt in g], np.int32),
            frame=np.arange(first, first + len(g), dtype=np.int64)))
        first += len(g)
    return chunks


def decode_chunks(data: bytes) -> None:
    """Every link type, IP, fragments, tunnels: rows inside the buffer, in capture order, at most one per
    frame; the reassembler within its limits and its byte count true."""
    reasm = Reassembler(max_datagrams=REASM_DATAGRAMS, max_bytes=REASM_BYTES)
    for chunk in raw_chunks(data):
        check_table(decode(chunk, reasm), chunk)
        pending = reasm._pending.values()
        expect(len(pending) <= REASM_DATAGRAMS, "{} datagrams pending", len(pending))
        held = sum(dg.data.size for dg in pending)
        expect(held == reasm._bytes <= REASM_BYTES, "reassembler holds {} bytes, counts {}", held, reasm._bytes)


def check_table(t: PacketTable, chunk: RawChunk) -> None:
    n = len(t)
    expect(n <= len(chunk), "{} rows from {} frames", n, len(chunk))
    for name in ("ts_ns", "src", "dst", "proto", "sport", "dport", "ip_bytes", "payload_off", "payload_len",
                 "tcp_flags", "tcp_seq", "encap"):
        expect(len(getattr(t, name)) == n, "column {} has {} rows, not {}", name, len(getattr(t, name)), n)
    expect(bool(np.isin(t.frame, chunk.frame).all()), "row of a frame not in the chunk")
    expect(bool((np.diff(t.frame) > 0).all()), "rows not one per frame in capture order: {}", t.frame)
    expect(bool((t.payload_off >= 0).all() and (t.payload_len >= 0).all()), "negative payload offset/length")
    expect(bool((t.payload_off + t.payload_len <= t.byte_count()).all()), "payload runs past the data")
    expect(bool((t.encap <= MAX_ENCAP).all()), "encap {} beyond {}", t.encap, MAX_ENCAP)
    unported = ~np.isin(t.proto, list(PORTED))
    expect(not (t.sport[unported].any() or t.dport[unported].any()), "ports on a transport without ports")
    expect(all(v >= 0 for v in t.stats.values()), "negative counter: {}", t.stats)


# --- dissectors ---------------------------------------------------------------------------------------

DIRECTION, RETRANSMIT, GAP = 0x01, 0x02, 0x04
ISN = (0x10000000, 0x80000000)  # initial TCP sequence numbers per direction


MID_FLOW = 0x80  # in the first byte: the flow's opening SYN was not seen


def encode_packets(proto: int, packets: list[tuple[int, bytes]], transports: frozenset[int]) -> bytes:
    """Dissector target input: the flow's protocol among the dissector's transports (bit 7: the capture
    started mid-flow), then per packet a meta byte (bit 0 direction, bit 1 retransmission, bit 2 gap,
    bits 3-7 quarter seconds since the previous packet), a 16-bit length and the payload."""
    out = bytearray([sorted(transports).index(proto)])
    for direction, payload in packets:
        out += bytes([direction | 1 << 3]) + struct.pack(">H", len(payload)) + payload
    return bytes(out)


def flow_packets(data: bytes, transports: frozenset[int]) -> Iterator[FlowPacket]:
    """FlowPackets as the flow table would make them (TCP sequence numbers following each direction's
    bytes unless a retransmission or gap is asked for); empty payloads are never fed, but are counted."""
    if not data:
        return
    protos = sorted(transports)
    proto, opened = protos[(data[0] & ~MID_FLOW) % len(protos)], not data[0] & MID_FLOW
    seq, ts, pos, index = list(ISN), 1_700_000_000.0, 1, 0
    while pos < len(data):
        meta = data[pos]
        (size,) = struct.unpack(">H", data[pos + 1:pos + 3].ljust(2, b"\0"))
        payload = data[pos + 3:pos + 3 + size]
        pos += 3 + size
        d = meta & DIRECTION
        ts += (meta >> 3) / 4
        index += 1
        if meta & GAP:
            seq[d] = (seq[d] + 1000) & 0xFFFFFFFF
        at = (seq[d] - len(payload)) & 0xFFFFFFFF if meta & RETRANSMIT else seq[d]
        if not meta & RETRANSMIT:
            seq[d] = (seq[d] + len(payload)) & 0xFFFFFFFF
        if payload:
            yield FlowPacket(index, d, ts, payload, tcp_seq=at if proto == 6 else 0,
                             tcp_flags=0x18 if proto == 6 else 0, proto=proto, opened=opened and proto == 6)


def dissect(cls: type[Dissector], data: bytes) -> None:
    """One flow through one dissector: final states stay final, verdicts are well formed, the budget
    holds, and `on_end` decides nothing it may not."""
    d = cls()
    for pkt in flow_packets(data, cls.transports):
        before = (d.state, list(d.evidence))
        state = d.feed(pkt)
        expect(state is d.state, "feed returned {}, state is {}", state, d.state)
        if before[0] is not State.CANDIDATE:
            expect((d.state, d.evidence) == before, "final state {} changed", before[0].name)
        check_dissector(d, pkt.index)
    if d.state is State.CANDIDATE:
        d.on_end()
        check_dissector(d, 1 << 62)


def check_dissector(d: Dissector, index: int) -> None:
    expect(d.seen <= d.budget, "{} packets seen, budget {}", d.seen, d.budget)
    expect(0.0 <= d.confidence <= 1.0, "confidence {}", d.confidence)  # False for NaN too
    expect(all(isinstance(e, str) for e in d.evidence), "evidence {!r}", d.evidence)
    expect(all(isinstance(k, str) and isinstance(v, str) for k, v in d.attributes.items()),
           "attributes {!r}", d.attributes)
    if d.state is State.CONFIRMED:
        expect(0 < d.confidence and 1 <= d.verdict_packet <= index,
               "confirmed at packet {} (now {}) with confidence {}", d.verdict_packet, index, d.confidence)
        expect(bool(d.evidence), "confirmed without evidence")
    if d.state is State.REJECTED:
        expect(bool(d.evidence), "rejected without a reason")


# --- flow table ---------------------------------------------------------------------------------------

ADDRESSES = tuple(ipv4_mapped(bytes([198, 18, 0, i])) for i in (1, 2, 3, 4)) + (
    bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002"))
PORTS = (0, 53, 443, 500, 1194, 4500, 51820, 40000)
PROTOS = (6, 17, 50, 51, 47, 1)
MAX_FLOWS = (2, 5, 64, 1 << 20)
NO_EVICTION = MAX_FLOWS[-1]
DROP_FIRST = (0, 0, 1, 3)
MONOTONE = 0x10
CHUNK_BREAK = 0x80
RECORD = struct.Struct("8B")  # dt, src, dst, sport, dport, proto, flags, payload length
FLOW_CONFIG = {"idle_timeout": 10.0, "active_timeout": 60.0}
END_REASONS = {"idle", "active", "fin", "rst", "end_of_capture", "evicted"}
FAMILIES = {d.family for d in catalog.ALL}

Packet = tuple[int, bytes, bytes, int, int, int, int, bytes]  # ts_ns, src, dst, sport, dport, proto, flags


def encode_flow_packets(packets: list[tuple[float, int, int, int, int, int, int, bytes]],
                        header: int = MONOTONE | 3) -> bytes:
    """Flow target input from (seconds since the previous packet, src index, dst index, sport index, dport
    index, proto index, TCP flags, payload); the header picks the table size and drop_first."""
    out = bytearray([header])
    for dt, *fields, payload in packets:
        out += RECORD.pack(round(dt * 4), *fields, len(payload)) + payload
    return bytes(out)


def flow_chunks(data: bytes) -> tuple[list[list[Packet]], FlowTableConfig, bool]:
    """Packets in chunks from the flow encoding: a header byte (bits 0-1 table size, bits 2-3 drop_first,
    bit 4 time only moves forward), then 8-byte records (`RECORD`; dt in quarter seconds, high bit of dt
    starts a new chunk) each followed by its payload."""
    header = data[0] if data else 0
    config = FlowTableConfig(max_flows=MAX_FLOWS[header & 3], drop_first=DROP_FIRST[header >> 2 & 3],
                             **FLOW_CONFIG)
    monotone = bool(header & MONOTONE)
    chunks: list[list[Packet]] = [[]]
    ts, pos = 1_700_000_000 * NS, 1
    while pos + RECORD.size <= len(data):
        dt, a, b, sp, dp, pr, flags, plen = RECORD.unpack_from(data, pos)
        payload = data[pos + RECORD.size:pos + RECORD.size + plen]
        pos += RECORD.size + plen
        ts += ((dt & 0x7F) - (0 if monotone else 8)) * NS // 4
        proto = PROTOS[pr % len(PROTOS)]
        ported = proto in PORTED
        if dt & CHUNK_BREAK and chunks[-1]:
            chunks.append([])
        chunks[-1].append((ts, ADDRESSES[a % len(ADDRESSES)], ADDRESSES[b % len(ADDRESSES)],
                           PORTS[sp % len(PORTS)] if ported else 0, PORTS[dp % len(PORTS)] if ported else 0,
                           proto, flags if proto == 6 else 0, payload))
    return [c for c in chunks if c], config, monotone


def packet_table(packets: list[Packet], first_frame: int) -> PacketTable:
    """A PacketTable as the decoder would make it: payloads back to back in `data`."""
    payloads = [p[7] for p in packets]
    lens = np.array([len(p) for p in payloads], np.int64)
    return PacketTable(
        data=np.frombuffer(b"".join(payloads), np.uint8).copy(),
        frame=np.arange(first_frame, first_frame + len(packets), dtype=np.int64),
        ts_ns=np.array([p[0] for p in packets], np.int64),
        src=np.array([p[1] for p in packets], "V16"),
        dst=np.array([p[2] for p in packets], "V16"),
        proto=np.array([p[5] for p in packets], np.uint8),
        sport=np.array([p[3] for p in packets], np.uint16),
        dport=np.array([p[4] for p in packets], np.uint16),
        ip_bytes=lens + 28,
        payload_off=np.cumsum(lens) - lens,
        payload_len=lens.astype(np.int32),
        tcp_flags=np.array([p[6] for p in packets], np.uint8),
        tcp_seq=np.zeros(len(packets), np.uint32),
        encap=np.zeros(len(packets), np.uint8),
    )


def run_table(chunks: list[list[Packet]], config: FlowTableConfig) -> tuple[list[Flow], FlowTable]:
    table = FlowTable(catalog.ALL, config)
    flows, frame = [], 1
    for packets in chunks:
        table.add(packet_table(packets, frame))
        frame += len(packets)
        expect(len(table.open) <= config.max_flows, "{} open flows, limit {}", len(table.open), config.max_flows)
        flows += table.drain()
    return flows + table.close(), table


def flow_summary(flows: list[Flow]) -> list[tuple]:
    return sorted((f.proto, f.src, f.sport, f.dst, f.dport, f.first_ns, f.last_ns, tuple(f.packets),
                   tuple(f.bytes), f.end_reason, f.verdict and (f.verdict.family, f.verdict.packet))
                  for f in flows)


def flow_table(data: bytes) -> None:
    """Every packet lands in exactly one flow, evictions are counted, verdicts are well formed, and with
    time moving forward and no eviction, how the packets are cut into chunks changes no flow."""
    chunks, config, monotone = flow_chunks(data)
    flows, table = run_table(chunks, config)
    n = sum(map(len, chunks))
    for f in flows:
        expect(f.first_ns <= f.last_ns and min(f.packets) >= 0, "flow times/counts: {}", f)
        expect(f.end_reason in END_REASONS, "end reason {!r}", f.end_reason)
        expect(f.verdict is None or f.verdict.family in FAMILIES, "verdict {}", f.verdict)
        expect(not f.pending, "an ended flow still has dissectors")
    evicted = sum(f.end_reason == "evicted" for f in flows)
    if config.drop_first:
        expect(sum(f.total_packets + f.hidden for f in flows) <= n, "more packets in flows than added")
        return
    counted = sum(f.total_packets for f in flows)
    expect(counted == n, "{} of {} packets in flows", counted, n)
    expect(len(flows) == table.stats["flows"], "{} flows ended, {} started", len(flows), table.stats["flows"])
    expect(evicted == table.stats["evicted"], "{} evicted flows, counter says {}", evicted, table.stats["evicted"])
    if monotone and config.max_flows == NO_EVICTION and len(chunks) > 1:
        whole, _ = run_table([[p for c in chunks for p in c]], config)
        expect(flow_summary(whole) == flow_summary(flows), "chunking changed the flows")


# --- registry -----------------------------------------------------------------------------------------

# Targets that start from another target's seeds (same input format).
SEEDS_FROM = {"capture_gzip": "capture"}

TARGETS: dict[str, Callable[[bytes], None]] = {
    "capture": capture_file,
    "capture_gzip": capture_gzip,
    "pipeline": pipeline,
    "decode": decode_chunks,
    "flows": flow_table,
    **{f"dissect_{cls.__name__.lower()}": functools.partial(dissect, cls) for cls in catalog.ALL},
}
