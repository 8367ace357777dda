"""Cross-check tunnel flows against the registry: which registration, if any, sanctions each tunnel.

Rules (the README and `vpnid registry --help` repeat them):

* Only flows labelled as a tunnel get a verdict; flows labelled `none` get None.
* A registration *covers* a flow when one end (the client) is inside one of its client networks and,
  if it lists server endpoints, the other end (the server) is inside one of them, on the endpoint's port
  when it names one (a port-specific endpoint never covers portless flows such as IPsec ESP: list the
  bare CIDR for those). Both orientations are tried: the flow's initiator (src) as the client, and the
  reverse, because a capture that starts mid-flow may have seen the server speak first.
* A covering registration gives, in this order of checks: `revoked` or `suspended` (its status), then
  `expired` (the flow's first_seen, as a UTC date, is outside valid_from..valid_until inclusive - before
  valid_from counts as expired too), then `protocol_mismatch` (the flow's label is not the registered
  protocol; `any` matches every family), else `registered`.
* When several registrations cover a flow, the best verdict wins: registered > protocol_mismatch >
  expired > suspended > revoked (the one closest to sanctioned explains the flow); ties go to the
  initiator-as-client orientation, then to the smallest registration_id. No covering registration:
  `unregistered`.

Matching is vectorised. Addresses are 128-bit integers split into (hi, lo) uint64 halves, IPv4 in `lo`
with its own index, so families never mix. Client networks are grouped by prefix length; for each length
every flow address is masked once, and its (hi, lo) pair is found by `searchsorted` after ranking the
halves into one int64 key, so a flow inside several nested or overlapping networks finds all of them.
The cost is O(prefix lengths x flows x log networks), never flows x registrations.

Registrations by subscriber (issue 15): with a lease index (`Matcher.build(regs, leases)`), each flow's
client is first attributed to the subscriber holding its address (behind CGNAT: address and port) at
its first packet (`leases.attribute`; the initiator, or the responder when the logs know nothing of the
initiator). A registration naming that subscriber (subscriber_id, phone or account_id) then covers the
flow as one whose client network holds the client would, server endpoints and the ranking above
unchanged; the other end of the flow is the server. The verdict says how the client was attributed
(`attributed_by`): `lease` or `cgnat` when the subscriber decided it or no registration covers the flow
but a subscriber was found, `network` when a client network decided it, `none` otherwise; an address
two subscribers held at once (`overlap`) or nobody held then (`gap`) is reported, never guessed.
For flows no registration covers, `closest` names the registration that comes nearest: the best one
whose client side matches (network or subscriber) whatever its server endpoints.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from vpnid.classifier.audit.leases.attribute import ISSUES, Attribution, LeaseIndex
from vpnid.classifier.audit.registry.registration import (
    ANY,
    EXPIRED,
    PROTOCOL_MISMATCH,
    PROTOCOLS,
    REGISTERED,
    REVOKED,
    SUSPENDED,
    UNREGISTERED,
    VERDICTS,
    Network,
    Registration,
)
from vpnid.features.families import NONE

if TYPE_CHECKING:  # records loads the flow engine (numba, pyarrow), which the registry commands never need
    from vpnid.classifier.running.records import FlowRecord

_ANY, _OTHER_FAMILY = PROTOCOLS.index(ANY), -1
_U64 = (1 << 64) - 1
_EPOCH = date(1970, 1, 1).toordinal()
_OPEN_END = np.iinfo(np.int64).max
_STATUS = {"active": REGISTERED, "suspended": SUSPENDED, "revoked": REVOKED}
_PACKED = np.dtype([("v6", "u1"), ("hi", ">u8"), ("lo", ">u8")])


ATTRIBUTED_BY = ("none", "lease", "cgnat", "network")  # indices: leases.attribute's NONE_FOUND, BY_LEASE, BY_CGNAT
BY_NETWORK = 3


@dataclass(frozen=True, slots=True)
class RegistryVerdict:
    registry: str  # one of VERDICTS
    registration_id: str | None  # the registration that decided it; None when unregistered
    subscriber_id: str | None = None  # who held the client end then, by the lease logs (None: unknown)
    attributed_by: str = "none"  # one of ATTRIBUTED_BY
    attribution_issue: str | None = None  # 'overlap: A B' (subscribers holding it at once) | 'gap' | None
    closest: str | None = None  # for an unregistered flow: the registration that came nearest, if any


class _Nets(NamedTuple):
    """Networks as columns: family, prefix length, and the (hi, lo) halves of address and netmask."""

    v6: np.ndarray
    plen: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    mask_hi: np.ndarray
    mask_lo: np.ndarray


def _mask(width: int, prefix: int) -> tuple[int, int]:
    m = ((1 << width) - 1) ^ ((1 << (width - prefix)) - 1) if prefix <= width else 0
    return m >> 64, m & _U64


_MASKS = np.array([[_mask(w, p) for p in range(129)] for w in (32, 128)], np.uint64)  # [v6, prefix] -> hi, lo


def _columns(nets: Sequence[Network]) -> _Nets:
    """Built from flat lists of bools, ints and bytes: no per-network tuples for the GC to walk."""
    v6 = np.array([n.version == 6 for n in nets], bool)
    plen = np.array([n.prefixlen for n in nets], np.int64)
    halves = np.frombuffer(b"".join(n.network_address.packed.rjust(16, b"\0") for n in nets), ">u8")
    halves = halves.reshape(-1, 2).astype(np.uint64)
    masks = _MASKS[v6.astype(np.int64), plen].reshape(-1, 2)
    return _Nets(v6, plen, halves[:, 0], halves[:, 1], masks[:, 0], masks[:, 1])


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges [starts[i], starts[i] + counts[i]): (i, position) for every position of every range."""
    owner = np.repeat(np.arange(len(counts)), counts)
    before = np.cumsum(counts) - counts
    return owner, np.repeat(starts, counts) + (np.arange(owner.size) - before[owner])


def _rank_of(sorted_unique: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in `sorted_unique`, or -1 where absent."""
    i = np.searchsorted(sorted_unique, values)
    found = (i < len(sorted_unique)) & (sorted_unique[np.minimum(i, len(sorted_unique) - 1)] == values)
    return np.where(found, i, -1)


@dataclass(frozen=True, slots=True)
class _Level:
    """The networks of one prefix length: masked flow addresses are looked up by exact key."""

    mask_hi: np.uint64
    mask_lo: np.uint64
    his: np.ndarray  # sorted unique network hi halves
    los: np.ndarray  # sorted unique network lo halves
    keys: np.ndarray  # sorted hi_rank * len(los) + lo_rank, one per (network, registration)
    owners: np.ndarray  # registration index for each key

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rh, rl = _rank_of(self.his, hi & self.mask_hi), _rank_of(self.los, lo & self.mask_lo)
        rows = np.flatnonzero((rh >= 0) & (rl >= 0))
        key = rh[rows] * len(self.los) + rl[rows]
        left = np.searchsorted(self.keys, key, "left")
        owner, pos = _expand(left, np.searchsorted(self.keys, key, "right") - left)
        return rows[owner], self.owners[pos]


def _levels(nets: _Nets, owner: np.ndarray, v6: bool) -> list[_Level]:
    """One address family's client networks (owner: their registration index), by prefix length."""
    family = np.flatnonzero(nets.v6 == v6)
    levels = []
    for plen in np.unique(nets.plen[family]):
        g = family[nets.plen[family] == plen]
        hi, lo = nets.hi[g], nets.lo[g]
        his, los = np.unique(hi), np.unique(lo)
        keys = np.searchsorted(his, hi).astype(np.int64) * len(los) + np.searchsorted(los, lo)
        order = np.argsort(keys, kind="stable")
        levels.append(_Level(nets.mask_hi[g[0]], nets.mask_lo[g[0]], his, los, keys[order], owner[g][order]))
    return levels


def _first_per_row(rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The first of `order` for each distinct row (order sorts by row first)."""
    if not order.size:
        return order
    r = rows[order]
    return order[np.r_[True, r[1:] != r[:-1]]]


def _by_subscriber(regs: Sequence[Registration]) -> dict[str, np.ndarray]:
    out: dict[str, list[int]] = {}
    for i, r in enumerate(regs):
        for key in dict.fromkeys(r.subscriber_keys):
            out.setdefault(key, []).append(i)
    return {k: np.array(v, np.int64) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class FlowBatch:
    """Tunnel flows as columns: the vectorised input of `Matcher.check_batch`."""

    v6: np.ndarray  # bool
    src_hi: np.ndarray  # uint64 halves of the addresses
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    src_port: np.ndarray  # int64
    dst_port: np.ndarray
    day: np.ndarray  # int64 UTC days since 1970-01-01 of first_seen
    protocol: np.ndarray  # int64 index into PROTOCOLS, -1 for another tunnel family
    first_ms: np.ndarray | None = None  # int64 epoch ms of first_seen (for attribution)

    @classmethod
    def from_records(cls, records: Sequence[FlowRecord]) -> FlowBatch:
        # Each address becomes 17 bytes (IPv6 flag, 16 address bytes), parsed once per distinct text and
        # read back as columns in one go. Bytes, unlike tuples, do not wake the garbage collector, which
        # would otherwise walk all the records again and again at a million flows.
        seen: dict[str, bytes] = {}

        def pack(text: str) -> bytes:
            if (packed := seen.get(text)) is None:
                try:
                    packed = seen[text] = bytes(13) + socket.inet_pton(socket.AF_INET, text)
                except OSError:
                    packed = seen[text] = b"\1" + socket.inet_pton(socket.AF_INET6, text)
            return packed

        def columns(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            a = np.frombuffer(b"".join(map(pack, texts)), _PACKED)
            return a["v6"].astype(bool), a["hi"].astype(np.uint64), a["lo"].astype(np.uint64)

        v6, src_hi, src_lo = columns([r.src_ip for r in records])
        _, dst_hi, dst_lo = columns([r.dst_ip for r in records])
        family = {p: i for i, p in enumerate(PROTOCOLS) if p != ANY}
        first = np.array([r.first_seen for r in records], np.float64)
        return cls(v6, src_hi, src_lo, dst_hi, dst_lo,
                   src_port=np.array([r.src_port for r in records], np.int64),
                   dst_port=np.array([r.dst_port for r in records], np.int64),
                   day=np.floor(first / 86400).astype(np.int64),
                   protocol=np.array([family.get(r.label, _OTHER_FAMILY) for r in records], np.int64),
                   first_ms=np.floor(first * 1000).astype(np.int64))


@dataclass(frozen=True, slots=True)
class Matcher:
    """An index of registrations; build it with `Matcher.build`, then `check` flow records."""

    ids: tuple[str, ...]  # registration ids, sorted; every array below is indexed like them
    clients: tuple[list[_Level], list[_Level]]  # IPv4, IPv6 client network levels
    protocol: np.ndarray
    status: np.ndarray  # SUSPENDED, REVOKED or REGISTERED (active)
    from_day: np.ndarray
    until_day: np.ndarray
    ep_start: np.ndarray  # server endpoints of registration r: rows ep_start[r] .. ep_start[r] + ep_count[r]
    ep_count: np.ndarray
    endpoints: _Nets
    ep_port: np.ndarray  # -1: any port
    by_subscriber: dict[str, np.ndarray]  # subscriber key -> registration indices naming it
    leases: LeaseIndex | None = None  # attribute clients to subscribers; None: by network only

    @classmethod
    def build(cls, registrations: Sequence[Registration], leases: LeaseIndex | None = None) -> Matcher:
        regs = sorted(registrations, key=lambda r: r.registration_id)
        clients = _columns([n for r in regs for n in r.client_networks])
        owner = np.repeat(np.arange(len(regs)), [len(r.client_networks) for r in regs])
        eps = [e for r in regs for e in r.server_endpoints]
        count = np.array([len(r.server_endpoints) for r in regs], np.int64)
        day = lambda d: d.toordinal() - _EPOCH  # noqa: E731
        return cls(
            ids=tuple(r.registration_id for r in regs),
            clients=(_levels(clients, owner, False), _levels(clients, owner, True)),
            protocol=np.array([PROTOCOLS.index(r.protocol) for r in regs], np.int64),
            status=np.array([_STATUS[r.status] for r in regs], np.int64),
            from_day=np.array([day(r.valid_from) for r in regs], np.int64),
            until_day=np.array([day(r.valid_until) if r.valid_until else _OPEN_END for r in regs], np.int64),
            ep_start=np.cumsum(count) - count,
            ep_count=count,
            endpoints=_columns([e.network for e in eps]),
            ep_port=np.array([-1 if e.port is None else e.port for e in eps], np.int64),
            by_subscriber=_by_subscriber(regs),
            leases=leases,
        )

    def _servers_ok(self, rows: np.ndarray, regs: np.ndarray, v6: np.ndarray, hi: np.ndarray, lo: np.ndarray,
                    port: np.ndarray) -> np.ndarray:
        """For (flow row, registration) pairs: does the server end fall in one of its endpoints?"""
        ok = self.ep_count[regs] == 0
        has = np.flatnonzero(~ok)
        pair, e = _expand(self.ep_start[regs[has]], self.ep_count[regs[has]])
        f, ep = rows[has][pair], self.endpoints
        hit = ((ep.v6[e] == v6[f]) & ((hi[f] & ep.mask_hi[e]) == ep.hi[e]) & ((lo[f] & ep.mask_lo[e]) == ep.lo[e])
               & ((self.ep_port[e] < 0) | (self.ep_port[e] == port[f])))
        ok[has] = np.bincount(pair, weights=hit, minlength=len(has)) > 0
        return ok

    def _by_subscriber(self, subscriber: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(flow row, registration) for every registration naming the flow's subscriber."""
        regs_of = [self.by_subscriber.get(name, np.zeros(0, np.int64)) for name in names]
        rows = np.flatnonzero(subscriber >= 0)
        if not rows.size or not self.by_subscriber:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        counts = np.array([len(r) for r in regs_of], np.int64)[subscriber[rows]]
        flat = np.concatenate(regs_of) if regs_of else np.zeros(0, np.int64)
        starts = (np.cumsum([len(r) for r in regs_of]) - [len(r) for r in regs_of]).astype(np.int64)
        owner, pos = _expand(starts[subscriber[rows]], counts)
        return rows[owner], flat[pos]

    def check_batch(self, b: FlowBatch, attribution: Attribution | None = None, client_side: np.ndarray | None = None,
                    names: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per flow: the verdict (index into VERDICTS), the deciding registration's index (-1 if none),
        whether a subscriber (1) or a network (0) matched it, and the closest registration of an
        uncovered flow (-1 if none). `attribution` (with the client side per flow, 0 src, 1 dst, and the
        subscriber names its indices refer to) adds registrations by subscriber."""
        rows_, regs_, orient_, via_, keep_ = [], [], [], [], []
        sides = ((b.src_hi, b.src_lo, b.dst_hi, b.dst_lo, b.dst_port),  # initiator as client
                 (b.dst_hi, b.dst_lo, b.src_hi, b.src_lo, b.src_port))  # responder as client
        for orientation, (c_hi, c_lo, s_hi, s_lo, s_port) in enumerate(sides):
            for v6, levels in enumerate(self.clients):
                sel = np.flatnonzero(b.v6 == bool(v6))
                for level in levels:
                    rows, regs = level.lookup(c_hi[sel], c_lo[sel])
                    rows = sel[rows]
                    rows_.append(rows)
                    regs_.append(regs)
                    orient_.append(np.full(len(rows), orientation, np.int64))
                    via_.append(np.zeros(len(rows), np.int64))
                    keep_.append(self._servers_ok(rows, regs, b.v6, s_hi, s_lo, s_port))
        if attribution is not None:
            rows, regs = self._by_subscriber(attribution.subscriber, names)
            side = client_side[rows]
            s_hi, s_lo = np.where(side == 1, b.src_hi[rows], b.dst_hi[rows]), np.where(side == 1, b.src_lo[rows],
                                                                                         b.dst_lo[rows])
            s_port = np.where(side == 1, b.src_port[rows], b.dst_port[rows])
            local = np.arange(len(rows))
            rows_.append(rows)
            regs_.append(regs)
            orient_.append(side)
            via_.append(np.ones(len(rows), np.int64))
            keep_.append(self._servers_ok(local, regs, b.v6[rows], s_hi, s_lo, s_port))
        n = len(b.day)
        verdict = np.full(n, UNREGISTERED, np.int64)
        chosen = np.full(n, -1, np.int64)
        via = np.zeros(n, np.int64)
        closest = np.full(n, -1, np.int64)
        if not rows_:
            return verdict, chosen, via, closest
        rows, regs, orient = np.concatenate(rows_), np.concatenate(regs_), np.concatenate(orient_)
        how, keep = np.concatenate(via_), np.concatenate(keep_).astype(bool)
        day, status = b.day[rows], self.status[regs]
        rank = np.select(
            [status != REGISTERED, (day < self.from_day[regs]) | (day > self.until_day[regs]),
             (self.protocol[regs] != _ANY) & (self.protocol[regs] != b.protocol[rows])],
            [status, EXPIRED, PROTOCOL_MISMATCH], REGISTERED)
        # the best pair per flow: best verdict, initiator as client, a subscriber before a network
        # (the stronger identification), then the smallest id (registration indices follow sorted ids)
        best = lambda m: _first_per_row(rows[m], np.lexsort((regs[m], -how[m], orient[m], rank[m], rows[m])))  # noqa: E731
        covered = np.flatnonzero(keep)
        first = covered[best(keep)]
        verdict[rows[first]] = rank[first]
        chosen[rows[first]] = regs[first]
        via[rows[first]] = how[first]
        near = best(np.ones(len(rows), bool))
        closest[rows[near]] = regs[near]
        closest[chosen >= 0] = -1
        return verdict, chosen, via, closest

    def check(self, records: Sequence[FlowRecord]) -> list[RegistryVerdict | None]:
        """A verdict per record, in order; None for flows not labelled as a tunnel."""
        tunnels = [i for i, r in enumerate(records) if r.label != NONE]
        batch = FlowBatch.from_records([records[i] for i in tunnels])
        attribution = side = None
        names: Sequence[str] = ()
        if self.leases is not None and tunnels:
            attribution, side = self.leases.attribute_flows(batch, first_ms=batch.first_ms)
            names = self.leases.columns.subscribers
        verdict, chosen, via, closest = self.check_batch(batch, attribution, side, names)
        if attribution is not None:
            by = np.where(via == 1, attribution.by, np.where(chosen >= 0, BY_NETWORK, attribution.by))
            subscriber, issue = attribution.subscriber.tolist(), attribution.issue.tolist()
        else:
            by = np.where(chosen >= 0, BY_NETWORK, 0)
            subscriber, issue = [-1] * len(tunnels), [0] * len(tunnels)
        out: list[RegistryVerdict | None] = [None] * len(records)
        shared: dict[tuple, RegistryVerdict] = {}  # verdicts are immutable: one object per distinct value
        for k, (i, v, c, s, a, x, near) in enumerate(zip(tunnels, verdict.tolist(), chosen.tolist(), subscriber,
                                                          by.tolist(), issue, closest.tolist())):
            key = (v, c, s, a, x, near) if k not in (attribution.candidates if attribution else {}) else None
            if key is None or (made := shared.get(key)) is None:
                problem = ISSUES[x]
                if key is None:
                    problem = "overlap: " + " ".join(attribution.candidates[k])
                made = RegistryVerdict(VERDICTS[v], self.ids[c] if c >= 0 else None, names[s] if s >= 0 else None,
                                       ATTRIBUTED_BY[a], problem, self.ids[near] if near >= 0 else None)
                if key is not None:
                    shared[key] = made
            out[i] = made
        return out

    def check_one(self, record: FlowRecord) -> RegistryVerdict | None:
        return self.check([record])[0]
