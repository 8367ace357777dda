"""The contract every protocol dissector follows (Zeek-style candidate -> confirmed / rejected).

A dissector instance lives for one flow. The flow table feeds it the flow's payload-carrying packets in
capture order; after each packet the dissector is a CANDIDATE (undecided), CONFIRMED (the flow is this
protocol) or REJECTED (it is not). Both end states are final. An undecided dissector is rejected once it
has seen `budget` packets, so work per flow is bounded. Verdicts may look at sizes, bytes, direction
and order, but never at ports or addresses: a tunnel on port 53 is still a tunnel.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar, NamedTuple


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

    def __init__(self) -> None:
        self.state = State.CANDIDATE
        self.confidence = 0.0
        self.evidence: list[str] = []
        self.attributes: dict[str, str] = {}  # variant facts a registry or model can use (e.g. hmac=sha256)
        self.risks: set[str] = set()  # `vpnid.features.risks` names this dissector raised, kept whatever its verdict
        self.verdict_packet = 0
        self.seen = 0

    def feed(self, pkt: FlowPacket) -> State:
        """Look at one more packet; returns the state after it."""
        if self.state is not State.CANDIDATE:
            return self.state
        self.seen += 1
        self.on_packet(pkt)
        if self.state is State.CANDIDATE and self.seen >= self.budget:
            self.reject(f"undecided after {self.seen} packets")
        return self.state

    def on_packet(self, pkt: FlowPacket) -> None:
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
