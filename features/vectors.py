"""Per-flow feature vectors for the trained classifier: a versioned schema and the plugin that fills it.

Signatures need a handshake or a well-formed message; a capture that starts mid-flow, or a disguised
tunnel, leaves only the flow's shape. The features describe that shape without anything that names a
host or a moment: no addresses, ports, TTLs or absolute times (a model that learns those learns the lab,
not the protocol). Every column is listed in `schema()` with its unit and meaning; bump
`SCHEMA_VERSION` whenever a column is added, removed or changes meaning, so a model trained on one
layout is never fed another.

The plugin is columnar: per chunk it computes partial aggregates for every flow at once with numpy
(counts, sums, sums of squares, minima and maxima, so chunks merge exactly) and folds them into one row
per flow of its tables with fancy indexing. A flow's first `HEAD` payload packets (size, opcode byte,
and for the first `n_first` direction and time) are written into that row too, and the feature rows of
ended flows are computed from copies of those rows, column by column over a drained batch.
"""

from __future__ import annotations

import functools
import threading
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


def _columns(head_len: int, n_first: int) -> dict[str, tuple[tuple[int, ...], type, float]]:
    """Per-row columns of `_Tables`: (shape of a row, dtype, value of a fresh row)."""
    return {
        "sums": ((len(_SUMS),), np.float64, 0.0),
        "mins": ((len(_EXTREMES),), np.float64, np.inf),
        "maxs": ((len(_EXTREMES),), np.float64, -np.inf),
        "last_ts": ((2,), np.int64, -1),  # per direction: last payload packet's time
        "last_hdr": ((2, _PAIRED), np.uint8, 0),  # its first bytes
        "last_len": ((2,), np.int64, 0),  # and how many of them are real
        "payloads": ((), np.int64, 0),
        "hist": ((256,), np.uint16, 0),  # bytes of the leading payloads (<= 8 * 256 each: fits)
        # The first `head_len` payload packets (0 beyond them): size and OpenVPN opcode (255: payload too
        # short), and for the first `n_first` the direction (+1 fwd, -1 bwd) and time.
        "size": ((head_len,), np.int32, 0),
        "opcode": ((head_len,), np.uint8, 0),
        "dir": ((n_first,), np.int8, 0),
        "ts": ((n_first,), np.int64, 0),
        "undecided": ((), np.uint8, 0),  # bit k: a dissector of SIG_FAMILIES[k] still undecided at last look
    }


# The columns an ended flow's feature row is made from; the others only serve open flows.
_FINAL = ("sums", "mins", "maxs", "payloads", "hist", "size", "opcode", "dir", "ts", "undecided")


@dataclass(slots=True, eq=False)
class _Ended:
    """Flows that ended between two flushes of their tables: their rows, then (once flushed) copies of
    those rows' `_FINAL` columns, in the same order. Each such flow holds (this, its index)."""

    tables: _Tables
    rows: list[int] = field(default_factory=list)
    final: dict[str, np.ndarray] | None = None


class _Tables:
    """A plugin's per-flow state, one row per open flow (everything here merges exactly across chunks): a
    chunk folds into all its flows' rows with a few fancy-indexed operations, without a Python object per
    flow. Rows of ended flows are copied out together (`flush`) and reused.

    The batch thread of `vpnid classify` may flush (in `vectors`) while the flow table takes the next
    chunk, which also flushes and allocates: the lock keeps the free list and the pending rows whole."""

    def __init__(self, head_len: int, n_first: int, capacity: int = 1024) -> None:
        self.spec = _columns(head_len, n_first)
        self.cols = {name: np.zeros((capacity, *shape), dtype) for name, (shape, dtype, _) in self.spec.items()}
        self.free = list(range(capacity - 1, -1, -1))
        self.pending = _Ended(self)
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:  # a flow table carried over to another process pickles its plugins
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.Lock())

    def alloc(self, n: int) -> np.ndarray:
        """n fresh rows."""
        with self.lock:
            if n > len(self.free):
                old = len(self.cols["payloads"])
                new = max(2 * old, old + n)
                for name, a in self.cols.items():
                    grown = np.zeros((new, *a.shape[1:]), a.dtype)
                    grown[:old] = a
                    self.cols[name] = grown
                self.free[:0] = range(new - 1, old - 1, -1)
            rows = np.array(self.free[len(self.free) - n:][::-1], np.int64)
            del self.free[len(self.free) - n:]
        for name, (_, _, fresh) in self.spec.items():
            self.cols[name][rows] = fresh
        return rows

    def drop(self, row: int) -> None:
        """The row of an ended flow whose vector is not wanted is free again. No lock: this runs on the
        flow table's thread, as `alloc` does, and a list append cannot interleave with `flush`'s extend."""
        self.free.append(row)

    def end(self, row: int) -> tuple[_Ended, int]:
        """Keep an ended flow's row until the next flush copies it out: the flow's handle to its copy."""
        with self.lock:
            ended = self.pending
            ended.rows.append(row)
            return ended, len(ended.rows) - 1

    def flush(self) -> None:
        """Copy the final columns of the flows ended since the last flush, all at once, and free their rows."""
        with self.lock:
            ended = self.pending
            if not ended.rows:
                return
            rows = np.array(ended.rows, np.int64)
            ended.final = {name: self.cols[name][rows] for name in _FINAL}
            self.free += ended.rows
            self.pending = _Ended(self)


class FeaturePlugin:
    """Flow-table plugin that keeps each flow's aggregates in a row of its tables (`flow.ext["vectors"]`
    holds the row, then a handle to the ended flow's copy); `vectors` makes the feature rows (schema
    order) of ended flows from them."""

    def __init__(self, n_first: int = N_FIRST, undecided_only: bool = False, min_packets: int = 0) -> None:
        self.n_first = n_first
        self.head_len = max(HEAD, n_first)
        # Classification needs vectors only where no signature decided and the flow is long enough for
        # the model; feature extraction wants every flow (the defaults). Other flows' rows are freed as
        # they end, and the undecided families are looked up only for flows already long enough.
        self.undecided_only = undecided_only
        self.min_packets = min_packets
        self.tables = _Tables(self.head_len, n_first)
        # (running dissector classes, unscreened classes) -> bits of the families still undecided
        self._families: dict[tuple, int] = {}

    # ------------------------------------------------------------------ per chunk
    def on_segments(self, seg: Segments) -> None:
        T = self.tables
        T.flush()  # rows of the flows that ended since the last chunk are reused from here on
        flows = seg.flows
        if self.undecided_only:  # -2: decided, no vector wanted
            slot = np.array([f.ext.get(KEY, -1) if f.verdict is None else -2 for f in flows], np.int64)
            keep = slot != -2
            if not keep.all():
                seg, slot = seg.select(keep), slot[keep]
                flows = seg.flows
            if not flows:
                return
        else:
            slot = np.array([f.ext.get(KEY, -1) for f in flows], np.int64)
        new = np.flatnonzero(slot < 0)
        if len(new):
            slot[new] = rows = T.alloc(len(new))
            for i, row in zip(new.tolist(), rows.tolist()):
                flows[i].ext[KEY] = row
        c = T.cols
        t, rows, starts = seg.table, seg.rows, seg.starts
        n_seg = len(flows)
        counts = np.diff(np.r_[starts, len(rows)])
        sid = np.repeat(np.arange(n_seg), counts)
        d = seg.direction.astype(np.int64)
        plen = t.payload_len[rows].astype(np.int64)
        ts = t.ts_ns[rows]
        flags = t.tcp_flags[rows].astype(np.int64)
        has = plen > 0

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
                       c["last_ts"], c["last_hdr"], c["last_len"], _FOLD_COLUMNS, sums, mins, maxs)

        # Rank of each payload packet within its flow (capture order), for the head and the entropy.
        payloads_before = c["payloads"][slot]
        cum = np.cumsum(has)
        rank = np.zeros(len(rows), np.int64)
        rank[has] = (cum - 1 - (cum[starts] - has[starts])[sid])[has] + payloads_before[sid[has]]
        lead = np.flatnonzero(has & (rank < ENTROPY_PACKETS))  # bytes of the leading payloads: the entropy
        count_bytes(t, rows[lead], ENTROPY_BYTES, c["hist"], slot[sid[lead]])
        young = np.flatnonzero(has & (rank < self.head_len))  # head packets, into the flows' head columns
        opcode_at = np.where(t.proto[rows[young]] == IPPROTO_TCP, 2, 0)
        ohdr, olen = _header_bytes(t, rows[young], 3)
        at = slot[sid[young]], rank[young]
        c["size"][at] = plen[young]
        c["opcode"][at] = np.where(olen > opcode_at, ohdr[np.arange(len(young)), opcode_at] >> 3, 255)
        first = young[rank[young] < self.n_first]
        at = slot[sid[first]], rank[first]
        c["dir"][at], c["ts"][at] = 1 - 2 * d[first], ts[first]

        c["sums"][slot] += sums
        c["mins"][slot] = np.minimum(c["mins"][slot], mins)
        c["maxs"][slot] = np.maximum(c["maxs"][slot], maxs)
        c["payloads"][slot] += np.bincount(sid[has], minlength=n_seg)
        # A flow's last look counts (its packets are all in then); flows below min_packets get no vector.
        ask = np.flatnonzero(seg.before + counts >= self.min_packets).tolist()
        c["undecided"][slot[ask]] = [self._undecided(flows[i]) for i in ask]

    def _undecided(self, flow: Flow) -> int:
        """Bits (SIG_FAMILIES order) of the families whose dissectors are still undecided on the flow."""
        if not (flow.pending or flow.unscreened):
            return 0
        key = (tuple(map(type, flow.pending)), flow.unscreened)
        bits = self._families.get(key)
        if bits is None:
            fams = {cls.family for cls in flow.undecided if cls.feature_state}
            bits = self._families[key] = sum(1 << k for k, fam in enumerate(SIG_FAMILIES) if fam in fams)
        return bits

    # ------------------------------------------------------------------ per flow
    def on_end(self, flow: Flow) -> None:
        """Keep the row of a flow the vector is wanted for until the next flush copies it out with the
        others (`vectors` reads those copies for a drained batch at once); free the others."""
        row = flow.ext.get(KEY)
        if row is None:
            return
        if flow.total_packets < self.min_packets or (self.undecided_only and flow.verdict is not None):
            del flow.ext[KEY]
            self.tables.drop(row)
        else:
            flow.ext[KEY] = self.tables.end(row)


def _final(flows: Sequence[Flow]) -> dict[str, np.ndarray]:
    """The final columns of ended flows (one row each, in order), flushing their tables if need be."""
    ended, index = zip(*[f.ext[KEY] for f in flows])
    groups = list(dict.fromkeys(ended))  # usually one or two per drained batch
    for e in groups:
        if e.final is None:
            e.tables.flush()
    index = np.array(index, np.int64)
    if len(groups) == 1:
        return {name: col[index] for name, col in groups[0].final.items()}
    offset, at = {}, 0
    for e in groups:
        offset[e], at = at, at + len(e.rows)
    index += np.array([offset[e] for e in ended], np.int64)
    return {name: np.concatenate([e.final[name] for e in groups])[index] for name in _FINAL}


def _head_features(final: dict[str, np.ndarray], n_first: int) -> np.ndarray:
    """Entropy (from the byte histograms), opcode/ACK filters and the first-N sequence from the head
    columns of `_final` rows, for all of them at once."""
    size, opcode = final["size"].astype(np.int64), final["opcode"].astype(np.int64)
    n, width = size.shape
    valid = np.arange(width) < final["payloads"][:, None]
    ts = final["ts"]
    seq = np.zeros((n, n_first, 3))
    seq[:, :, 0] = size[:, :n_first]
    seq[:, :, 1] = final["dir"]
    seq[:, 1:, 2] = np.where(valid[:, 1:n_first], (ts[:, 1:] - ts[:, :-1]) / NS, 0.0)
    return np.column_stack([_entropy(final["hist"]), _opcode_filter(opcode, valid & (opcode != 255)),
                            _ack_filter(size, valid), seq.reshape(n, -1)])


@functools.cache
def _families_run() -> np.ndarray:
    """Per transport number and family in SIG_FAMILIES: whether a dissector of its feature state runs on it."""
    return np.array([[any(fam == dis.family and proto in dis.transports and dis.feature_state for dis in catalog.ALL)
                      for fam in SIG_FAMILIES] for proto in range(256)])


def _sig_states(flows: Sequence[Flow], proto: np.ndarray, undecided: np.ndarray) -> np.ndarray:
    """Per flow and family in SIG_FAMILIES: what its dissectors made of the flow."""
    verdict = np.array([f.verdict.family if f.verdict else "" for f in flows], object)
    ran = _families_run()[proto]
    sig = np.empty((len(flows), len(SIG_FAMILIES)))
    for k, fam in enumerate(SIG_FAMILIES):
        sig[:, k] = np.where(verdict == fam, SIG_STATE["confirmed"],
                             np.where(undecided & (1 << k), SIG_STATE["undecided"],
                                      np.where(ran[:, k], SIG_STATE["rejected"], SIG_STATE["not_run"])))
    return sig


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0."""
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def _matrix(flows: Sequence[Flow], n_first: int) -> np.ndarray:
    """Feature rows of ended flows, column by column over all of them (the same IEEE operations, so the
    same values, as computing them flow by flow)."""
    final = _final(flows)
    s, mins, maxs = final["sums"], final["mins"], final["maxs"]
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
    return np.hstack([np.column_stack(cols).astype(np.float64), _head_features(final, n_first),
                      _sig_states(flows, proto, final["undecided"])])


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


def _entropy(hist: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of byte counts. Rows are summed in groups of the same number of
    distinct bytes, so each sum runs over exactly that row's terms, in the order (and to the same float)
    of a sum over that row alone."""
    total = hist.sum(axis=1)
    r, c = np.nonzero(hist)
    q = hist[r, c] / total[r]
    terms = q * np.log2(q)
    distinct = np.bincount(r, minlength=len(hist))
    start = np.cumsum(distinct) - distinct
    out = np.zeros(len(hist))
    for k in np.unique(distinct[distinct > 0]).tolist():
        rows = np.flatnonzero(distinct == k)
        out[rows] = -terms[start[rows, None] + np.arange(k)].sum(axis=1)
    return out


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
    return _matrix(flows, n_first)


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
