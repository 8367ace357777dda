"""Bidirectional flows from decoded packet chunks, with dissectors fed along the way.

A flow is keyed direction-free by (transport, the two endpoints); the sender of its first packet is the
initiator (`src`), except that a TCP SYN-ACK names its sender the responder. A flow ends when it has been
idle for `idle_timeout` seconds, when it has lasted `active_timeout` seconds (the next packet starts a new
flow), when a TCP SYN (without ACK) arrives after a FIN or RST (the 5-tuple is being reused), at the end of
the capture, or when the table is full (the least recently seen flows are evicted and counted).

The work per chunk is columnar: packets are grouped by key with one sort, split into segments where a
flow boundary falls, and aggregated per segment with `reduceat`. Python runs once per segment, and once
per packet only for the first payload packets of flows whose dissectors are still undecided.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from operator import attrgetter
from typing import Protocol

import numpy as np
from numba import njit

from vpnid.features.dissectors.base import HEAD_BYTES, Dissector, FlowPacket, FlowPayloads, PacketHeads, State
from vpnid.features.gather import payload_heads
from vpnid.features.packets import PORTED, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, PacketTable

NS = 1_000_000_000
CLOSED, FAILED, PASSED = 0, 1, 2  # the cheap stage's answer for one class on one packet (`Flow.screen`)
KEY_BYTES = 37  # proto(1) + low address(16) + high address(16) + low port(2) + high port(2)


@dataclass(slots=True)
class Verdict:
    """What the deciding dissector said about a flow, kept after the dissector object is dropped."""

    family: str
    confidence: float
    evidence: list[str]
    attributes: dict[str, str]
    packet: int  # flow packet number at which it decided


@dataclass(slots=True)
class Flow:
    """One bidirectional flow; direction 0 is initiator (`src`) to responder (`dst`)."""

    proto: int
    src: bytes  # 16-byte address (IPv4-mapped for IPv4)
    sport: int
    dst: bytes
    dport: int
    first_ns: int
    last_ns: int
    first_frame: int
    packets: list[int] = field(default_factory=lambda: [0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    tcp_flags: list[int] = field(default_factory=lambda: [0, 0])  # OR of flags seen per direction
    end_reason: str = ""  # idle | active | fin | rst | end_of_capture | evicted
    verdict: Verdict | None = None
    pending: list[Dissector] = field(default_factory=list)  # dissectors still undecided
    # Dissector classes whose prefilter has not yet passed or failed for this flow (the cheap stage),
    # the payload packets seen so far while it is deciding (only for windows over one packet), and how
    # many payload packets the flow has shown the cheap stage and its dissectors.
    unscreened: tuple[type[Dissector], ...] = ()
    window: list[FlowPacket] | None = None
    payloads: int = 0
    risks: set[str] = field(default_factory=set)  # raised by dissectors that have left `pending`
    ext: dict[str, object] = field(default_factory=dict)  # plugin state, one key per plugin
    hidden: int = 0  # leading packets withheld by `drop_first` (counted in no other field)
    ahead: int = 0  # next payload packets every dissector in `pending` has taken already (`Dissector.skim`)

    @property
    def total_packets(self) -> int:
        return self.packets[0] + self.packets[1]

    @property
    def undecided(self) -> list[type[Dissector]]:
        """Classes of the dissectors still undecided on this flow: those running and those the cheap stage
        has not yet ruled out (a fresh dissector is undecided)."""
        return [type(d) for d in self.pending] + list(self.unscreened)

    @property
    def closed(self) -> bool:
        """TCP FIN or RST seen: a later SYN reuses the 5-tuple for a new flow."""
        return bool((self.tcp_flags[0] | self.tcp_flags[1]) & (TCP_FIN | TCP_RST))

    def finish(self, reason: str) -> None:
        """Give undecided dissectors their last word and record why the flow ended."""
        for d in self.pending:
            d.on_end()
            if d.state is State.CONFIRMED:
                self._decide(d)
                break
        self._retire(self.pending)
        self.pending = []
        self.unscreened, self.window = (), None
        flags = self.tcp_flags[0] | self.tcp_flags[1]
        if reason in ("idle", "active", "end_of_capture") and flags & TCP_RST:
            reason = "rst"
        elif reason in ("idle", "active", "end_of_capture") and flags & TCP_FIN:
            reason = "fin"
        self.end_reason = reason

    def screen(self, pkt: FlowPacket, passed: list[int], rank: dict[type[Dissector], int]) -> None:
        """The cheap stage's answer on one of the flow's first payload packets, for each class of
        `unscreened` (in that order): PASSED, a class that gets its dissector, fed the packets of the window
        before this one; FAILED, one that is ruled out once its window is over; CLOSED, one ruled out now
        (`Dissector.closes_window`). `rank`: catalog order."""
        keep: list[type[Dissector]] = []
        created: list[Dissector] = []
        for cls, ok in zip(self.unscreened, passed):
            if ok == PASSED:
                d = cls()
                created.append(d)
                for earlier in self.window or ():
                    d.feed(earlier)
            elif ok == FAILED and self.payloads < cls.prefilter_window:
                keep.append(cls)
        self.unscreened = tuple(keep)
        if self.window is not None:
            self.window.append(pkt)
        if keep and self.window is None and max(c.prefilter_window for c in keep) > 1:
            self.window = [pkt]
        if not keep:
            self.window = None
        if not created:
            return
        # The new dissectors join in catalog order (the tie-break), as if they had run from the start.
        for d in created:
            if d.state is State.CONFIRMED:  # confirmed on a packet of the window, before this one
                if not any(p.state is State.CONFIRMED for p in self.pending):
                    self._decide(d)
                    self._retire(self.pending + created)
                    self.pending, self.unscreened, self.window = [], (), None
                    return
        self._retire([d for d in created if d.state is State.REJECTED])
        self.pending = sorted(self.pending + [d for d in created if d.state is State.CANDIDATE],
                              key=lambda d: rank[type(d)])
        self.ahead = min(d.ahead for d in self.pending) if self.pending else 0

    def pass_over(self, n: int = 1) -> None:
        """`n` payload packets that every undecided dissector has taken already (`ahead`)."""
        self.ahead -= n
        for d in self.pending:
            d.ahead -= n

    def feed(self, pkt: FlowPacket) -> None:
        """Hand one payload packet to every undecided dissector; the first to confirm decides."""
        if self.ahead:
            self.pass_over()
            return
        settled = False
        for d in self.pending:
            state = d.feed(pkt)
            if state is State.CONFIRMED:
                self._decide(d)
                self._retire(self.pending)
                self.pending = []
                return
            settled = settled or state is not State.CANDIDATE
        if settled:
            self._retire([d for d in self.pending if d.state is State.REJECTED])
            self.pending = [d for d in self.pending if d.state is State.CANDIDATE]
            self.ahead = min(d.ahead for d in self.pending) if self.pending else 0

    def _decide(self, d: Dissector) -> None:
        self.unscreened, self.window = (), None
        self.verdict = Verdict(d.family, d.confidence, list(d.evidence), dict(d.attributes), d.verdict_packet)

    def _retire(self, done: list[Dissector]) -> None:
        """Keep the risks of dissectors leaving the flow, confirmed, rejected or ended undecided."""
        for d in done:
            self.risks |= d.risks


@dataclass(slots=True)
class Segments:
    """One chunk's packets grouped by flow, handed to plugins so they can work on whole arrays.

    `rows[starts[i]:starts[i+1]]` are the rows of `table` that belong to `flows[i]`, in capture order;
    `direction` is 0/1 per entry of `rows`, relative to that flow's initiator; `before[i]` is how many
    packets `flows[i]` had before this chunk's segment, so `before[i] + j + 1` is the flow packet number.
    """

    table: PacketTable
    rows: np.ndarray
    starts: np.ndarray
    flows: list[Flow]
    before: np.ndarray
    direction: np.ndarray

    def select(self, keep: np.ndarray) -> Segments:
        """The same chunk restricted to the segments where `keep` (one bool per segment) is set."""
        counts = np.diff(np.r_[self.starts, len(self.rows)])
        packet_keep = np.repeat(keep, counts)
        kept = counts[keep]
        starts = np.concatenate(([0], np.cumsum(kept)[:-1])).astype(np.int64) if kept.size else kept
        return Segments(self.table, self.rows[packet_keep], starts,
                        [f for f, k in zip(self.flows, keep.tolist()) if k], self.before[keep],
                        self.direction[packet_keep])


class FlowPlugin(Protocol):
    """Per-flow aggregates beyond the core fields (nfstream-style hooks, but columnar per chunk)."""

    def on_segments(self, seg: Segments) -> None:
        """Fold one chunk's packets into `flow.ext` of each flow."""

    def on_end(self, flow: Flow) -> None:
        """The flow has ended: finish its aggregates."""


@dataclass(slots=True)
class FlowTableConfig:
    idle_timeout: float = 120.0
    active_timeout: float = 1800.0
    max_flows: int = 1_000_000
    # Withhold each flow's first N packets from counters, dissectors, plugins and the initiator choice, as
    # if the capture had started late; the withheld packets still keep the flow alive (timeouts).
    drop_first: int = 0
    # The cheap stage: a flow gets a dissector only once its prefilter passes. False builds every dissector
    # for every flow of its transports (the reference the prefilter test compares against).
    prefilter: bool = True


class FlowTable:
    """Open flows of one capture. `add(table)` per chunk, `drain()` for ended flows, `close()` at the end."""

    def __init__(self, dissectors: Sequence[type[Dissector]], config: FlowTableConfig | None = None,
                 plugins: Sequence[FlowPlugin] = ()) -> None:
        self.dissectors = tuple(dissectors)
        self._rank = {d: i for i, d in enumerate(self.dissectors)}
        # Classes with a compiled stage (`Dissector.skim`): only their dissectors are asked `skims`.
        self._skimmers = frozenset(d for d in self.dissectors if d.skim is not Dissector.skim)
        self._by_proto: dict[int, tuple[type[Dissector], ...]] = {}
        self.config = config or FlowTableConfig()
        self.plugins = tuple(plugins)
        self.open: dict[bytes, Flow] = {}
        # (last_ns, key) of every open flow as each chunk left it, a min-heap: idle flows are found without a
        # look at every open flow per chunk (entries of flows that went on or ended are passed over).
        self._idle: list[tuple[int, bytes]] = []
        self.ended: list[Flow] = []
        self.now_ns = np.iinfo(np.int64).min
        self.stats = {"packets": 0, "flows": 0, "evicted": 0}

    # ---------------------------------------------------------------- chunk processing
    def add(self, t: PacketTable) -> None:
        n = len(t)
        if n == 0:
            return
        cfg = self.config
        idle_ns, active_ns = int(cfg.idle_timeout * NS), int(cfg.active_timeout * NS)
        keys, src_is_lo = _flow_keys(t)
        ukeys, inv = _unique_keys(keys)
        order = _stable_order(inv, len(ukeys))
        inv_s = inv[order]
        ts_s = t.ts_ns[order]
        flags_s = t.tcp_flags[order]
        is_tcp_s = t.proto[order] == 6
        syn_only_s = is_tcp_s & ((flags_s & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        finrst_s = is_tcp_s & ((flags_s & (TCP_FIN | TCP_RST)) != 0)

        # Per unique key: the open flow it continues, if any.
        ukey_bytes = [k.tobytes() for k in ukeys]
        open_flows = [self.open.get(kb) for kb in ukey_bytes]
        has_open = np.fromiter((f is not None for f in open_flows), bool, len(open_flows))
        open_first = np.fromiter((f.first_ns if f else 0 for f in open_flows), np.int64, len(open_flows))
        open_last = np.fromiter((f.last_ns if f else 0 for f in open_flows), np.int64, len(open_flows))
        open_closed = np.fromiter((f.closed if f else False for f in open_flows), bool, len(open_flows))

        first_of_key = np.ones(n, bool)
        first_of_key[1:] = inv_s[1:] != inv_s[:-1]
        bound = first_of_key.copy()
        bound[1:] |= (ts_s[1:] - ts_s[:-1]) > idle_ns

        # Does the first packet of each key continue the open flow?
        fk = np.flatnonzero(first_of_key)
        kk = inv_s[fk]
        continues_key = np.zeros(len(ukeys), bool)
        continues_key[kk] = (
            has_open[kk]
            & (ts_s[fk] - open_last[kk] <= idle_ns)
            & (ts_s[fk] - open_first[kk] <= active_ns)
            & ~(syn_only_s[fk] & open_closed[kk])
        )

        # Split segments where the active timeout runs out or a SYN follows a FIN/RST; repeat until stable.
        csum = np.cumsum(finrst_s)
        while True:
            starts = np.flatnonzero(bound)
            seg = np.cumsum(bound) - 1
            cont = first_of_key[starts] & continues_key[inv_s[starts]]
            t0 = ts_s[starts].copy()
            t0[cont] = open_first[inv_s[starts[cont]]]
            carried = np.zeros(len(starts), np.int64)
            carried[cont] = open_closed[inv_s[starts[cont]]]
            fin_before = csum - finrst_s - (csum[starts] - finrst_s[starts])[seg] + carried[seg]
            viol = ((ts_s - t0[seg]) > active_ns) | (syn_only_s & (fin_before > 0))
            viol[starts] = False
            if not viol.any():
                break
            vpos = np.flatnonzero(viol)
            vseg = seg[vpos]
            bound[vpos[np.r_[True, vseg[1:] != vseg[:-1]]]] = True

        self._apply_segments(t, order, starts, cont, inv_s, ukey_bytes, open_flows, src_is_lo, idle_ns)
        self.stats["packets"] += n
        self.now_ns = max(self.now_ns, int(t.ts_ns.max()))
        self._expire_idle(idle_ns)

    def _apply_segments(
        self,
        t: PacketTable,
        order: np.ndarray,
        starts: np.ndarray,
        cont: np.ndarray,
        inv_s: np.ndarray,
        ukey_bytes: list[bytes],
        open_flows: list[Flow | None],
        src_is_lo: np.ndarray,
        idle_ns: int,
    ) -> None:
        count = np.diff(np.r_[starts, len(order)])
        seg_flows: list[Flow] = []
        seg_keys: list[bytes] = []
        replaced: list[tuple[Flow, int]] = []  # and the successor's start; ended after plugins saw the chunk
        openings = iter(_openings(t, order[starts[~cont]]))
        for c, k, t_first in zip(cont.tolist(), inv_s[starts].tolist(),
                                 np.minimum.reduceat(t.ts_ns[order], starts).tolist()):
            kb = ukey_bytes[k]
            if c:
                flow = open_flows[k]
                assert flow is not None
            else:
                old = self.open.pop(kb, None)
                if old is not None:
                    replaced.append((old, t_first))
                flow = self._new_flow(next(openings))
                self.open[kb] = flow
                open_flows[k] = flow
            seg_flows.append(flow)
            seg_keys.append(kb)
        touched = (seg_flows, seg_keys)
        if self.config.drop_first:
            order, starts, count, seg_flows, seg_keys = self._withhold(t, order, starts, count, seg_flows,
                                                                       seg_keys)
            if not seg_flows:
                self._end_replaced(replaced, idle_ns)
                self._track_idle(*touched)
                return

        lo_s = src_is_lo[order]
        ipb_s = t.ip_bytes[order]
        flags_s = t.tcp_flags[order].astype(np.int64)
        ts_s = t.ts_ns[order]
        has_payload_s = t.payload_len[order] > 0
        first_ts = np.minimum.reduceat(ts_s, starts)
        last_ts = np.maximum.reduceat(ts_s, starts)
        pk_lo = np.add.reduceat(lo_s.astype(np.int64), starts)
        by_all = np.add.reduceat(ipb_s, starts)
        by_lo = np.add.reduceat(np.where(lo_s, ipb_s, 0), starts)
        fl_lo = np.bitwise_or.reduceat(np.where(lo_s, flags_s, 0), starts)
        fl_hi = np.bitwise_or.reduceat(np.where(lo_s, 0, flags_s), starts)
        payload_any = np.add.reduceat(has_payload_s.astype(np.int64), starts) > 0

        seg_lists = (
            seg_flows,
            seg_keys,
            starts.tolist(),
            count.tolist(),
            first_ts.tolist(),
            last_ts.tolist(),
            pk_lo.tolist(),
            by_all.tolist(),
            by_lo.tolist(),
            fl_lo.tolist(),
            fl_hi.tolist(),
            payload_any.tolist(),
        )
        before_seg: list[int] = []
        init_lo_seg: list[bool] = []
        fed: list[tuple[Flow, int, bool, int]] = []  # segments whose payload packets go to dissectors
        fed_at: list[int] = []
        for i, (flow, kb, s0, cnt, t_first, t_last, plo, ball, blo, flo, fhi, anyp) in enumerate(zip(*seg_lists)):
            before = flow.total_packets
            # Map low/high endpoint aggregates onto initiator (0) / responder (1).
            d_lo, d_hi = (0, 1) if self._initiator_is_lo(flow, kb) else (1, 0)
            before_seg.append(before)
            init_lo_seg.append(d_lo == 0)
            flow.packets[d_lo] += plo
            flow.packets[d_hi] += cnt - plo
            flow.bytes[d_lo] += blo
            flow.bytes[d_hi] += ball - blo
            flow.tcp_flags[d_lo] |= flo
            flow.tcp_flags[d_hi] |= fhi
            flow.first_ns = min(flow.first_ns, t_first)
            flow.last_ns = max(flow.last_ns, t_last)
            if anyp and (flow.pending or flow.unscreened):
                fed.append((flow, before, d_lo == 0, _wanted(flow)))
                fed_at.append(i)
        if fed:
            self._feed(fed, t, order, lo_s, has_payload_s, starts[fed_at], count[fed_at])
        if self.plugins:
            direction = (lo_s != np.repeat(np.array(init_lo_seg, bool), count)).astype(np.uint8)
            seg = Segments(t, order, starts, seg_flows, np.array(before_seg, np.int64), direction)
            for plugin in self.plugins:
                plugin.on_segments(seg)
        self._end_replaced(replaced, idle_ns)
        self._track_idle(*touched)

    def _track_idle(self, flows: list[Flow], keys: list[bytes]) -> None:
        """Add the chunk's flows to the idle heap; rebuilt from the open flows once most of its entries are
        stale (flows that went on, ended or were evicted), so it stays within a few times the table's size."""
        if len(self._idle) > 4 * len(self.open) + 4096:
            self._idle = [(f.last_ns, k) for k, f in self.open.items()]
            heapq.heapify(self._idle)
        else:
            for entry in zip([f.last_ns for f in flows], keys):
                heapq.heappush(self._idle, entry)

    def _end_replaced(self, replaced: list[tuple[Flow, int]], idle_ns: int) -> None:
        for old, successor_ns in replaced:
            self._end(old, "idle" if successor_ns - old.last_ns > idle_ns else "active")

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _initiator_is_lo(flow: Flow, key: bytes) -> bool:
        return flow.src == key[1:17] and flow.sport == int.from_bytes(key[33:35], "big")

    def _new_flow(self, opening: Opening) -> Flow:
        """Start a flow at a packet (`_openings`)."""
        proto = opening[0]
        self.stats["flows"] += 1
        classes = self._by_proto.get(proto)
        if classes is None:
            classes = self._by_proto[proto] = tuple(d for d in self.dissectors if proto in d.transports)
        if self.config.prefilter:
            flow = Flow(*opening, unscreened=classes)
        else:
            flow = Flow(*opening, pending=[d() for d in classes])
        return flow

    def _withhold(self, t: PacketTable, order: np.ndarray, starts: np.ndarray, count: np.ndarray,
                  seg_flows: list[Flow], seg_keys: list[bytes]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Flow], list[bytes]]:
        """Take each flow's first `drop_first` packets out of the chunk's segments; a flow is observed
        (initiator, first packet) from its first packet left."""
        n_drop = self.config.drop_first
        hide = np.array([min(c, n_drop - f.hidden) if f.hidden < n_drop else 0
                         for f, c in zip(seg_flows, count.tolist())], np.int64)
        # Withheld packets still keep the flow alive, so idle timeouts see them.
        last_ts = np.maximum.reduceat(t.ts_ns[order], starts).tolist()
        for f, h, last in zip(seg_flows, hide.tolist(), last_ts):
            f.hidden += h
            f.last_ns = max(f.last_ns, last)
        keep = hide < count
        visible = (np.arange(len(order)) - np.repeat(starts, count)) >= np.repeat(hide, count)
        order = order[visible]
        count = count[keep] - hide[keep]
        starts = np.r_[0, np.cumsum(count)[:-1]].astype(starts.dtype)
        seg_flows = [f for f, k in zip(seg_flows, keep.tolist()) if k]
        unseen = [i for i, f in enumerate(seg_flows) if f.total_packets == 0]
        for i, opening in zip(unseen, _openings(t, order[starts[unseen]])):
            f = seg_flows[i]
            f.src, f.sport, f.dst, f.dport, f.first_ns, f.last_ns, f.first_frame = opening[1:]
        return order, starts, count, seg_flows, [kb for kb, k in zip(seg_keys, keep.tolist()) if k]

    def _feed(self, fed: list[tuple[Flow, int, bool, int]], t: PacketTable, order: np.ndarray, lo_s: np.ndarray,
              has_payload_s: np.ndarray, starts: np.ndarray, count: np.ndarray) -> None:
        """Feed the payload packets of the segments in `fed` (flow, its packets before the segment,
        whether its initiator is the key's low end, how many payload packets its dissectors may still
        look at) to their flows' undecided dissectors, in capture order, after the cheap stage has
        decided, for all flows at once, which dissectors the flows' first payload packets call for. The
        packets' fields are read from the table for all these segments at once, as Python values:
        per-packet NumPy scalar reads cost more than most dissectors' own work; a flow no prefilter
        accepted is not visited at all."""
        # Positions (in `order`) of every packet of the fed segments, then of the payload packets the
        # dissectors' budgets leave them to look at.
        first = np.r_[0, np.cumsum(count)[:-1]]
        pos = np.repeat(starts - first, count) + np.arange(int(count.sum()))
        seg = np.repeat(np.arange(len(fed)), count)
        pay = has_payload_s[pos]
        rank = np.cumsum(pay) - 1  # payload packets before, within the segment
        rank -= np.repeat(rank[first] + 1 - pay[first], count)
        flows, before_f, init_lo_f, wanted = zip(*fed)
        pay &= rank < np.repeat(np.array(wanted, np.int64), count)
        pos, seg, rank = pos[pay], seg[pay], rank[pay]
        rows = order[pos]
        init_lo = np.array(init_lo_f, bool)
        # Per fed flow: whether its opening SYN was seen (`FlowPacket.opened`), its transport.
        opened = np.array([_opened(f) for f in flows], bool)
        proto = np.fromiter(map(_PROTO, flows), np.uint8, len(flows))

        # The cheap stage, vectorised over the payload packets it still asks about.
        want = np.array([_screen_rows(f) for f in flows], np.int64)
        screened = rank < want[seg]
        sidx = np.full(len(pos), -1, np.int64)
        codes = np.zeros((0, len(self.dissectors)), np.int8)
        live = np.fromiter(map(bool, map(_PENDING, flows)), bool, len(flows))
        if screened.any():
            srows, sseg = rows[screened], seg[screened]
            in_flow = np.fromiter(map(_PAYLOADS, flows), np.int64, len(flows))[sseg] + rank[screened]
            heads = PacketHeads(proto[sseg], t.payload_len[srows].astype(np.int64),
                                payload_heads(t, srows, HEAD_BYTES),
                                (lo_s[pos[screened]] != init_lo[sseg]).astype(np.uint8), t.tcp_flags[srows],
                                opened[sseg], in_flow, t.data, t.extra, t.payload_off[srows].astype(np.int64))
            # Per row and class: PASSED, FAILED, or CLOSED where a flow's first payload packet fails and
            # closes the class's window (and where the class is not for the flow's transport).
            codes = np.full((len(srows), len(self.dissectors)), CLOSED, np.int8)
            opening = in_flow == 0
            # Each class is asked about the rows of its transports only (classes share few transport sets).
            views: dict[frozenset[int], tuple[np.ndarray, PacketHeads]] = {}
            for j, cls in enumerate(self.dissectors):
                if cls.transports not in views:
                    ours = np.flatnonzero(_transport_table(cls.transports)[heads.proto])
                    views[cls.transports] = ours, heads if len(ours) == len(heads) else heads.take(ours)
                ours, mine = views[cls.transports]
                if not len(ours):
                    continue
                ok = np.asarray(cls.prefilter(mine), bool)
                shut = opening[ours] & np.asarray(cls.closes_window(mine), bool)
                codes[ours, j] = np.where(ok, PASSED, np.where(shut, CLOSED, FAILED))
            # A flow whose classes all closed on its first payload packet is screened no further.
            want[sseg[opening & (codes == CLOSED).all(axis=1)]] = 1
            on = rank[screened] < want[sseg]
            screened[screened] = on
            srows, sseg, codes = srows[on], sseg[on], codes[on]
            sidx[screened] = np.arange(len(srows))
            # A flow lives on if a dissector runs or a prefilter passed one of its packets (or its window
            # stays open past this chunk); the others are ruled out here, without a visit per packet.
            hit = np.zeros(len(fed), bool)
            hit[sseg[(codes == PASSED).any(axis=1)]] = True
            n_screened = np.bincount(sseg, minlength=len(fed))
            live |= hit | (n_screened < want)
            for i in np.flatnonzero(~live & (want > 0)).tolist():
                f = flows[i]
                f.payloads += int(n_screened[i])
                f.unscreened, f.window = (), None
        keep = live[seg]
        pos, seg, rows, sidx = pos[keep], seg[keep], rows[keep], sidx[keep]
        if not len(pos):
            return
        off = t.payload_off[rows]
        data, extra, n = memoryview(t.data), memoryview(t.extra), t.data.size
        before = np.array(before_f, np.int64)[seg]
        answers = codes.tolist()
        col = {cls: j for j, cls in enumerate(self.dissectors)}
        columns: dict[tuple[type[Dissector], ...], list[int]] = {}  # answer columns of each `unscreened`
        rank_of = self._rank
        make = tuple.__new__  # a FlowPacket from its fields in order, without the named tuple's __new__

        def payload(a: int, b: int) -> bytes:
            return data[a:b].tobytes() if a < n else extra[a - n : b - n].tobytes()

        number = before + pos - starts[seg] + 1  # packet number within the flow
        direction = (lo_s[pos] != init_lo[seg]).astype(np.int64)
        number_l, direction_l, ts_l, a_l, b_l, seq_l, flags_l, sidx_l = (
            number.tolist(), direction.tolist(), t.ts_ns[rows].tolist(), off.tolist(),
            (off + t.payload_len[rows]).tolist(), t.tcp_seq[rows].tolist(), t.tcp_flags[rows].tolist(), sidx.tolist())
        # The compiled stage's view of the same packets (`Dissector.skim`): a flow's rest of the chunk.
        seq, offset, length = (t.tcp_seq[rows].astype(np.int64), off.astype(np.int64),
                               t.payload_len[rows].astype(np.int64))
        bounds = np.searchsorted(seg, np.arange(len(fed) + 1)).tolist()
        proto_l, opened_l = proto.tolist(), opened.tolist()
        skimmers = self._skimmers

        def skim(flow: Flow, k: int, end: int) -> None:
            """Hand the flow's packets from position `k` on to its dissectors that can take them in bulk."""
            if k >= end:
                return
            packets = None  # made once, for the first dissector that takes them
            for d in flow.pending:
                if type(d) in skimmers and not d.ahead and d.skims():
                    packets = packets or FlowPayloads(direction[k:end], seq[k:end], offset[k:end], length[k:end],
                                                      t.data, t.extra)
                    d.ahead = d.skim(packets)
                    flow.ahead = min(p.ahead for p in flow.pending)

        # Segment by segment: the screened rows come first in each (the cheap stage asks about a flow's first
        # payload packets), then the rest go to the running dissectors; a flow left with neither is done for
        # this chunk, and packets its dissectors took ahead are passed over together.
        for sid, (k, end) in enumerate(pairwise(bounds)):
            if k == end:
                continue
            flow, proto, opened = flows[sid], proto_l[sid], opened_l[sid]
            skim(flow, k, end)
            while k < end:
                j = sidx_l[k]
                screening = j >= 0 and bool(flow.unscreened)
                if not screening:
                    if not flow.pending:
                        break
                    if flow.ahead:
                        taken = min(flow.ahead, end - k)
                        flow.pass_over(taken)
                        k += taken
                        continue
                pkt = make(FlowPacket, (number_l[k], direction_l[k], ts_l[k] / NS, payload(a_l[k], b_l[k]),
                                        seq_l[k], flags_l[k], proto, opened))
                if screening:
                    flow.payloads += 1
                    ok = answers[j]
                    cols = columns.get(flow.unscreened)
                    if cols is None:
                        cols = columns[flow.unscreened] = [col[c] for c in flow.unscreened]
                    flow.screen(pkt, [ok[c] for c in cols], rank_of)
                if flow.pending:
                    flow.feed(pkt)
                    skim(flow, k + 1, end)
                k += 1

    def _end(self, flow: Flow, reason: str) -> None:
        if flow.total_packets == 0:
            return  # every packet withheld by drop_first: never observed
        flow.finish(reason)
        for plugin in self.plugins:
            plugin.on_end(flow)
        self.ended.append(flow)

    def _expire_idle(self, idle_ns: int) -> None:
        heap, limit = self._idle, self.now_ns - idle_ns
        while heap and heap[0][0] < limit:
            k = heapq.heappop(heap)[1]
            f = self.open.get(k)
            if f is not None and f.last_ns < limit:  # idle longer than idle_ns
                del self.open[k]
                self._end(f, "idle")
        excess = len(self.open) - self.config.max_flows
        if excess > 0:
            victims = sorted(self.open.items(), key=lambda kv: (kv[1].last_ns, kv[0]))[:excess]
            for k, f in victims:
                del self.open[k]
                self._end(f, "evicted")
            self.stats["evicted"] += excess

    # ---------------------------------------------------------------- output
    def drain(self) -> list[Flow]:
        """Flows that ended since the last call, in a stable order (first packet time, then key)."""
        out, self.ended = self.ended, []
        out.sort(key=_flow_order)
        return out

    def close(self) -> list[Flow]:
        """End every open flow (end of capture) and return all flows not yet drained."""
        for f in self.open.values():
            self._end(f, "end_of_capture")
        self.open, self._idle = {}, []
        return self.drain()


def flow_id(flow: Flow) -> str:
    """Deterministic id from the 5-tuple and first packet time (like Zeek's uid, but reproducible)."""
    h = hashlib.blake2b(digest_size=10)
    h.update(bytes([flow.proto]) + flow.src + flow.sport.to_bytes(2, "big") + flow.dst)
    h.update(flow.dport.to_bytes(2, "big") + flow.first_ns.to_bytes(8, "big", signed=True))
    return "F" + base64.b32encode(h.digest()).decode().lower()


@functools.cache
def _transport_table(transports: frozenset[int]) -> np.ndarray:
    """Per IP protocol number: whether it is one of `transports` (a lookup, not `np.isin`'s sort per call)."""
    return np.isin(np.arange(256), list(transports))


@functools.cache
def _limits(classes: tuple[type[Dissector], ...]) -> tuple[int, int]:
    """The largest budget and prefilter window among `classes` (a flow's `unscreened`; few distinct)."""
    return max(c.budget for c in classes), max(c.prefilter_window for c in classes)


def _wanted(flow: Flow) -> int:
    """Payload packets the flow's undecided dissectors may still look at (each gives up at its budget),
    counting those the cheap stage has not ruled out yet."""
    screening = [_limits(flow.unscreened)[0] - flow.payloads] if flow.unscreened else []
    return max([d.budget - d.seen for d in flow.pending] + screening)


_PROTO, _PENDING, _PAYLOADS = attrgetter("proto"), attrgetter("pending"), attrgetter("payloads")


def _opened(flow: Flow) -> bool:
    """TCP: the flow's opening SYN was seen (`FlowPacket.opened`)."""
    return bool((flow.tcp_flags[0] | flow.tcp_flags[1]) & TCP_SYN)


def _screen_rows(flow: Flow) -> int:
    """How many of the flow's next payload packets the cheap stage still asks about."""
    return _limits(flow.unscreened)[1] - flow.payloads if flow.unscreened else 0


# A flow's fields from the packet that starts it: proto, src, sport, dst, dport, first_ns, last_ns, first_frame.
Opening = tuple[int, bytes, int, bytes, int, int, int, int]


def _openings(t: PacketTable, rows: np.ndarray) -> list[Opening]:
    """The opening fields of flows starting at `rows`, read for all of them at once: a packet's sender is
    the initiator unless it is a TCP SYN-ACK."""
    proto, flags = t.proto[rows], t.tcp_flags[rows]
    synack = (proto == 6) & ((flags & (TCP_SYN | TCP_ACK)) == TCP_SYN | TCP_ACK)
    src, dst = np.where(synack, t.dst[rows], t.src[rows]), np.where(synack, t.src[rows], t.dst[rows])
    sport = np.where(synack, t.dport[rows], t.sport[rows])
    dport = np.where(synack, t.sport[rows], t.dport[rows])
    ts = t.ts_ns[rows].tolist()
    return list(zip(proto.tolist(), src.tolist(), sport.tolist(), dst.tolist(), dport.tolist(), ts, ts,
                    t.frame[rows].tolist()))


def _flow_order(f: Flow) -> tuple[int, int, bytes, int, bytes, int, int]:
    return (f.first_ns, f.proto, f.src, f.sport, f.dst, f.dport, f.first_frame)


@njit(cache=True, nogil=True)
def _key_hashes(buf: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """A 64-bit hash of each row of `buf` (n, KEY_BYTES): its bytes as little-endian words, mixed."""
    n, width = buf.shape
    out = np.empty(n, np.uint64)
    for i in range(n):
        h = np.uint64(0)
        for w in range(0, width, 8):
            word = np.uint64(0)
            for b in range(min(8, width - w)):
                word |= np.uint64(buf[i, w + b]) << np.uint64(8 * b)
            h = word if w == 0 else (h * np.uint64(0x9E3779B97F4A7C15)) ^ word
        out[i] = h
    return out


@njit(cache=True, nogil=True)
def _group_rows(buf: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Rows of `buf` (n, width) grouped by their bytes in one pass over an open-addressing table keyed by
    `hashes`: the first row of each group, in order of first appearance, and each row's group. Rows whose
    hashes collide are told apart by their bytes, so the hash only has to spread them."""
    n, width = buf.shape
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    table = np.full(size, -1, np.int64)
    first = np.empty(n, np.int64)
    group = np.empty(n, np.int64)
    groups = 0
    for i in range(n):
        h = hashes[i]
        j = (h ^ (h >> np.uint64(31))) & mask
        while True:
            g = table[j]
            if g < 0:
                table[j] = groups
                first[groups] = i
                group[i] = groups
                groups += 1
                break
            r = first[g]
            if hashes[r] == h:
                b = 0
                while b < width and buf[r, b] == buf[i, b]:
                    b += 1
                if b == width:
                    group[i] = g
                    break
            j = (j + np.uint64(1)) & mask
    return first[:groups], group


@njit(cache=True, nogil=True)
def _stable_order(inv: np.ndarray, groups: int) -> np.ndarray:  # pragma: no cover - compiled
    """`np.argsort(inv, kind="stable")` for group ids 0..groups-1, as a counting sort (one pass to count,
    one to place)."""
    start = np.zeros(groups + 1, np.int64)
    for g in inv:
        start[g + 1] += 1
    for g in range(groups):
        start[g + 1] += start[g]
    order = np.empty(len(inv), np.int64)
    for i in range(len(inv)):
        g = inv[i]
        order[start[g]] = i
        start[g] += 1
    return order


def _unique_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(keys, return_inverse=True)` for flow keys, without sorting 37-byte values per packet
    (a memcmp sort, ~0.4 s per million packets) or even their 64-bit hashes: packets are grouped by key in
    one compiled pass (`_group_rows`), and only the few distinct keys are sorted."""
    n = len(keys)
    buf = keys.view(np.uint8).reshape(n, KEY_BYTES)
    first, group = _group_rows(buf, _key_hashes(buf))
    reps = keys[first]
    order = np.argsort(reps)  # byte order of the distinct keys, as np.unique gives them
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return reps[order], rank[group]


@njit(cache=True, nogil=True)
def _key_rows(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray, proto: np.ndarray,
              ported: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    n = len(proto)
    buf = np.empty((n, KEY_BYTES), np.uint8)
    src_is_lo = np.empty(n, np.bool_)
    for i in range(n):
        sp = sport[i] if ported[proto[i]] else 0
        dp = dport[i] if ported[proto[i]] else 0
        lo = sp <= dp  # the addresses decide first, byte by byte (big-endian: numeric order)
        for b in range(16):
            if src[i, b] != dst[i, b]:
                lo = src[i, b] < dst[i, b]
                break
        src_is_lo[i] = lo
        a, z = (src, dst) if lo else (dst, src)
        lp, hp = (sp, dp) if lo else (dp, sp)
        buf[i, 0] = proto[i]
        for b in range(16):
            buf[i, 1 + b] = a[i, b]
            buf[i, 17 + b] = z[i, b]
        buf[i, 33], buf[i, 34] = lp >> 8, lp & 0xFF
        buf[i, 35], buf[i, 36] = hp >> 8, hp & 0xFF
    return buf, src_is_lo


_PORTED_TABLE = np.array([p in PORTED for p in range(256)])


def _flow_keys(t: PacketTable) -> tuple[np.ndarray, np.ndarray]:
    """Direction-free key per packet (big-endian bytes, so byte order is numeric order) and whether
    the packet's sender is the key's low endpoint."""
    n = len(t)
    src = np.ascontiguousarray(t.src).view(np.uint8).reshape(n, 16)
    dst = np.ascontiguousarray(t.dst).view(np.uint8).reshape(n, 16)
    buf, src_is_lo = _key_rows(src, dst, t.sport.astype(np.int64), t.dport.astype(np.int64),
                               t.proto.astype(np.int64), _PORTED_TABLE)
    return buf.view(f"V{KEY_BYTES}").ravel(), src_is_lo
