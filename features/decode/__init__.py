"""RawChunk -> PacketTable: link layer, IP, fragment reassembly, transport, tunnel decapsulation.

Every stage works on index arrays over the whole chunk: header bytes are gathered with numpy fancy
indexing at per-packet offsets, behind bounds masks so a frame cut by the snaplen is never read past
its caplen. Python runs per packet only for IP fragments, which are rare and need state across chunks.

    link layer -> IP header -> fragment? -> Reassembler -> (datagram decoded like a packet)
                            -> transport -> tunnel? -> IP header of the inner packet (up to MAX_ENCAP)

A packet whose IP or transport header is cut by the snaplen (`truncated`) or inconsistent (`bad_ip`)
produces no row: without addresses and ports it cannot be put into a flow. A tunnel packet whose inner
IP header is not captured whole stays a row of the outer flow.

Counters in `PacketTable.stats`: non_ip, truncated, bad_ip, fragments (fragment packets seen),
reassembled (datagrams completed), fragments_dropped (fragments discarded, whatever the reason),
decapsulated (tunnel layers removed), linktype_<n> (frames of an unsupported link type); and, per
datagram given up, fragment_timeouts / fragment_evictions / fragment_overlaps / fragment_oversize /
fragment_truncated / fragment_inconsistent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import fields

import numpy as np

from vpnid.features.decode.columns import Cursor, Rows
from vpnid.features.decode.ip import ip_layer
from vpnid.features.decode.link import link_layer
from vpnid.features.decode.reassembly import Fragment, Reassembler, reassemble
from vpnid.features.decode.transport import transport_layer
from vpnid.features.decode.tunnels import MAX_ENCAP, decapsulate
from vpnid.features.packets import PacketTable, RawChunk

__all__ = ["COUNTERS", "MAX_ENCAP", "Fragment", "Reassembler", "decode"]

COUNTERS = ("non_ip", "truncated", "bad_ip", "fragments", "reassembled", "fragments_dropped", "decapsulated")


def _decode_ip(
    buf: np.ndarray, cur: Cursor, ts_ns: np.ndarray, reasm: Reassembler, stats: Counter[str]
) -> tuple[list[Rows], list[tuple[int, int, bytes]]]:
    """IP -> fragments / transport -> tunnels -> inner IP ..., until no tunnel is left. Returns the rows
    (in parts) and the datagrams completed by fragments on the way."""
    rows, done, todo = [], [], [cur]
    while todo:
        for ip in ip_layer(buf, todo.pop(), stats):
            if ip.frag.any():
                done += reassemble(buf, ip.take(ip.frag), ts_ns, reasm, stats)
                ip = ip.take(~ip.frag)
            r = transport_layer(buf, ip, stats)
            stay, inner = decapsulate(buf, r, stats)
            rows.append(r.take(stay))
            if len(inner):
                todo.append(inner)
    return rows, done


def _datagram_cursor(done: list[tuple[int, int, bytes]]) -> tuple[np.ndarray, Cursor]:
    """A buffer holding reassembled datagrams back to back, and a cursor over them."""
    blob = np.frombuffer(b"".join(d for _, _, d in done), np.uint8)
    lengths = np.array([len(d) for _, _, d in done], np.int64)
    l3 = np.cumsum(lengths) - lengths
    ver = (blob[l3] >> 4).astype(np.int8)
    pkt = np.array([p for p, _, _ in done], np.int64)
    encap = np.array([e for _, e, _ in done], np.uint8)
    return blob, Cursor(pkt, l3, l3 + lengths, ver, encap)


def decode(chunk: RawChunk, reassembler: Reassembler) -> PacketTable:
    """Decode one chunk into one row per IP packet (after reassembly and decapsulation), in capture
    order. Reassembled datagrams are appended to the returned table's `data`."""
    stats: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
    rows, done = _decode_ip(chunk.data, link_layer(chunk, stats), chunk.ts_ns, reassembler, stats)
    buffers = [chunk.data]
    base = chunk.data.size
    while done:  # datagrams completed by fragments, then by fragments found inside those, ...
        blob, cur = _datagram_cursor(done)
        more_rows, done = _decode_ip(blob, cur, chunk.ts_ns, reassembler, stats)
        for r in more_rows:
            r.payload_off += base
        rows += more_rows
        buffers.append(blob)
        base += blob.size
    if len(chunk):
        reassembler.expire(int(chunk.ts_ns.max()), stats)
    out = _in_capture_order(rows, len(chunk))
    return PacketTable(
        data=chunk.data,
        extra=(np.concatenate(buffers[1:]) if len(buffers) > 2 else buffers[1] if len(buffers) > 1
               else np.zeros(0, np.uint8)),
        frame=chunk.frame[out.pkt],
        ts_ns=chunk.ts_ns[out.pkt],
        src=out.src,
        dst=out.dst,
        proto=out.proto.astype(np.uint8),
        sport=out.sport,
        dport=out.dport,
        ip_bytes=out.ip_bytes.astype(np.int64),
        payload_off=out.payload_off,
        payload_len=out.payload_len.astype(np.int32),
        tcp_flags=out.tcp_flags,
        tcp_seq=out.tcp_seq,
        encap=out.encap,
        stats={k: int(v) for k, v in stats.items()},
    )


def _in_capture_order(parts: list[Rows], n: int) -> Rows:
    """Merge row parts into capture order. Each chunk row yields at most one output row (a fragment
    yields none, the datagram it completes one), so a row's place is the rank of its chunk row."""
    if len(parts) == 1:
        return parts[0]
    present = np.zeros(n, bool)
    for p in parts:
        present[p.pkt] = True
    place = np.cumsum(present) - 1
    total = int(np.count_nonzero(present))
    columns = []
    for f in fields(Rows):
        first = getattr(parts[0], f.name)
        column = np.empty(total, first.dtype)
        for p in parts:
            column[place[p.pkt]] = getattr(p, f.name)
        columns.append(column)
    return Rows(*columns)
