"""The contract every protocol dissector follows (Zeek-style candidate -> confirmed / rejected).

A dissector instance lives for one flow. The flow table feeds it the flow's payload-carrying packets in
capture order; after each packet the dissector is a CANDIDATE (undecided), CONFIRMED (the flow is this
protocol) or REJECTED (it is not). Both end states are final. An undecided dissector is rejected once it
has seen `budget` packets, so work per flow is bounded. Verdicts may look at sizes, bytes, direction
and order, but never at ports or addresses: a tunnel on port 53 is still a tunnel.

The cheap stage (Zeek's signatures, nDPI's guess-then-dissect). Most flows are no tunnel, so no dissector
object is built for a flow until its `prefilter` says the protocol is possible. Each dissector class
declares, beside its rules:

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray   # one bool per row of `p`

evaluated vectorised (NumPy over a whole chunk) on the first `prefilter_window` payload packets of every
flow of a transport in `transports`. A flow gets the dissector once one of those packets passes; the
engine then feeds it the flow's payload packets from the first one on (packets of the window are kept in a
bounded per-flow buffer meanwhile), so the dissector sees exactly what it would have seen without the
prefilter. A flow that no prefilter accepts within its window never gets a dissector object.

The contract, which `tests/test_prefilter.py` checks on every corpus against a run with every dissector
forced on (`FlowTableConfig(prefilter=False)`): the prefilter may pass too much, never too little.

* Where the prefilter rejects each of a flow's first `prefilter_window` payload packets, a fresh dissector
  fed those packets (as the flow's first payload packets, each in its direction) would have rejected by
  then, raising no risk. With the default window of 1 this reads: False means "as the first payload
  packet of a flow, this packet makes the dissector reject". So it must be True for every packet a flow
  could start with as far as the dissector is concerned: mid-flow data packets (a capture that starts late,
  `--drop-first`), keepalives and whatever the dissector treats as neutral.
* A window over one packet may close on the flow's first payload packet: where `closes_window` is True
  for that packet and the prefilter False, a fresh dissector fed it would have rejected on it, raising no
  risk (e.g. a TLS-carried tunnel on a connection seen to open: only a ClientHello may start it, while
  one joined mid-flow waits several segments for a record). The flow is then given up for the dissector
  at once, and its later packets are not looked at (by default a window of 1 closes, a longer one stays).
* A fresh dissector that has seen no packet must not confirm or raise a risk in `on_end` (a flow without
  payload packets never gets one), and counts as undecided until the flow's first payload packet.
* Only the `PacketHeads` columns may be used: the first `HEAD_BYTES` payload bytes, the sizes and the
  row's rank in its flow; a rule that needs more bytes reads the whole payloads in place (compiled, where
  `data` is given) or passes the packet.

The default prefilter passes everything, so a dissector without one behaves as if there were no cheap
stage. Adding a protocol is still adding one file (and a line in `catalog`).

The compiled stage. A dissector that follows most ordinary connections a long way (a TLS-carried tunnel
reading every HTTPS connection's records) may take packets in bulk: whenever `skims()` says its state
allows it, the flow table hands `skim` the rest of the flow's payload packets in the chunk as columns
(`FlowPayloads`, no object per packet). `skim` takes them as `feed` would, one by one, and stops before
the first that would decide (confirm, reject, or use up the budget); those it took are counted in `seen`
and in `ahead`, and `feed` passes over that many packets. So the packet that decides, and those after it,
go through `feed` and `on_packet` as usual, in catalog order with the flow's other dissectors, which may
still decide the flow first: verdicts, evidence and packet numbers are those of `feed` alone. `skim`
raises no risk, and a dissector whose state it moved takes that state back in its own methods. By
default no dissector skims.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, NamedTuple

import numpy as np

HEAD_BYTES = 48  # leading payload bytes a prefilter sees (zero-padded beyond each packet's length)


class State(IntEnum):
    CANDIDATE = 0
    CONFIRMED = 1
    REJECTED = 2


class FlowPacket(NamedTuple):
    """One payload-carrying packet of a flow, as a dissector sees it. Immutable: every dissector of the
    flow is handed the same object. (A named tuple: built once per payload packet per flow, it costs
    about a third of a frozen dataclass.)"""

    index: int  # 1-based packet number within the flow (every packet counts, with or without payload)
    direction: int  # 0: initiator -> responder, 1: responder -> initiator
    ts: float  # epoch seconds
    payload: bytes  # transport payload as captured (for ESP/AH: from the ESP/AH header on)
    tcp_seq: int = 0  # TCP sequence number of the first payload byte (TCP only)
    tcp_flags: int = 0
    proto: int = 17  # the flow's IP protocol number (6 TCP, 17 UDP, 50 ESP, ...)
    opened: bool = False  # TCP: the flow's opening SYN was seen (the capture did not start mid-flow)


@dataclass(slots=True)
class PacketHeads:
    """The cheap stage's view of n payload packets (one row each, of any flows): see the module docstring.
    `head[i, j]` is payload byte j of row i, 0 where j >= length[i]."""

    proto: np.ndarray  # uint8 IP protocol of the flow
    length: np.ndarray  # int64 payload bytes (captured)
    head: np.ndarray  # uint8 (n, HEAD_BYTES)
    direction: np.ndarray  # uint8: 0 initiator -> responder, 1 the other way
    tcp_flags: np.ndarray  # uint8
    opened: np.ndarray  # bool: TCP, the flow's opening SYN was seen (as `FlowPacket.opened`)
    # Payload packets of the row's flow before it (0: the flow's first); None: every row is a first one.
    rank: np.ndarray | None = None
    # Where whole payloads can be read in place, for a compiled rule that needs more than the head: row i's
    # payload is `data[offset[i]:][:length[i]]`, or `extra[offset[i] - len(data):][:length[i]]` beyond
    # `data` (as in `PacketTable`); None: only the heads are known, and such a rule must pass the row.
    data: np.ndarray | None = None
    extra: np.ndarray | None = None
    offset: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.length.shape[0])

    def take(self, rows: np.ndarray) -> PacketHeads:
        """The same view of `rows` only (the whole payloads stay where they are)."""
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return PacketHeads(self.proto[rows], self.length[rows], self.head[rows], self.direction[rows],
                           self.tcp_flags[rows], self.opened[rows], pick(self.rank), self.data, self.extra,
                           pick(self.offset))

    def first(self) -> np.ndarray:
        """Rows that are their flow's first payload packet."""
        return np.ones(len(self), bool) if self.rank is None else self.rank == 0

    def u8(self, off: int) -> np.ndarray:
        return self.head[:, off].astype(np.int64)

    def be(self, off: int, width: int) -> np.ndarray:
        """Big-endian unsigned integer of `width` bytes at payload offset `off`, per row (int64)."""
        v = np.zeros(len(self), np.int64)
        for j in range(width):
            v = (v << 8) | self.head[:, off + j]
        return v

    def zero(self, off: int, width: int) -> np.ndarray:
        """Bytes off..off+width-1 are all present and zero."""
        return (self.length >= off + width) & ~self.head[:, off : off + width].any(axis=1)


@dataclass(slots=True)
class FlowPayloads:
    """Payload packets of one flow for `Dissector.skim`, one row each in capture order: row j's payload is
    `data[offset[j]:][:length[j]]`, or `extra[offset[j] - len(data):][:length[j]]` beyond `data` (as in
    `PacketTable`)."""

    direction: np.ndarray  # int64, 0 initiator -> responder
    tcp_seq: np.ndarray  # int64
    offset: np.ndarray  # int64
    length: np.ndarray  # int64
    data: np.ndarray  # uint8
    extra: np.ndarray  # uint8


class Dissector:
    """Base class: subclasses set the class attributes and implement `on_packet`."""

    family: ClassVar[str]  # label given to a confirmed flow: "openvpn", "wireguard", "ipsec", ...
    transports: ClassVar[frozenset[int]]  # IP protocol numbers this dissector accepts
    budget: ClassVar[int] = 16  # payload packets to look at before giving up
    # Whether this dissector's state is part of its family's `sig_<family>` feature column. Dissectors
    # added after a feature schema was fixed stay out of it, so the shipped model sees the values it
    # was trained on.
    feature_state: ClassVar[bool] = True
    # Transport of the tunnel's separate control channel, labelled through this (data channel) dissector's
    # verdict by `vpnid.features.siblings`; None when the protocol has no such sibling flow.
    sibling_transport: ClassVar[int | None] = None
    # Payload packets of a flow the prefilter is asked about before the flow is given up for this dissector.
    prefilter_window: ClassVar[int] = 1

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """Which rows could be this protocol (see the module docstring); default: all of them."""
        return np.ones(len(p), bool)

    @classmethod
    def closes_window(cls, p: PacketHeads) -> np.ndarray:
        """Per row, as a flow's first payload packet: whether the prefilter's False on it already rules the
        dissector out (see the module docstring); default: where the window is one packet."""
        return np.full(len(p), cls.prefilter_window == 1)

    def __init__(self) -> None:
        self.state = State.CANDIDATE
        self.confidence = 0.0
        self.evidence: list[str] = []
        self.attributes: dict[str, str] = {}  # variant facts a registry or model can use (e.g. hmac=sha256)
        self.risks: set[str] = set()  # `vpnid.features.risks` names this dissector raised, kept whatever its verdict
        self.verdict_packet = 0
        self.seen = 0
        self.ahead = 0  # packets `skim` has taken that `feed` has not been handed yet

    def feed(self, pkt: FlowPacket) -> State:
        """Look at one more packet; returns the state after it."""
        if self.state is not State.CANDIDATE:
            return self.state
        if self.ahead:  # taken by `skim`, which leaves the packet that decides to `on_packet`
            self.ahead -= 1
            return self.state
        self.seen += 1
        self.on_packet(pkt)
        if self.state is State.CANDIDATE and self.seen >= self.budget:
            self.reject(f"undecided after {self.seen} packets")
        return self.state

    def on_packet(self, pkt: FlowPacket) -> None:
        raise NotImplementedError

    def skims(self) -> bool:
        """Whether the flow's next packets may go to `skim` (see the module docstring). Default: never."""
        return False

    def skim(self, packets: FlowPayloads) -> int:
        """Take the flow's next `packets` in order as `feed` would, up to the first that would decide;
        returns how many it took (counted in `seen`)."""
        raise NotImplementedError

    def on_end(self) -> None:
        """Called once when the flow ends while still a candidate: a last chance to decide on what was
        seen (e.g. repeated handshake initiations that were never answered). Default: stay undecided."""

    def confirm(self, pkt: FlowPacket, confidence: float, *evidence: str) -> None:
        self.state = State.CONFIRMED
        self.confidence = confidence
        self.verdict_packet = pkt.index
        self.evidence.extend(evidence)

    def reject(self, reason: str) -> None:
        self.state = State.REJECTED
        self.evidence.append(reason)

    def raise_risk(self, name: str) -> None:
        """Flag a property of the flow (a `vpnid.features.risks` name) that is no verdict: it stays on the flow
        whether this dissector confirms, rejects or stays undecided."""
        self.risks.add(name)
