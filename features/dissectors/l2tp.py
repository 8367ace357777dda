"""L2TP over UDP: version 2 (RFC 2661) and version 3 (RFC 3931 §4.1.2.1), never from ports.

Control messages have a fixed header shape: T, L and S set, O and P clear, version 2 or 3 (the first two
bytes are 0xC802 or 0xC803), a Length equal to the datagram's size, then (v2) Tunnel ID, Session ID, Ns,
Nr or (v3) Control Connection ID, Ns, Nr. Every control message but a ZLB acknowledgement carries AVPs
that must tile the rest exactly, the first being Message Type (M bit, length 8, vendor 0, attribute 0)
with a value RFC 2661 §3.2 / RFC 3931 §3.1 defines. A Start-Control-Connection-Request answered by a
Reply addressed to the tunnel it assigned is the handshake (0.99); any other such message, or an SCCRQ
the flow ends without an answer to, decides at 0.95 (retransmitted unanswered SCCRQs: `blocked_attempt`).

Data messages (v2 only; v3 data over UDP has no fixed field to check beyond a session ID): T clear,
version 2, a Length equal to the datagram when L is set, Tunnel and Session IDs constant per direction and
a PPP frame inside (address/control FF 03 or a known PPP protocol number first): 0.85 after a few packets.
DNS, QUIC, STUN or random datagrams moved to 1701 fail the first two bytes or the Length.

L2TP inside IPsec (the L2TP/IPsec VPN) is encrypted ESP on the wire and is labelled ipsec.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket
from vpnid.features.families import L2TP as L2TP_FAMILY
from vpnid.features.packets import IPPROTO_UDP
from vpnid.features.risks import BLOCKED_ATTEMPT, MALFORMED_HEADER

# Header flags (RFC 2661 §3.1, RFC 3931 §3.2.1)
FLAG_T, FLAG_L, FLAG_S, FLAG_O, FLAG_P = 0x8000, 0x4000, 0x0800, 0x0200, 0x0100
FLAGS_RESERVED = 0x34F0  # the x bits (must be zero)
VERSION_MASK = 0x000F
L2TP_V2, L2TP_V3 = 2, 3
CONTROL_FLAGS = FLAG_T | FLAG_L | FLAG_S  # control: T, L, S set, O and P clear (0xC802 / 0xC803)
V2_CONTROL_HEADER = 12  # flags/version, length, tunnel ID, session ID, Ns, Nr
V3_CONTROL_HEADER = 12  # flags/version, length, control connection ID (4), Ns, Nr
# AVP (RFC 2661 §4.1): M/H bits + 10-bit length, vendor ID, attribute type, value
AVP_M, AVP_H, AVP_LENGTH_MASK = 0x8000, 0x4000, 0x03FF
AVP_RESERVED = 0x3C00
AVP_HEADER = 6
MESSAGE_TYPE_AVP = 0
ASSIGNED_TUNNEL_ID_AVP = 9  # v2: 2-byte Assigned Tunnel ID (RFC 2661 §4.4.3)
ASSIGNED_CONTROL_CONNECTION_ID_AVP = 61  # v3: 4-byte Assigned Control Connection ID (RFC 3931 §5.4.3)
MESSAGE_TYPES = {  # RFC 2661 §3.2 (RFC 3931 adds 20 ACK and 16 WEN/SLI numbers it shares)
    1: "SCCRQ", 2: "SCCRP", 3: "SCCCN", 4: "StopCCN", 6: "HELLO", 7: "OCRQ", 8: "OCRP", 9: "OCCN",
    10: "ICRQ", 11: "ICRP", 12: "ICCN", 14: "CDN", 15: "WEN", 16: "SLI", 20: "ACK",
}
SCCRQ, SCCRP = 1, 2
# PPP inside data messages (RFC 1661/1662): address-control field, or a protocol number when compressed
PPP_ADDRESS_CONTROL = b"\xff\x03"
PPP_PROTOCOLS = frozenset({0x0021, 0x0057, 0xC021, 0x8021, 0x8057, 0xC023, 0xC223, 0x80FD, 0x00FD, 0x8281})
DATA_MIN_PACKETS = 4  # data messages (all directions) with constant IDs before the data rule decides


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 2], "big")


def avps(b: bytes) -> list[tuple[int, int, bytes]] | None:
    """(vendor, attribute, value) of every AVP, or None unless they tile `b` exactly."""
    out, pos = [], 0
    while pos < len(b):
        if pos + AVP_HEADER > len(b):
            return None
        word = _u16(b, pos)
        size = word & AVP_LENGTH_MASK
        if word & AVP_RESERVED or size < AVP_HEADER or pos + size > len(b):
            return None
        out.append((_u16(b, pos + 2), _u16(b, pos + 4), b[pos + AVP_HEADER : pos + size]))
        pos += size
    return out


def _ends_early(p: bytes, version: int) -> bool:
    """A control message whose Length field ends it before the datagram does, the part it delimits being
    a well-formed message (AVPs tiling it, Message Type first): trailing bytes no snaplen can add."""
    size = _u16(p, 2) if len(p) >= 4 else 0
    header = V2_CONTROL_HEADER if version == L2TP_V2 else V3_CONTROL_HEADER
    if not header < size < len(p):
        return False
    return _message_type(avps(p[header:size])) is not None


def _message_type(items: list[tuple[int, int, bytes]] | None) -> int | None:
    """The defined Message Type the first AVP carries, or None (RFC 2661 §4.4.1, RFC 3931 §5.4.1)."""
    if not items:
        return None
    vendor, attr, value = items[0]
    if vendor or attr != MESSAGE_TYPE_AVP or len(value) != 2 or _u16(value, 0) not in MESSAGE_TYPES:
        return None
    return _u16(value, 0)


def _ppp(frame: bytes) -> bool:
    return frame[:2] == PPP_ADDRESS_CONTROL or (len(frame) >= 2 and _u16(frame, 0) in PPP_PROTOCOLS)


class L2TP(Dissector):
    """L2TPv2/v3 control messages with their AVPs, and L2TPv2 data messages carrying PPP."""

    family: ClassVar[str] = L2TP_FAMILY
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_UDP})
    budget: ClassVar[int] = 12
    feature_state: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._assigned: list[int | None] = [None, None]  # Assigned Tunnel ID each side announced in SCCRQ/SCCRP
        self._sccrq_from: int | None = None
        self._ids: list[tuple[int, int] | None] = [None, None]
        self._data = 0
        self._requests: list[FlowPacket] = []

    @staticmethod
    def prefilter(p) -> np.ndarray:  # p: PacketHeads
        """UDP rows whose first two bytes are an L2TP v2/v3 flags/version word with the x bits clear."""
        head = p.head.astype(np.uint32)
        word = (head[:, 0] << 8) | head[:, 1]
        version = word & VERSION_MASK
        return np.asarray((p.proto == IPPROTO_UDP) & ((word & FLAGS_RESERVED) == 0)
                          & ((version == L2TP_V2) | (version == L2TP_V3)) & (p.length >= 6), dtype=bool)

    def on_packet(self, pkt: FlowPacket) -> None:
        p = pkt.payload
        if len(p) < 6:
            self.reject(f"{len(p)} B: shorter than an L2TP header")
            return
        word = _u16(p, 0)
        version = word & VERSION_MASK
        if word & FLAGS_RESERVED or version not in (L2TP_V2, L2TP_V3):
            self.reject(f"first word 0x{word:04x} is no L2TP v2/v3 flags/version")
        elif word & FLAG_T:
            self._control(pkt, word, version)
        elif version == L2TP_V2:
            self._data_v2(pkt, word)
        # L2TPv3 data over UDP (T clear): session ID and cookie only; neutral, control messages decide

    def _control(self, pkt: FlowPacket, word: int, version: int) -> None:
        p = pkt.payload
        if word & ~VERSION_MASK != CONTROL_FLAGS:
            self.reject(f"control flags 0x{word:04x}: RFC requires T, L, S set and O, P clear")
            return
        if len(p) < V2_CONTROL_HEADER or _u16(p, 2) != len(p):
            if _ends_early(p, version):
                self.raise_risk(MALFORMED_HEADER)
            self.reject(f"L2TP Length field {_u16(p, 2) if len(p) >= 4 else '?'} but datagram of {len(p)} B")
            return
        if len(p) == V2_CONTROL_HEADER:
            return  # ZLB acknowledgement: no AVPs, nothing more to check
        items = avps(p[V2_CONTROL_HEADER:] if version == L2TP_V2 else p[V3_CONTROL_HEADER:])
        if not items:
            self.reject("L2TP control message whose AVPs do not tile the message")
            return
        kind = _message_type(items)
        if kind is None:
            self.reject("L2TP control message without a Message Type AVP first")
            return
        name = MESSAGE_TYPES[kind]
        for v, a, val in items:
            wanted = (ASSIGNED_TUNNEL_ID_AVP, 2) if version == L2TP_V2 else (ASSIGNED_CONTROL_CONNECTION_ID_AVP, 4)
            if not v and (a, len(val)) == wanted:
                self._assigned[pkt.direction] = int.from_bytes(val, "big")
        self.attributes["version"] = str(version)
        header_tunnel = _u16(p, 4) if version == L2TP_V2 else int.from_bytes(p[4:8], "big")
        if kind == SCCRQ:
            self._sccrq_from = pkt.direction
            self._requests.append(pkt)
            return  # wait for the reply
        if (kind == SCCRP and self._sccrq_from == 1 - pkt.direction
                and header_tunnel == self._assigned[1 - pkt.direction]):
            self.attributes["handshake"] = "seen"
            self.confirm(pkt, 0.99, f"L2TPv{version} SCCRQ answered by SCCRP addressed to the tunnel ID "
                         f"{header_tunnel} the SCCRQ assigned; AVPs tile both messages")
            return
        self.confirm(pkt, 0.95, f"L2TPv{version} control message {name}: flags 0x{word:04x}, Length = {len(p)} B, "
                     f"{len(items)} AVPs tiling the message, Message Type AVP first")

    def on_end(self) -> None:
        if self._requests:
            if len(self._requests) >= 2:
                self.raise_risk(BLOCKED_ATTEMPT)
            self.attributes["handshake"] = "unanswered"
            self.confirm(self._requests[-1], 0.95, f"{len(self._requests)} L2TP SCCRQ(s) with a Message Type AVP "
                         "first and AVPs tiling the message, no reply in the capture")

    def _data_v2(self, pkt: FlowPacket, word: int) -> None:
        p = pkt.payload
        pos = 2
        if word & FLAG_L:
            if _u16(p, 2) != len(p):
                self.reject(f"L2TP data Length field {_u16(p, 2)} but datagram of {len(p)} B")
                return
            pos += 2
        if len(p) < pos + 4:
            self.reject("L2TP data header cut short")
            return
        ids = (_u16(p, pos), _u16(p, pos + 2))
        pos += 4 + 4 * bool(word & FLAG_S)
        if word & FLAG_O:
            if len(p) < pos + 2:
                self.reject("L2TP data header cut short")
                return
            pos += 2 + _u16(p, pos)
        if pos >= len(p) or not _ppp(p[pos:]):
            self.reject("L2TP data message without a PPP frame inside")
            return
        known = self._ids[pkt.direction]
        if known is None:
            self._ids[pkt.direction] = ids
        elif known != ids:
            self.reject("L2TP tunnel/session ID changed within one direction")
            return
        self._data += 1
        if self._data >= DATA_MIN_PACKETS:
            self.attributes["version"] = "2"
            self.attributes["mid_flow"] = "true"
            shown = " / ".join(f"tunnel {t} session {s}" for t, s in (i for i in self._ids if i is not None))
            self.confirm(pkt, 0.85, f"{self._data} L2TPv2 data messages carrying PPP, {shown} constant"
                         + (", Length fields matching" if word & FLAG_L else ""))
