"""Attribution: which subscriber held a flow's client address (behind CGNAT: its public address and
port) at the flow's first packet, for a million flows at once.

Intervals are half-open, [start, end) in epoch milliseconds (an open end holds for ever). An address
lease is found by (address, time); a CGNAT port block first by (public address, port), then by time.
Addresses are (hi, lo) uint64 halves with IPv4 folded into hi = 2**64 - 1 (no lease is ever for
ffff:ffff:ffff:ffff::/64, multicast), ranked into dense group ids; times are replaced by their rank among
every start and end of the log, so a group and a time make one int64 key and one `np.searchsorted` on
the sorted interval keys finds the last interval of the group starting at or before the flow. That
interval holds the flow if it ends after it. Whether an *earlier* interval of the group still holds
the time too is told by the running maximum of the group's end ranks: where it does, the flow is
looked at alone (a few, in Python) and every holder is found; one subscriber holding the address by
two logs is no ambiguity, two subscribers are, and are reported as an overlap with both named, never
guessed. An address the log knows but nobody held at that time is a gap; one it does not know is not
attributed. Cost: O((flows + intervals) log intervals), never flows x intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("radius", "dhcp", "cgnat")
RADIUS, DHCP, CGNAT = range(len(KINDS))
# how a flow's subscriber was found (`attributed_by`): the verdict adds 'network' when a registration's
# client network decided it
NONE_FOUND, BY_LEASE, BY_CGNAT = 0, 1, 2
# what went wrong (`attribution_issue`)
NO_ISSUE, GAP, OVERLAP = 0, 1, 2
ISSUES = (None, "gap", "overlap")
V4_HI = np.uint64((1 << 64) - 1)
OPEN_END = np.iinfo(np.int64).max
_PORTS = 1 << 17  # > any port: slot keys are address * _PORTS + first port


@dataclass(frozen=True, slots=True)
class LeaseColumns:
    """Intervals as columns (what the store loads and the benchmark makes)."""

    kind: np.ndarray  # int8 index into KINDS
    subscriber: np.ndarray  # int64 index into subscribers
    subscribers: tuple[str, ...]
    hi: np.ndarray  # uint64 address halves, IPv4 as (V4_HI, address)
    lo: np.ndarray
    port_first: np.ndarray  # int64; -1: a lease of the whole address
    port_last: np.ndarray
    start: np.ndarray  # int64 epoch ms
    end: np.ndarray  # int64 epoch ms, OPEN_END when open

    def __len__(self) -> int:
        return len(self.start)


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values by sorting (numpy's hash-based unique is several times slower here)."""
    s = np.sort(a)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _rank_of(sorted_unique: np.ndarray, values: np.ndarray) -> np.ndarray:
    i = np.searchsorted(sorted_unique, values)
    found = (i < len(sorted_unique)) & (sorted_unique[np.minimum(i, max(len(sorted_unique) - 1, 0))] == values) \
        if len(sorted_unique) else np.zeros(len(values), bool)
    return np.where(found, i, -1)


@dataclass(frozen=True, slots=True)
class _Addresses:
    """Dense ids for addresses: hi and lo halves ranked apart, their pair ranked again."""

    his: np.ndarray
    los: np.ndarray
    pairs: np.ndarray  # sorted unique hi_rank * len(los) + lo_rank

    @classmethod
    def of(cls, hi: np.ndarray, lo: np.ndarray) -> tuple[_Addresses, np.ndarray]:
        his, los = _unique(hi), _unique(lo)
        pair = np.searchsorted(his, hi).astype(np.int64) * len(los) + np.searchsorted(los, lo)
        pairs = _unique(pair)
        return cls(his, los, pairs), np.searchsorted(pairs, pair)

    def ids(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Dense id per address, -1 for one not in the log."""
        rh, rl = _rank_of(self.his, hi), _rank_of(self.los, lo)
        ok = (rh >= 0) & (rl >= 0)
        out = np.full(len(hi), -1, np.int64)
        out[ok] = _rank_of(self.pairs, rh[ok] * len(self.los) + rl[ok])
        return out


@dataclass(frozen=True, slots=True)
class _Timeline:
    """Intervals of groups (addresses or port-block slots) on ranked time, sorted by (group, start)."""

    times: np.ndarray  # sorted unique starts and finite ends
    width: int  # len(times) + 2: ranks are 0 .. len(times), open ends len(times) + 1
    keys: np.ndarray  # group * width + start rank, sorted
    group: np.ndarray
    end_rank: np.ndarray
    prev_end: np.ndarray  # max end rank of the group's earlier intervals; -1 for a group's first
    rows: np.ndarray  # the interval's row in the LeaseColumns

    @classmethod
    def build(cls, group: np.ndarray, start: np.ndarray, end: np.ndarray, rows: np.ndarray) -> _Timeline:
        times = _unique(np.concatenate([start, end[end != OPEN_END]]))
        width = len(times) + 2
        s_rank = np.searchsorted(times, start, "right")
        e_rank = np.where(end == OPEN_END, width - 1, np.searchsorted(times, end, "right"))
        keys = group * width + s_rank
        order = np.lexsort((e_rank, keys))
        keys, group, e_rank, rows = keys[order], group[order], e_rank[order], rows[order]
        running = np.maximum.accumulate(group * width + e_rank) if len(keys) else keys
        prev = np.r_[-1, running[:-1]] - group * width
        return cls(times, width, keys, group, e_rank, np.where(prev >= 0, prev, -1), rows)

    def find(self, group: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the holding interval's row (-1: none) and whether it needs a closer look (another
        interval of the group may hold the time too)."""
        if not len(self.keys):
            return np.full(len(t), -1, np.int64), np.zeros(len(t), bool)
        q = np.searchsorted(self.times, t, "right")
        pos = np.searchsorted(self.keys, group * self.width + q, "right") - 1
        safe = np.maximum(pos, 0)
        inside = (group >= 0) & (pos >= 0) & (self.group[safe] == group)
        held = inside & (self.end_rank[safe] > q)
        return np.where(held, self.rows[safe], -1), inside & (self.prev_end[safe] > q)


@dataclass(frozen=True, slots=True)
class Attribution:
    """Per flow end: the subscriber (index into `subscribers`, -1 none), how it was found (NONE_FOUND,
    BY_LEASE, BY_CGNAT), the issue (NO_ISSUE, GAP, OVERLAP), and for overlaps every candidate."""

    subscriber: np.ndarray
    by: np.ndarray
    issue: np.ndarray
    candidates: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeaseIndex:
    """Build with `LeaseIndex.build(columns)`, then `attribute` flow ends."""

    columns: LeaseColumns
    addresses: _Addresses  # of every interval (CGNAT public addresses included)
    addr_id: np.ndarray  # per interval
    plain: _Timeline  # address leases by address id
    slot_keys: np.ndarray  # CGNAT slots (address id, first port, last port), sorted by address, first port
    slot_addr: np.ndarray
    slot_last: np.ndarray
    slot_prev_last: np.ndarray  # running max of earlier slots' last port, same address (-1 none)
    blocks: _Timeline  # port blocks by slot
    cgnat_addr: np.ndarray  # sorted unique address ids that have port blocks
    by_addr: np.ndarray  # interval rows sorted by address id, for the closer look
    by_addr_id: np.ndarray

    @classmethod
    def build(cls, c: LeaseColumns) -> LeaseIndex:
        addresses, addr_id = _Addresses.of(c.hi, c.lo)
        rows = np.arange(len(c), dtype=np.int64)
        blocked = c.port_first >= 0
        plain = _Timeline.build(addr_id[~blocked], c.start[~blocked], c.end[~blocked], rows[~blocked])
        b = rows[blocked]
        # a slot is (address, first port, last port), packed in one int64 (addresses < 2**29)
        slot = (addr_id[b] * _PORTS + c.port_first[b]) * _PORTS + c.port_last[b]
        slots = _unique(slot)
        slot_of = np.searchsorted(slots, slot)
        s_addr, s_first, s_last = slots // (_PORTS * _PORTS), slots // _PORTS % _PORTS, slots % _PORTS
        running = np.maximum.accumulate(s_addr * _PORTS + s_last) if len(slots) else s_last
        prev = np.r_[-1, running[:-1]] - s_addr * _PORTS
        blocks = _Timeline.build(slot_of.astype(np.int64), c.start[b], c.end[b], b)
        order = np.argsort(addr_id, kind="stable")
        return cls(c, addresses, addr_id, plain, s_addr * _PORTS + s_first, s_addr, s_last,
                   np.where(prev >= 0, prev, -1), blocks, _unique(s_addr), order, addr_id[order])

    def attribute(self, v6: np.ndarray, hi: np.ndarray, lo: np.ndarray, port: np.ndarray,
                  t_ms: np.ndarray) -> Attribution:
        """Attribute flow ends: address (hi, lo; IPv4 with v6 False as FlowBatch has it), port, time."""
        n = len(t_ms)
        hi = np.where(v6, hi, V4_HI)
        addr = self.addresses.ids(hi, lo)
        sub = np.full(n, -1, np.int64)
        by = np.zeros(n, np.int8)
        issue = np.zeros(n, np.int8)
        known = addr >= 0
        # CGNAT: the slot holding the port, then the block holding the time
        pos = np.searchsorted(self.slot_keys, addr * _PORTS + port, "right") - 1
        safe = np.maximum(pos, 0)
        has_slots = len(self.slot_keys) > 0
        in_slot = known & (pos >= 0) & has_slots
        if has_slots:
            in_slot &= (self.slot_addr[safe] == addr) & (self.slot_last[safe] >= port)
        slot_crowded = known & (pos >= 0) & has_slots
        if has_slots:
            slot_crowded &= (self.slot_addr[safe] == addr) & (self.slot_prev_last[safe] >= port)
        row_c, look_c = self.blocks.find(np.where(in_slot, safe, -1), t_ms)
        look_c |= slot_crowded
        row_a, look_a = self.plain.find(addr, t_ms)
        row = np.where(row_c >= 0, row_c, row_a)
        sub[row >= 0] = self.columns.subscriber[row[row >= 0]]
        by[row >= 0] = np.where(self.columns.kind[row[row >= 0]] == CGNAT, BY_CGNAT, BY_LEASE)
        issue[known & (row < 0)] = GAP
        candidates: dict[int, tuple[str, ...]] = {}
        for i in np.flatnonzero(look_c | look_a).tolist():
            sub[i], by[i], issue[i], names = self._closer_look(int(addr[i]), int(port[i]), int(t_ms[i]))
            if names:
                candidates[i] = names
        return Attribution(sub, by, issue, candidates)

    def _closer_look(self, addr: int, port: int, t: int) -> tuple[int, int, int, tuple[str, ...]]:
        """Every interval holding (addr, port) at t; one subscriber among them is an attribution."""
        c = self.columns
        lo, hi = np.searchsorted(self.by_addr_id, addr, "left"), np.searchsorted(self.by_addr_id, addr, "right")
        r = self.by_addr[lo:hi]
        holds = (c.start[r] <= t) & (t < c.end[r]) & ((c.port_first[r] < 0) | (
            (c.port_first[r] <= port) & (port <= c.port_last[r])))
        r = r[holds]
        blocked = r[c.port_first[r] >= 0]
        r = blocked if len(blocked) else r  # a port block is more specific than a lease of the address
        subs = np.unique(c.subscriber[r])
        if len(subs) == 0:
            return -1, NONE_FOUND, GAP, ()
        if len(subs) == 1:
            return int(subs[0]), BY_CGNAT if (c.kind[r] == CGNAT).any() else BY_LEASE, NO_ISSUE, ()
        return -1, NONE_FOUND, OVERLAP, tuple(c.subscribers[s] for s in subs)

    def attribute_flows(self, b, *, first_ms: np.ndarray) -> tuple[Attribution, np.ndarray]:
        """Attribute each flow of a FlowBatch by its initiator (src address and port) and, where the
        log knows nothing of the initiator, by its responder (a capture that began mid-flow). Returns
        the attribution and the client side per flow (0: src, 1: dst)."""
        src = self.attribute(b.v6, b.src_hi, b.src_lo, b.src_port, first_ms)
        dst = self.attribute(b.v6, b.dst_hi, b.dst_lo, b.dst_port, first_ms)
        use_dst = (src.subscriber < 0) & (src.issue == NO_ISSUE) & ((dst.subscriber >= 0) | (dst.issue != NO_ISSUE))
        pick = lambda a, d: np.where(use_dst, d, a)  # noqa: E731
        cands = {i: v for i, v in src.candidates.items() if not use_dst[i]}
        cands |= {i: v for i, v in dst.candidates.items() if use_dst[i]}
        return (Attribution(pick(src.subscriber, dst.subscriber), pick(src.by, dst.by), pick(src.issue, dst.issue),
                            cands), use_dst.astype(np.int64))
