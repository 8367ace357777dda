"""Per-flow feature vectors for the trained classifier: a versioned schema and the plugin that fills it.

Signatures need a handshake or a well-formed message; a capture that starts mid-flow, or a disguised
tunnel, leaves only the flow's shape. The features describe that shape without anything that names a
host or a moment: no addresses, ports, TTLs or absolute times (a model that learns those learns the lab,
not the protocol). Every column is listed in `schema()` with its unit and meaning; bump
`SCHEMA_VERSION` whenever a column is added, removed or changes meaning, so a model trained on one
layout is never fed another.

The plugin is columnar: per chunk it computes partial aggregates for every flow at once with numpy
(counts, sums, sums of squares, minima and maxima, so chunks merge exactly) and runs Python once per
flow segment only to fold those into the flow's state. A flow's first `HEAD` payload packets are kept
(size, direction, time, opcode byte) for the sequence features, then dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from vpnid.features.dissectors import catalog
from vpnid.features.families import IPSEC, OPENCONNECT, OPENVPN, WIREGUARD
from vpnid.features.flows import NS, Flow, FlowTable, FlowTableConfig, Segments, flow_id
from vpnid.features.gather import count_bytes, payload_heads
from vpnid.features.packets import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    address_text,
    transport_name,
)

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
N_FIRST = 20  # default length of the first-packets sequence
VIEWS = (0, 10, 25, 50, 100, 200, 400, 800)  # packets withheld per flow, one training pass each (vpnid train)
HEAD = 100  # payload packets kept per flow for the opcode and ACK filters (Xue et al. look at 100)
HDR = 8  # leading payload bytes whose stability is measured
ENTROPY_PACKETS = 8  # payload packets whose bytes feed the entropy estimate
ENTROPY_BYTES = 256  # bytes taken from each of them
ACK_BINS = 10  # 10-packet bins of the ACK-size filter over HEAD packets
COUNTER_STEP = 64  # a sequence counter "advances" when it grows by 1..COUNTER_STEP between packets
KEY = "vectors"  # this plugin's slot in Flow.ext
INDEX_COLUMNS = ("pcap", "flow_id", "transport", "src_ip", "src_port", "dst_ip", "dst_port")
# Families with a dissector, in column order. Fixed here (not read from the registry) so that adding a
# dissector cannot change the layout silently: a test fails until this and SCHEMA_VERSION are updated.
SIG_FAMILIES = (IPSEC, WIREGUARD, OPENVPN, OPENCONNECT)  # feature-schema order
SIG_STATE = {"not_run": 0, "undecided": 1, "rejected": 2, "confirmed": 3}
DIRS = ("fwd", "bwd")  # initiator -> responder, responder -> initiator


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    unit: str
    meaning: str


def schema(n_first: int = N_FIRST) -> tuple[Column, ...]:
    """Every feature column, in vector order. Directional columns come once per direction."""
    cols = [
        Column("duration", "s", "time from the flow's first to its last observed packet"),
        Column("is_tcp", "flag", "transport is TCP"),
        Column("is_udp", "flag", "transport is UDP"),
        Column("packets", "packets", "packets in both directions"),
        Column("pkt_ratio_fwd", "fraction", "share of packets sent by the initiator"),
        Column("byte_ratio_fwd", "fraction", "share of IP bytes sent by the initiator"),
        Column("pkts_per_s", "packets/s", "packets over duration (0 for a single instant)"),
        Column("bytes_per_s", "bytes/s", "IP bytes over duration (0 for a single instant)"),
    ]
    for d in DIRS:
        cols += [
            Column(f"{d}_size_mean", "bytes", f"{d}: mean transport payload of payload packets"),
            Column(f"{d}_size_std", "bytes", f"{d}: standard deviation of payload sizes"),
            Column(f"{d}_size_min", "bytes", f"{d}: smallest payload (0 if none)"),
            Column(f"{d}_size_max", "bytes", f"{d}: largest payload (0 if none)"),
            Column(f"{d}_iat_mean", "s", f"{d}: mean gap between consecutive payload packets"),
            Column(f"{d}_iat_std", "s", f"{d}: standard deviation of those gaps"),
            Column(f"{d}_iat_min", "s", f"{d}: smallest gap (0 if fewer than two packets)"),
            Column(f"{d}_iat_max", "s", f"{d}: largest gap (0 if fewer than two packets)"),
            Column(f"{d}_empty_frac", "fraction", f"{d}: share of packets without payload"),
        ]
        cols += [Column(f"{d}_hdr_repeat_b{j}", "fraction",
                        f"{d}: share of consecutive payload packets whose payload byte {j} is unchanged "
                        "(WireGuard type/receiver index, ESP SPI, OpenVPN opcode/peer-id stay put)")
                 for j in range(HDR)]
        cols += [
            Column(f"{d}_ctr_be32_at4", "fraction",
                   f"{d}: share of consecutive payload packets whose big-endian uint32 at payload offset 4 "
                   f"grows by 1..{COUNTER_STEP} (ESP sequence number, OpenVPN packet id)"),
            Column(f"{d}_ctr_le32_at8", "fraction",
                   f"{d}: same for the little-endian uint32 at offset 8 (WireGuard data counter)"),
        ]
    cols += [
        Column("tcp_syn", "packets", "TCP packets with SYN"),
        Column("tcp_fin", "packets", "TCP packets with FIN"),
        Column("tcp_rst", "packets", "TCP packets with RST"),
        Column("tcp_psh_frac", "fraction", "share of packets with PSH"),
        Column("tcp_pure_ack_frac", "fraction", "share of packets that are bare TCP ACKs"),
        Column("entropy_head", "bits/byte",
               f"Shannon entropy of up to {ENTROPY_BYTES} B of each of the first {ENTROPY_PACKETS} payloads"),
        Column("ovpn_distinct_opcodes", "count",
               f"distinct OpenVPN opcode values (byte 0 >> 3 on UDP, byte 2 >> 3 on TCP) in the first {HEAD} "
               "payload packets (Xue et al. opcode filter)"),
        Column("ovpn_opcode_filter", "flag",
               "4 to 10 distinct opcodes and the first two opcodes do not recur once 4 are seen"),
        Column("ovpn_ack_size", "bytes",
               "ACK candidate: first payload of 22-54 B after the first two payload packets (0 if none)"),
    ]
    cols += [Column(f"ovpn_ack_bin{b + 1}", "packets",
                    f"payloads within 16 B of the ACK candidate among head packets {10 * b + 1}-{10 * b + 10}")
             for b in range(ACK_BINS)]
    for i in range(1, n_first + 1):
        cols += [
            Column(f"first{i}_size", "bytes", f"payload of the {i}th payload packet (0 if absent)"),
            Column(f"first{i}_dir", "sign", f"direction of the {i}th payload packet: +1 fwd, -1 bwd, 0 absent"),
            Column(f"first{i}_gap", "s", "time since the previous payload packet (0 for the first or absent)"),
        ]
    cols += [Column(f"sig_{fam}", "state",
                    f"{fam} dissectors: 0 none ran (transport), 1 undecided, 2 rejected, 3 confirmed")
             for fam in SIG_FAMILIES]
    return tuple(cols)


def feature_names(n_first: int = N_FIRST) -> list[str]:
    return [c.name for c in schema(n_first)]


# Layout of the mergeable per-flow aggregates: sums, then minima, then maxima.
_SUM_PER_DIR = ("size_n", "size_sum", "size_sq", "iat_n", "iat_sum", "iat_sq", "empty", "pairs",
                *(f"eq{j}" for j in range(HDR)), "ctr_be", "ctr_le")
_SUMS = {f"{d}_{k}": i * len(_SUM_PER_DIR) + j for i, d in enumerate(DIRS) for j, k in enumerate(_SUM_PER_DIR)}
_SUMS |= {k: len(_SUMS) + j for j, k in enumerate(("syn", "fin", "rst", "psh", "pure_ack"))}
_EXTREMES = ("fwd_size", "bwd_size", "fwd_iat", "bwd_iat")


class _Tables:
    """The mergeable aggregates (everything here merges exactly across chunks) of a plugin's open flows,
    one row per flow: a chunk folds into all its flows' rows with a few fancy-indexed operations instead
    of a dozen small array operations per flow. Rows of ended flows are reused."""

    def __init__(self, capacity: int = 1024) -> None:
        self.sums = np.zeros((capacity, len(_SUMS)))
        self.mins = np.zeros((capacity, len(_EXTREMES)))
        self.maxs = np.zeros((capacity, len(_EXTREMES)))
        self.last_ts = np.zeros((capacity, 2), np.int64)  # per direction: last payload packet's time
        self.last_hdr = np.zeros((capacity, 2, 12), np.uint8)  # its first bytes
        self.last_len = np.zeros((capacity, 2), np.int64)  # and how many of them are real
        self.payloads = np.zeros(capacity, np.int64)
        self.hist = np.zeros((capacity, 256), np.uint16)  # bytes of the leading payloads (<= 8 * 256 each: fits)
        self.free = list(range(capacity - 1, -1, -1))

    def alloc(self, n: int) -> np.ndarray:
        """n fresh rows."""
        if n > len(self.free):
            old = len(self.payloads)
            new = max(2 * old, old + n)
            for name in ("sums", "mins", "maxs", "last_ts", "last_hdr", "last_len", "payloads", "hist"):
                a = getattr(self, name)
                grown = np.zeros((new, *a.shape[1:]), a.dtype)
                grown[:old] = a
                setattr(self, name, grown)
            self.free[:0] = range(new - 1, old - 1, -1)
        rows = np.array(self.free[len(self.free) - n:][::-1], np.int64)
        del self.free[len(self.free) - n:]
        self.sums[rows], self.mins[rows], self.maxs[rows] = 0.0, np.inf, -np.inf
        self.last_ts[rows], self.last_hdr[rows], self.last_len[rows] = -1, 0, 0
        self.payloads[rows], self.hist[rows] = 0, 0
        return rows

    def release(self, row: int) -> _Final:
        """A copy of an ended flow's aggregates; its row is free again."""
        self.free.append(row)
        return _Final(self.sums[row].copy(), self.mins[row].copy(), self.maxs[row].copy(), self.hist[row].copy())


@dataclass(slots=True)
class _Final:
    """An ended flow's aggregates, out of the tables."""

    sums: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    hist: np.ndarray


@dataclass(slots=True)
class _State:
    """What a flow has in its plugin: its row of the aggregate tables while open, and what is per flow."""

    row: int = -1
    head: list[np.ndarray] = field(default_factory=list)  # size, dir, ts, opcode of HEAD payloads
    head_features: np.ndarray | None = None  # computed once HEAD is full, then `head` is dropped
    undecided: frozenset[str] = frozenset()  # families with a dissector still undecided at last look
    final: _Final | None = None  # set when the flow ends


_NO_FAMILIES: frozenset[str] = frozenset()


class FeaturePlugin:
    """Flow-table plugin that keeps each flow's aggregates in `flow.ext["vectors"]`; `vectors` makes
    the feature rows (schema order) of ended flows from them."""

    def __init__(self, n_first: int = N_FIRST, undecided_only: bool = False, min_packets: int = 0) -> None:
        self.n_first = n_first
        self.head_len = max(HEAD, n_first)
        # Classification needs vectors only where no signature decided and the flow is long enough for
        # the model; feature extraction wants every flow (the defaults).
        self.undecided_only = undecided_only
        self.min_packets = min_packets
        self.tables = _Tables()
        # (running dissector classes, unscreened classes) -> families still undecided, shared frozensets
        self._families: dict[tuple, frozenset[str]] = {}


    # ------------------------------------------------------------------ per chunk
    def on_segments(self, seg: Segments) -> None:
        if self.undecided_only:
            keep = np.fromiter((f.verdict is None for f in seg.flows), bool, len(seg.flows))
            if not keep.all():
                seg = seg.select(keep)
            if not seg.flows:
                return
        t, rows, starts = seg.table, seg.rows, seg.starts
        n_seg = len(seg.flows)
        counts = np.diff(np.r_[starts, len(rows)])
        sid = np.repeat(np.arange(n_seg), counts)
        d = seg.direction.astype(np.int64)
        plen = t.payload_len[rows].astype(np.int64)
        ts = t.ts_ns[rows]
        flags = t.tcp_flags[rows].astype(np.int64)
        has = plen > 0
        states = [f.ext.get(KEY) for f in seg.flows]
        new = [i for i, st in enumerate(states) if st is None]
        for i, row in zip(new, self.tables.alloc(len(new)).tolist()):
            states[i] = seg.flows[i].ext[KEY] = _State(row)
        T = self.tables
        slot = np.array([st.row for st in states], np.int64)

        sums = np.zeros((n_seg, len(_SUMS)))
        mins = np.full((n_seg, len(_EXTREMES)), np.inf)
        maxs = np.full((n_seg, len(_EXTREMES)), -np.inf)
        tcp = (t.proto[rows] == IPPROTO_TCP)
        pure_ack = tcp & ~has & ((flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK)) == TCP_ACK)
        for name, hit in (("syn", flags & TCP_SYN), ("fin", flags & TCP_FIN), ("rst", flags & TCP_RST),
                          ("psh", flags & TCP_PSH), ("pure_ack", pure_ack)):
            sums[:, _SUMS[name]] = np.bincount(sid, weights=(hit != 0), minlength=n_seg)
        for di, dn in enumerate(DIRS):
            sums[:, _SUMS[f"{dn}_empty"]] = np.bincount(sid, weights=(~has & (d == di)), minlength=n_seg)

        # Per (segment, direction): payload sizes, gaps, header-byte repeats and counters, in capture order,
        # each packet paired with the one before it in its direction (from earlier chunks: the tables).
        _fold_payloads(sid, d, ts, plen, t.payload_off[rows].astype(np.int64), t.data, t.extra, slot,
                       T.last_ts, T.last_hdr, T.last_len, _FOLD_COLUMNS, sums, mins, maxs)

        # Rank of each payload packet within its flow (capture order), for the head and the entropy.
        payloads_before = T.payloads[slot]
        cum = np.cumsum(has)
        rank = np.zeros(len(rows), np.int64)
        rank[has] = (cum - 1 - (cum[starts] - has[starts])[sid])[has] + payloads_before[sid[has]]
        lead = np.flatnonzero(has & (rank < ENTROPY_PACKETS))  # bytes of the leading payloads: the entropy
        count_bytes(t, rows[lead], ENTROPY_BYTES, T.hist, slot[sid[lead]])
        young = np.flatnonzero(has & (rank < self.head_len))
        opcode_at = np.where(t.proto[rows[young]] == IPPROTO_TCP, 2, 0)
        ohdr, olen = _header_bytes(t, rows[young], 3)
        opcode = np.where(olen > opcode_at, ohdr[np.arange(len(young)), opcode_at] >> 3, 255).astype(np.int64)
        young_bounds = np.searchsorted(sid[young], np.arange(n_seg + 1))

        T.sums[slot] += sums
        T.mins[slot] = np.minimum(T.mins[slot], mins)
        T.maxs[slot] = np.maximum(T.maxs[slot], maxs)
        T.payloads[slot] += np.bincount(sid[has], minlength=n_seg)
        full = []
        payloads = T.payloads[slot].tolist()
        # One array for the chunk's head packets; each flow keeps a copy of its columns (a view would keep
        # the whole chunk's array alive as long as any of its flows is open).
        kept = np.stack([plen[young], 1 - 2 * d[young], ts[young], opcode])
        bounds = young_bounds.tolist()
        for i in np.flatnonzero(young_bounds[1:] > young_bounds[:-1]).tolist():
            states[i].head.append(kept[:, bounds[i]:bounds[i + 1]].copy())
            if payloads[i] >= self.head_len:
                full.append(i)
        families = self._families
        for flow, st in zip(seg.flows, states):
            if flow.pending or flow.unscreened:
                key = (tuple(type(dis) for dis in flow.pending), flow.unscreened)
                fams = families.get(key)
                if fams is None:
                    fams = families[key] = frozenset(cls.family for cls in flow.undecided if cls.feature_state)
                st.undecided = fams
            else:
                st.undecided = _NO_FAMILIES
        # Now, so the kept head packets can go.
        _head_features([states[i] for i in full], T.hist[slot[full]], self.n_first)

    # ------------------------------------------------------------------ per flow
    def on_end(self, flow: Flow) -> None:
        """Keep the aggregates of flows the vectors are wanted for; `vectors` turns them into rows (all
        of a drained batch at once)."""
        st = flow.ext.get(KEY)
        if st is None:
            return
        if flow.total_packets < self.min_packets:
            del flow.ext[KEY]
            self.tables.free.append(st.row)
        else:
            st.final = self.tables.release(st.row)


def _head_features(states: Sequence[_State], hists: np.ndarray, n_first: int) -> None:
    """Set entropy (from each state's byte histogram in `hists`), opcode/ACK filters and the first-N
    sequence from the kept head packets of each state that has none yet (then drop those packets), for
    all of them at once."""
    todo = [i for i, st in enumerate(states) if st.head_features is None]
    if not todo:
        return
    states, hists = [states[i] for i in todo], hists[todo]
    n, width = len(states), max(HEAD, n_first)
    counts = np.array([sum(a.shape[1] for a in st.head) for st in states], np.int64)
    kept = np.concatenate([a for st in states for a in st.head], axis=1) if counts.any() else np.zeros((4, 0), np.int64)
    owner = np.repeat(np.arange(n), counts)
    pos = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = pos < width
    owner, pos = owner[keep], pos[keep]
    size, direction, ts, opcode = np.zeros((4, n, width), np.int64)
    size[owner, pos], direction[owner, pos], ts[owner, pos], opcode[owner, pos] = kept[:, keep]
    valid = np.zeros((n, width), bool)
    valid[owner, pos] = True
    seq = np.zeros((n, n_first, 3))
    seq[:, :, 0] = size[:, :n_first]
    seq[:, :, 1] = direction[:, :n_first]
    seq[:, 1:, 2] = np.where(valid[:, 1:n_first], (ts[:, 1:n_first] - ts[:, : n_first - 1]) / NS, 0.0)
    entropy = np.array([_entropy(h) for h in hists])
    block = np.column_stack([entropy, _opcode_filter(opcode, valid & (opcode != 255)), _ack_filter(size, valid),
                             seq.reshape(n, -1)])
    for st, row in zip(states, block):
        st.head, st.head_features = [], row


@functools.cache
def _families_run(proto: int) -> tuple[bool, ...]:
    """Per family in SIG_FAMILIES: whether a dissector of its feature state runs on this transport."""
    return tuple(any(fam == dis.family and proto in dis.transports and dis.feature_state for dis in catalog.ALL)
                 for fam in SIG_FAMILIES)


def _sig_states(flow: Flow, st: _State) -> list[int]:
    """Per family in SIG_FAMILIES: what its dissectors made of the flow."""
    verdict = flow.verdict.family if flow.verdict else None
    sig = []
    for fam, ran in zip(SIG_FAMILIES, _families_run(flow.proto)):
        state = ("confirmed" if verdict == fam else "undecided" if fam in st.undecided
                 else "rejected" if ran else "not_run")
        sig.append(SIG_STATE[state])
    return sig


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0."""
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _matrix(flows: Sequence[Flow], states: Sequence[_State], n_first: int) -> np.ndarray:
    """Feature rows of ended flows, column by column over all of them (the same IEEE operations, so the
    same values, as computing them flow by flow)."""
    s = np.array([st.final.sums for st in states])
    mins = np.array([st.final.mins for st in states])
    maxs = np.array([st.final.maxs for st in states])
    g = lambda k: s[:, _SUMS[k]]  # noqa: E731
    packets = np.array([f.packets for f in flows], np.int64)
    byte_counts = np.array([f.bytes for f in flows], np.int64)
    proto = np.array([f.proto for f in flows], np.int64)
    pkts, byts = packets.sum(axis=1), byte_counts.sum(axis=1)
    dur = np.array([f.last_ns - f.first_ns for f in flows], np.int64) / NS
    cols = [dur, proto == IPPROTO_TCP, proto == IPPROTO_UDP, pkts, packets[:, 0] / pkts,
            _ratio(byte_counts[:, 0], byts), _ratio(pkts, dur), _ratio(byts, dur)]
    for di, dn in enumerate(DIRS):
        for name in ("size", "iat"):
            n, tot, sq = g(f"{dn}_{name}_n"), g(f"{dn}_{name}_sum"), g(f"{dn}_{name}_sq")
            has = n != 0
            mean = _ratio(tot, n)
            std = np.where(has, np.sqrt(np.maximum(_ratio(sq, n) - mean * mean, 0.0)), 0.0)
            k = _EXTREMES.index(f"{dn}_{name}")
            cols += [mean, std, np.where(has, mins[:, k], 0.0), np.where(has, maxs[:, k], 0.0)]
        cols.append(_ratio(g(f"{dn}_empty"), packets[:, di]))
        pairs = g(f"{dn}_pairs")
        cols += [_ratio(g(f"{dn}_eq{j}"), pairs) for j in range(HDR)]
        cols += [_ratio(g(f"{dn}_ctr_be"), pairs), _ratio(g(f"{dn}_ctr_le"), pairs)]
    cols += [g("syn"), g("fin"), g("rst"), g("psh") / pkts, g("pure_ack") / pkts]
    _head_features(states, np.array([st.final.hist for st in states]), n_first)
    head = np.array([st.head_features for st in states])
    sig = np.array([_sig_states(f, st) for f, st in zip(flows, states)], np.float64)
    return np.hstack([np.column_stack(cols).astype(np.float64), head, sig])


# ---------------------------------------------------------------------------------------------- helpers
def _header_bytes(t, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `width` payload bytes of each row (zero-padded) and how many are real."""
    return payload_heads(t, rows, width), np.minimum(t.payload_len[rows], width).astype(np.int64)


# Per direction, the `sums` columns `_fold_payloads` fills, in its order.
_FOLD_COLUMNS = np.array([[_SUMS[f"{dn}_{k}"] for k in ("size_n", "size_sum", "size_sq", "iat_n", "iat_sum", "iat_sq",
                                                         "pairs", *(f"eq{j}" for j in range(HDR)), "ctr_be", "ctr_le")]
                          for dn in DIRS], np.int64)
_PAIRED = 12  # leading payload bytes a packet is compared on with the previous one of its direction


@njit(cache=True, nogil=True, inline="always")
def _word(b: np.ndarray, at: int, big: bool) -> int:  # pragma: no cover - compiled
    """Bytes at..at+3 of `b` as an unsigned 32-bit value, big- or little-endian."""
    v = 0
    for k in range(4):
        v = (v << 8) | np.int64(b[at + k if big else at + 3 - k])
    return v


@njit(cache=True, nogil=True)
def _fold_payloads(sid: np.ndarray, d: np.ndarray, ts: np.ndarray, plen: np.ndarray, off: np.ndarray,
                   data: np.ndarray, extra: np.ndarray, slot: np.ndarray, last_ts: np.ndarray,
                   last_hdr: np.ndarray, last_len: np.ndarray, cols: np.ndarray, sums: np.ndarray,
                   mins: np.ndarray, maxs: np.ndarray) -> None:  # pragma: no cover - compiled
    """Fold one chunk's payload packets (per row: segment, direction, time, payload length and offset) into
    the chunk's per-segment `sums`, `mins` and `maxs` (columns `cols` per direction; mins/maxs: size then
    gap, per direction), pairing each packet with the previous payload packet of its direction, which an
    earlier chunk may have left in `last_*` (rows `slot`); the last one of each is left there. Sums run in
    capture order, so chunks merge to the same floats whatever their sizes."""
    split = len(data)
    hdr = np.zeros(_PAIRED, np.int64)
    for i in range(len(sid)):
        n = plen[i]
        if n <= 0:
            continue
        s, di = sid[i], d[i]
        c, row = cols[di], slot[s]
        hlen = min(n, _PAIRED)
        for j in range(_PAIRED):
            k = off[i] + j
            hdr[j] = (data[k] if k < split else extra[k - split]) if j < hlen else 0
        size = float(n)
        sums[s, c[0]] += 1.0
        sums[s, c[1]] += size
        sums[s, c[2]] += size * size
        mins[s, di] = min(mins[s, di], size)
        maxs[s, di] = max(maxs[s, di], size)
        prev = last_ts[row, di]
        if prev >= 0:
            gap = (ts[i] - prev) / NS
            sums[s, c[3]] += 1.0
            sums[s, c[4]] += gap
            sums[s, c[5]] += gap * gap
            mins[s, 2 + di] = min(mins[s, 2 + di], gap)
            maxs[s, 2 + di] = max(maxs[s, 2 + di], gap)
            sums[s, c[6]] += 1.0
            both = min(hlen, last_len[row, di])  # bytes real in both packets
            prev_hdr = last_hdr[row, di]
            for j in range(HDR):
                if j < both and hdr[j] == prev_hdr[j]:
                    sums[s, c[7 + j]] += 1.0
            if both >= 8 and 1 <= _word(hdr, 4, True) - _word(prev_hdr, 4, True) <= COUNTER_STEP:
                sums[s, c[7 + HDR]] += 1.0
            if both >= 12 and 1 <= _word(hdr, 8, False) - _word(prev_hdr, 8, False) <= COUNTER_STEP:
                sums[s, c[8 + HDR]] += 1.0
        last_ts[row, di] = ts[i]
        last_len[row, di] = hlen
        for j in range(_PAIRED):
            last_hdr[row, di, j] = hdr[j]


def _entropy(hist: np.ndarray) -> float:
    n = hist.sum()
    if not n:
        return 0.0
    q = hist[hist > 0] / n
    return float(-(q * np.log2(q)).sum())


def _opcode_filter(opcode: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Xue et al.'s opcode filter, as reproduced in OpenVPN4, per row of head packets (`valid` ones):
    distinct count, and the flag that the handshake's first two opcodes (the resets) do not come back
    once four distinct opcodes were seen (distinct among the earlier packets, 4 to 10 in all)."""
    n, width = opcode.shape
    rows, cols = np.nonzero(valid)  # row-major: each row's packets in order
    _, first = np.unique(rows * 256 + opcode[rows, cols], return_index=True)
    new = np.zeros((n, width), np.int64)
    new[rows[first], cols[first]] = 1
    seen_before = np.cumsum(new, axis=1) - new
    distinct = new.sum(axis=1)
    order = np.cumsum(valid, axis=1)  # 1 for a row's first valid packet, 2 for its second
    resets = np.full((n, 2), -1, np.int64)
    for k in (1, 2):
        r, c = np.nonzero(valid & (order == k))
        resets[r, k - 1] = opcode[r, c]
    recur = valid & (seen_before >= 4) & ((opcode == resets[:, :1]) | (opcode == resets[:, 1:]))
    ok = (distinct >= 4) & (distinct <= 10) & ~recur.any(axis=1)
    return np.column_stack([distinct, ok]).astype(np.float64)


def _ack_filter(size: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """ACK candidate size and the count of same-sized (±16 B) payloads per 10-packet bin, per row of head
    packets: the candidate is the first payload of 22-54 B after the first two."""
    pos = np.arange(size.shape[1])
    cand = valid & (pos >= 2) & (size >= 22) & (size <= 54)
    found = cand.any(axis=1)
    ack = np.where(found, size[np.arange(len(size)), np.argmax(cand, axis=1)], 0).astype(np.float64)
    hit = (valid & (np.abs(size - ack[:, None]) <= 16) & found[:, None])[:, :HEAD]
    bins = hit[:, : ACK_BINS * 10].reshape(len(size), ACK_BINS, 10).sum(axis=2)
    return np.column_stack([ack, bins]).astype(np.float64)


# ---------------------------------------------------------------------------------------------- API
def vectors(flows: Sequence[Flow], n_first: int = N_FIRST) -> np.ndarray:
    """Feature matrix (schema order) of flows that ended under a FeaturePlugin."""
    if not flows:
        return np.zeros((0, len(schema(n_first))))
    return _matrix(flows, [f.ext[KEY] for f in flows], n_first)


def index_row(pcap: str, flow: Flow) -> tuple:
    """The non-feature columns that say which flow a row is."""
    return (pcap, flow_id(flow), transport_name(flow.proto), address_text(flow.src), flow.sport,
            address_text(flow.dst), flow.dport)


def extract(captures: Iterable[str | Path], n_first: int = N_FIRST, drop_first: int = 0,
            config: FlowTableConfig | None = None, chunk_frames: int = 262_144) -> pd.DataFrame:
    """One row per flow of every capture: index columns (pcap, flow_id, 5-tuple) then the features.

    `drop_first` withholds each flow's first packets, as `vpnid eval --drop-first` does."""
    import pandas as pd

    from vpnid.features.stream import flows_of

    base = config or FlowTableConfig()
    cfg = FlowTableConfig(base.idle_timeout, base.active_timeout, base.max_flows, drop_first)
    index, blocks = [], []
    for cap in captures:
        plugin = FeaturePlugin(n_first)
        table = FlowTable(catalog.ALL, cfg, plugins=(plugin,))
        for flows in flows_of(str(cap), table, chunk_frames, {}, lambda _m: None):
            index += [index_row(str(cap), f) for f in flows]
            blocks.append(vectors(flows, n_first))
    names = feature_names(n_first)
    feats = np.vstack(blocks) if blocks else np.zeros((0, len(names)))
    df = pd.concat([pd.DataFrame(index, columns=list(INDEX_COLUMNS)), pd.DataFrame(feats, columns=names)], axis=1)
    df.attrs.update(schema_version=SCHEMA_VERSION, n_first=n_first, drop_first=drop_first)
    return df


def to_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write features with the schema (version, units, meanings) in the Parquet metadata, so a file
    documents itself."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    n_first = int(df.attrs.get("n_first", N_FIRST))
    table = pa.Table.from_pandas(df, preserve_index=False)
    docs = {c.name: {"unit": c.unit, "meaning": c.meaning} for c in schema(n_first)}
    meta = dict(table.schema.metadata or {})
    meta[b"vpnid"] = json.dumps({"schema_version": SCHEMA_VERSION, "n_first": n_first,
                                 "drop_first": int(df.attrs.get("drop_first", 0)), "columns": docs}).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
