"""PPTP (RFC 2637): the TCP control connection and the enhanced-GRE data channel, never from ports.

Control connection (RFC 2637 §2): every message starts with Length (2), PPTP Message Type (2, 1 =
control), the Magic Cookie 0x1A2B3C4D (4), Control Message Type (2) and Reserved0 (2, zero), and each
control message type has one fixed length. A Start-Control-Connection-Request answered by a Reply
from the other side is the handshake (0.99); two messages whose length, magic cookie and type agree
(mid-flow), or a request the flow ends without an answer to, are PPTP at 0.9 (nDPI decides on the
request alone); repeated unanswered requests raise `blocked_attempt`.

Data channel (RFC 2637 §4.1): enhanced GRE, version 1, K bit set, protocol type 0x880B (PPP), C/R/
strict-source-route and recursion bits clear, a key field holding the payload length and the peer's call
ID. The payload length must equal the bytes after the header and the call ID stays constant per
direction; packets that carry a sequence number count up (0.9 after a few packets). NVGRE, ERSPAN and
plain GRE are version 0 and fail the first check.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket, State
from vpnid.features.dissectors.tcpstream import LengthFramed
from vpnid.features.families import PPTP as PPTP_FAMILY
from vpnid.features.packets import IPPROTO_GRE, IPPROTO_TCP
from vpnid.features.risks import BLOCKED_ATTEMPT

# Control connection (RFC 2637 §2.1-2.16)
PPTP_CONTROL_MESSAGE = 1  # PPTP Message Type 1; 2 (management) is never used
MAGIC_COOKIE = 0x1A2B3C4D
CONTROL_HEADER = 12  # length, message type, magic cookie, control message type, reserved0
START_CONTROL_CONNECTION_REQUEST = 1
START_CONTROL_CONNECTION_REPLY = 2
OUTGOING_CALL_REQUEST = 7
OUTGOING_CALL_REPLY = 8
# Control Message Type -> (name, fixed message length in bytes)
CONTROL_MESSAGES = {
    1: ("Start-Control-Connection-Request", 156),
    2: ("Start-Control-Connection-Reply", 156),
    3: ("Stop-Control-Connection-Request", 16),
    4: ("Stop-Control-Connection-Reply", 16),
    5: ("Echo-Request", 16),
    6: ("Echo-Reply", 20),
    7: ("Outgoing-Call-Request", 168),
    8: ("Outgoing-Call-Reply", 32),
    9: ("Incoming-Call-Request", 220),
    10: ("Incoming-Call-Reply", 24),
    11: ("Incoming-Call-Connected", 28),
    12: ("Call-Clear-Request", 16),
    13: ("Call-Disconnect-Notify", 148),
    14: ("WAN-Error-Notify", 40),
    15: ("Set-Link-Info", 24),
}
CALL_ID_OFFSET = 12  # Outgoing-Call-Request/Reply: Call ID, then (Reply) Peer's Call ID

# Enhanced GRE (RFC 2637 §4.1)
GRE_C, GRE_R, GRE_K, GRE_S, GRE_s, GRE_A = 0x8000, 0x4000, 0x2000, 0x1000, 0x0800, 0x0080
GRE_RECUR, GRE_FLAGS, GRE_VERSION = 0x0700, 0x0078, 0x0007
GRE_MUST_BE_CLEAR = GRE_C | GRE_R | GRE_s | GRE_RECUR | GRE_FLAGS
ENHANCED_GRE_VERSION = 1
GRE_PROTOCOL_PPP = 0x880B
GRE_V1_HEADER = 8  # flags/version, protocol type, payload length, call ID
GRE_MIN_PACKETS = 3  # consistent packets before the GRE rule decides (ACK-only packets count)
MAX_SEQ_STEP = 64  # sequence numbers may skip lost packets, not thousands


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "big")


def control_problem(msg: bytes) -> str | None:
    """Why a complete length-delimited message is not a PPTP control message (None when it is)."""
    if len(msg) < CONTROL_HEADER:
        return f"{len(msg)}-byte message shorter than the PPTP control header"
    if _u16(msg, 2) != PPTP_CONTROL_MESSAGE or _u32(msg, 4) != MAGIC_COOKIE:
        return "no PPTP control message type 1 with magic cookie 0x1A2B3C4D"
    kind = _u16(msg, 8)
    if kind not in CONTROL_MESSAGES:
        return f"control message type {kind} not in RFC 2637"
    name, size = CONTROL_MESSAGES[kind]
    if len(msg) != size:
        return f"{name} of {len(msg)} B (RFC 2637: {size})"
    if _u16(msg, 10):
        return "Reserved0 not zero"
    return None


class ControlStream(LengthFramed):
    """One direction of the control connection cut into messages by their Length field (RFC 2637 2.1:
    the whole message)."""

    __slots__ = ()
    LENGTH_IS_TOTAL = True
    MIN_LENGTH = CONTROL_HEADER


class PPTP(Dissector):
    """PPTP control connection (TCP) and enhanced-GRE data channel (IP protocol 47)."""

    family: ClassVar[str] = PPTP_FAMILY
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_TCP, IPPROTO_GRE})
    budget: ClassVar[int] = 12
    feature_state: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._streams = (ControlStream(), ControlStream())
        self._kinds: tuple[list[int], list[int]] = ([], [])
        self._call_ids: list[int | None] = [None, None]
        self._gre_packets = [0, 0]
        self._gre_seq: list[int | None] = [None, None]
        self._last: FlowPacket | None = None

    @staticmethod
    def prefilter(p) -> np.ndarray:  # p: PacketHeads
        """Rows that could be PPTP: a TCP segment of under 8 bytes (the dissector waits for more) or whose
        bytes 4-7 are the magic cookie (the control stream is cut from its first byte on, never resynced,
        and `on_packet` rejects once its first 8 bytes lack the cookie), or enhanced GRE v1 carrying PPP."""
        head = p.head.astype(np.uint32)
        magic = ((head[:, 4] << 24) | (head[:, 5] << 16) | (head[:, 6] << 8) | head[:, 7]) == MAGIC_COOKIE
        control = (p.proto == IPPROTO_TCP) & ((p.length < 8) | magic)
        flags = (head[:, 0] << 8) | head[:, 1]
        gre = ((p.proto == IPPROTO_GRE) & ((flags & GRE_VERSION) == ENHANCED_GRE_VERSION) & ((flags & GRE_K) != 0)
               & ((flags & GRE_MUST_BE_CLEAR) == 0) & (((head[:, 2] << 8) | head[:, 3]) == GRE_PROTOCOL_PPP))
        return np.asarray(control | gre, dtype=bool)

    def on_packet(self, pkt: FlowPacket) -> None:
        if pkt.proto == IPPROTO_GRE:
            self._gre(pkt)
            return
        for msg in self._streams[pkt.direction].push(pkt.tcp_seq, pkt.payload):
            self._control(pkt, msg)
            if self.state is not State.CANDIDATE:
                return
        buf = self._streams[pkt.direction].buf
        if len(buf) >= 8 and (_u16(buf, 0) < CONTROL_HEADER or _u32(buf, 4) != MAGIC_COOKIE):
            self.reject(f"TCP stream starts with {bytes(buf[:8]).hex()}: no PPTP control message")

    # -- control connection ----------------------------------------------------------------------------

    def _control(self, pkt: FlowPacket, msg: bytes) -> None:
        problem = control_problem(msg)
        if problem:
            self.reject(problem)
            return
        kind = _u16(msg, 8)
        self._kinds[pkt.direction].append(kind)
        if kind in (OUTGOING_CALL_REQUEST, OUTGOING_CALL_REPLY):
            self._call_ids[pkt.direction] = _u16(msg, CALL_ID_OFFSET)
        name = CONTROL_MESSAGES[kind][0]
        mine, theirs = self._kinds[pkt.direction], self._kinds[1 - pkt.direction]
        self.attributes["transport"] = "tcp"
        self._last = pkt
        if kind == START_CONTROL_CONNECTION_REPLY and START_CONTROL_CONNECTION_REQUEST in theirs:
            self.attributes["handshake"] = "seen"
            self.confirm(pkt, 0.99, "PPTP Start-Control-Connection-Request answered by a Reply from the other side "
                         "(magic cookie 0x1A2B3C4D, RFC 2637 lengths)")
        elif kind == START_CONTROL_CONNECTION_REQUEST and not theirs:
            return  # wait for the reply
        elif len(mine) + len(theirs) >= 2:
            self.confirm(pkt, 0.9, f"PPTP control messages, last {name}: RFC 2637 lengths, message type 1, magic "
                         f"cookie 0x1A2B3C4D; {len(mine) + len(theirs)} such messages")

    def on_end(self) -> None:
        requests = [k for k in self._kinds[0] + self._kinds[1] if k == START_CONTROL_CONNECTION_REQUEST]
        if requests and self._last is not None:
            if len(requests) >= 2:
                self.raise_risk(BLOCKED_ATTEMPT)
            self.attributes["handshake"] = "unanswered"
            self.confirm(self._last, 0.9, f"{len(requests)} PPTP Start-Control-Connection-Request(s) of 156 B with "
                         "magic cookie 0x1A2B3C4D, no reply in the capture")

    # -- enhanced GRE ----------------------------------------------------------------------------------

    def _gre(self, pkt: FlowPacket) -> None:
        p, d = pkt.payload, pkt.direction
        if len(p) < GRE_V1_HEADER:
            self.reject(f"GRE header cut short ({len(p)} B)")
            return
        flags, protocol = _u16(p, 0), _u16(p, 2)
        if flags & GRE_VERSION != ENHANCED_GRE_VERSION:
            self.reject(f"GRE version {flags & GRE_VERSION} (PPTP uses enhanced GRE, version 1)")
            return
        if not flags & GRE_K or flags & GRE_MUST_BE_CLEAR or protocol != GRE_PROTOCOL_PPP:
            self.reject(f"GRE v1 flags 0x{flags:04x} / protocol 0x{protocol:04x}: not RFC 2637 enhanced GRE")
            return
        length, call_id = _u16(p, 4), _u16(p, 6)
        header = GRE_V1_HEADER + 4 * bool(flags & GRE_S) + 4 * bool(flags & GRE_A)
        if len(p) < header or len(p) - header != length or (length and not flags & GRE_S):
            self.reject(f"GRE v1 payload length {length} but {len(p) - header} B follow the header")
            return
        if self._call_ids[d] is None:
            self._call_ids[d] = call_id
        elif self._call_ids[d] != call_id:
            self.reject("GRE v1 call ID changed within one direction")
            return
        if flags & GRE_S:
            seq, last = _u32(p, 8), self._gre_seq[d]
            if last is not None and not 0 < (seq - last) % (1 << 32) <= MAX_SEQ_STEP:
                self.reject("GRE v1 sequence numbers do not count up")
                return
            self._gre_seq[d] = seq
        self._gre_packets[d] += 1
        if sum(self._gre_packets) >= GRE_MIN_PACKETS:
            ids = "/".join(f"{c}" for c in self._call_ids if c is not None)
            self.attributes["transport"] = "gre"
            self.attributes["call_id"] = ids
            self.confirm(pkt, 0.9, f"enhanced GRE v1 (RFC 2637 §4.1): K set, protocol 0x880B (PPP), call ID {ids} "
                         f"constant, payload length field matching, {sum(self._gre_packets)} packets")
