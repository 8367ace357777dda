"""IKE (ISAKMP/IKEv1 RFC 2408/2409, IKEv2 RFC 7296) over UDP, NAT-T (RFC 3948) and TCP (RFC 8229/9329).

An IKE message proves itself: the 32-bit length field must equal the message size and the generic
payload headers must chain from the fixed header to exactly the last byte. Random or foreign payloads
pass that by chance with odds far below one in 2^32, so one message gives 0.95; the peer's answer under
the same initiator SPI gives 0.99. Nothing depends on ports: the non-ESP marker is honoured anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from vpnid.features.dissectors.base import HEAD_BYTES, Dissector, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.esp import NAT_KEEPALIVE, NON_ESP_MARKER, esp_shaped, esp_shaped_rows, udp_neutral_rows
from vpnid.features.families import IPSEC
from vpnid.features.packets import IPPROTO_TCP, IPPROTO_UDP
from vpnid.features.risks import MALFORMED_HEADER

ISAKMP_HEADER = 28  # RFC 2408 §3.1, RFC 7296 §3.1
GENERIC_PAYLOAD_HEADER = 4  # next payload, flags/reserved, length (RFC 7296 §3.2)
IKEV1 = 0x10  # major 1, minor 0
IKEV2 = 0x20  # major 2, minor 0

IKEV1_EXCHANGES = {
    1: "Base",
    2: "Main Mode",
    3: "Authentication Only",
    4: "Aggressive Mode",
    5: "Informational",
    32: "Quick Mode",  # RFC 2409 §5.5
    33: "New Group Mode",  # RFC 2409 §5.6
}
IKEV2_EXCHANGES = {
    34: "IKE_SA_INIT",
    35: "IKE_AUTH",
    36: "CREATE_CHILD_SA",
    37: "INFORMATIONAL",
    43: "IKE_INTERMEDIATE",  # RFC 9242
    44: "IKE_FOLLOWUP_KE",  # RFC 9370
}
IKEV2_SA_INIT = 34

IKEV1_FLAGS = 0x07  # E, C, A (RFC 2408 §3.1)
IKEV1_ENCRYPTED = 0x01
IKEV2_FLAGS = 0x38  # I, V, R (RFC 7296 §3.1)
IKEV2_RESPONSE = 0x20
IKEV2_CRITICAL = 0x80  # the only defined bit of a generic payload header's flags byte (RFC 7296 §3.2)

# IKEv1: RFC 2408 §3.1 (1-13), RFC 3547 (15-19), RFC 3947 NAT-D/NAT-OA (20, 21), their draft numbers
# (130, 131) and the Cisco/Microsoft fragmentation payload (132).
IKEV1_FRAGMENT = 132
IKEV1_PAYLOADS = frozenset(range(1, 22)) | {130, 131, IKEV1_FRAGMENT}
# IKEv2: RFC 7296 §3.2 (33-48), RFC 6467 (49), G-IKEv2 (50-52), RFC 7383 SKF (53), RFC 8019 (54).
IKEV2_SK = 46
IKEV2_SKF = 53
IKEV2_PAYLOADS = frozenset(range(33, 55))

IKETCP_PREFIX = b"IKETCP"  # RFC 8229 §4: sent once by the initiator before the first frame
TCP_LENGTH = 2  # RFC 8229 §3: 16-bit length that counts itself
RESPONSE_WAIT = 4  # packets to wait for the peer's answer before settling for the single-message verdict
# ESP-shaped packets tolerated before any IKE message: a capture starting inside a busy NAT-T flow is the
# ESP dissector's case; this keeps STUN/QUIC/RTP with 4-byte aligned sizes from lingering here.
ESP_BEFORE_IKE = 4


class IKEMessage(NamedTuple):
    """Header facts of one self-consistent IKE message."""

    version: int  # 1 or 2
    exchange: str
    flags: int
    ispi: bytes
    msgid: int
    size: int
    payloads: int  # cleartext payload headers walked
    encrypted: bool
    fragmented: bool

    @property
    def is_response(self) -> bool:
        return self.version == 2 and bool(self.flags & IKEV2_RESPONSE)

    def describe(self) -> str:
        role = " response" if self.is_response else " request" if self.version == 2 else ""
        return f"IKEv{self.version} {self.exchange}{role} {self.size} B"


def parse_ike(msg: bytes) -> IKEMessage | str:
    """Validate one complete IKE message (no marker); return its facts or why it is not IKE."""
    problem = header_problem(msg)
    if problem:
        return problem
    version = 1 if msg[17] == IKEV1 else 2
    flags = msg[19]
    if version == 1 and flags & IKEV1_ENCRYPTED:
        if msg[16] not in IKEV1_PAYLOADS:
            return f"payload type {msg[16]} undefined for IKEv1"
        walked, fragmented, encrypted = 0, msg[16] == IKEV1_FRAGMENT, True
    else:
        chain = _walk_payloads(msg, version)
        if isinstance(chain, str):
            return chain
        walked, fragmented, encrypted = chain
    exchange = (IKEV1_EXCHANGES if version == 1 else IKEV2_EXCHANGES)[msg[18]]
    msgid = int.from_bytes(msg[20:24], "big")
    return IKEMessage(version, exchange, flags, msg[:8], msgid, len(msg), walked, encrypted, fragmented)


def identified(head: bytes, size: int) -> bool:
    """IKE beyond doubt even if malformed: the header of a `size`-byte message (first 28 bytes in
    `head`) carries an IKE version byte and a length field equal to the size."""
    return (
        size >= ISAKMP_HEADER + GENERIC_PAYLOAD_HEADER
        and len(head) >= ISAKMP_HEADER
        and head[17] in (IKEV1, IKEV2)
        and int.from_bytes(head[24:28], "big") == size
    )


def ends_early(msg: bytes) -> bool:
    """The length field ends a well-formed IKE message before `msg` (the datagram) does: trailing bytes
    no snaplen can add."""
    size = int.from_bytes(msg[24:28], "big") if len(msg) >= ISAKMP_HEADER else 0
    return ISAKMP_HEADER + GENERIC_PAYLOAD_HEADER <= size < len(msg) and isinstance(parse_ike(msg[:size]), IKEMessage)


def header_problem(msg: bytes) -> str | None:
    """Check the fixed header of a complete message; None when it is consistent."""
    size = len(msg)
    if size < ISAKMP_HEADER + GENERIC_PAYLOAD_HEADER:
        return f"{size} B is too short for an IKE message"
    version, exchange, flags = msg[17], msg[18], msg[19]
    if version not in (IKEV1, IKEV2):
        return f"no IKE version byte (0x{version:02x})"
    if int.from_bytes(msg[24:28], "big") != size:
        return f"IKE length field {int.from_bytes(msg[24:28], 'big')} != message size {size}"
    v1 = version == IKEV1
    if exchange not in (IKEV1_EXCHANGES if v1 else IKEV2_EXCHANGES):
        return f"exchange type {exchange} undefined for IKEv{1 if v1 else 2}"
    if flags & ~(IKEV1_FLAGS if v1 else IKEV2_FLAGS) & 0xFF:
        return f"reserved IKE flag bits set (0x{flags:02x})"
    if msg[:8] == bytes(8):
        return "zero initiator SPI"
    rspi_zero = msg[8:16] == bytes(8)
    if exchange == IKEV2_SA_INIT and not v1:
        if msg[20:24] != bytes(4):
            return "IKE_SA_INIT with non-zero message ID"
        if not rspi_zero and not flags & IKEV2_RESPONSE:
            return "IKE_SA_INIT request with a responder SPI"
    elif rspi_zero and (not v1 or flags & IKEV1_ENCRYPTED):
        return "encrypted IKE message without a responder SPI"
    return None


def _walk_payloads(msg: bytes, version: int) -> tuple[int, bool, bool] | str:
    """Follow the generic payload headers; they must end exactly at the message end. An encrypted
    payload (SK/SKF) is always last (RFC 7296 §3.14) and must reach the end itself.
    Returns (payloads walked, fragmented, encrypted) or the reason for failure."""
    allowed = IKEV1_PAYLOADS if version == 1 else IKEV2_PAYLOADS
    reserved_mask = 0xFF if version == 1 else 0xFF & ~IKEV2_CRITICAL
    end, pos, kind, walked, fragmented = len(msg), ISAKMP_HEADER, msg[16], 0, False
    while kind:
        if kind not in allowed:
            return f"payload type {kind} undefined for IKEv{version}"
        if pos + GENERIC_PAYLOAD_HEADER > end:
            return "payload chain runs past the message end"
        nxt, flags, length = msg[pos], msg[pos + 1], int.from_bytes(msg[pos + 2 : pos + 4], "big")
        if flags & reserved_mask:
            return f"reserved bits set in payload {kind} header"
        if length < GENERIC_PAYLOAD_HEADER or pos + length > end:
            return f"payload {kind} length {length} overruns the message"
        walked += 1
        fragmented |= kind in (IKEV2_SKF, IKEV1_FRAGMENT)
        if version == 2 and kind in (IKEV2_SK, IKEV2_SKF):
            if pos + length != end:
                return "encrypted payload is not the last one"
            if kind == IKEV2_SKF and not _skf_numbering_ok(msg, pos, length):
                return "SKF fragment number outside 1..total"
            return walked, fragmented, True
        pos += length
        kind = nxt
    if pos != end:
        return f"payload chain ends {end - pos} B before the message end"
    return walked, fragmented, False


def _skf_numbering_ok(msg: bytes, pos: int, length: int) -> bool:
    """RFC 7383 §2.5: Fragment Number and Total Fragments (2 bytes each), 1 <= number <= total."""
    if length < GENERIC_PAYLOAD_HEADER + 4:
        return False
    number = int.from_bytes(msg[pos + 4 : pos + 6], "big")
    total = int.from_bytes(msg[pos + 6 : pos + 8], "big")
    return 1 <= number <= total


@dataclass(slots=True)
class _Stream:
    """One direction of an RFC 8229 TCP stream, reassembled just enough to cut frames."""

    buf: bytearray = field(default_factory=bytearray)
    next_seq: int | None = None
    started: bool = False


# Units that neither prove nor disprove IKE: NAT-T keepalives, ESP sharing the flow, and messages that
# carry an IKE version byte and an exact length field but break a finer rule (nDPI's "malformed" IPsec).
KEEPALIVE, ESP_PACKET, MALFORMED = "keepalive", "esp", "malformed"
NEUTRAL = (KEEPALIVE, ESP_PACKET, MALFORMED)


class IKE(Dissector):
    """IKEv1/IKEv2 key exchange, with or without NAT-T marker, over UDP or RFC 8229 TCP."""

    family: ClassVar[str] = IPSEC
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_UDP, IPPROTO_TCP})
    budget: ClassVar[int] = 16

    # On UDP the dissector decides nothing before its first IKE header: ESP-shaped datagrams and
    # keepalives are neutral, and ESP_BEFORE_IKE of them reject it. So an IKE header passes, the neutral
    # packets wait in a window that long (replayed to a dissector built on a later IKE message), and any
    # other packet passes after the first (it makes the dissector reject) or closes the window on it.
    prefilter_window: ClassVar[int] = ESP_BEFORE_IKE

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """On UDP an IKE header (version byte, length field up to the message size, after the non-ESP
        marker or not) or, after a flow's first packet, one that is not neutral (see above); on TCP
        (RFC 8229) what a first segment must show not to be rejected: per frame after the optional IKETCP
        prefix a keepalive, an IKE header behind the marker or an ESP-shaped frame, with an incomplete
        frame judged on the bytes it has (as `_cut_frames` does)."""
        n, rows = p.length, np.arange(len(p))
        marked = p.zero(0, 4)

        def ike_at(off: np.ndarray, size: np.ndarray) -> np.ndarray:
            """An IKE header of a `size`-byte message at payload offset `off` (per row)."""
            ver = p.head[rows, np.minimum(off + 17, HEAD_BYTES - 1)]
            length = np.zeros(len(p), np.int64)
            for j in range(24, 28):
                length = (length << 8) | p.head[rows, np.minimum(off + j, HEAD_BYTES - 1)]
            # length < size: a message with trailing bytes, judged for `malformed_header`
            return ((size >= ISAKMP_HEADER + GENERIC_PAYLOAD_HEADER) & (n >= off + ISAKMP_HEADER)
                    & ((ver == IKEV1) | (ver == IKEV2)) & (length <= size)
                    & (length >= ISAKMP_HEADER + GENERIC_PAYLOAD_HEADER))

        def esp_at(off: np.ndarray, size: np.ndarray) -> np.ndarray:
            spi = np.zeros(len(p), np.int64)
            for j in range(4):
                spi = (spi << 8) | p.head[rows, np.minimum(off + j, HEAD_BYTES - 1)]
            return esp_shaped_rows(spi, size) & (n >= off + 4)

        zero = np.zeros(len(p), np.int64)
        # UDP: an IKE header passes; a neutral datagram (ESP, keepalive) waits in the window; any other
        # packet after the first passes, for the dissector to reject on (a first one closes the window).
        udp = np.where(marked, ike_at(zero + 4, n - 4), ike_at(zero, n)) | ~(p.first() | udp_neutral_rows(p))

        # TCP: optional IKETCP prefix, then a 2-byte length that counts itself.
        prefix = np.frombuffer(IKETCP_PREFIX, np.uint8)
        k = len(IKETCP_PREFIX)
        has_prefix = (n >= k) & (p.head[:, :k] == prefix).all(axis=1)
        part_prefix = (n < k) & ((p.head[:, :k] == prefix) | (np.arange(k) >= n[:, None])).all(axis=1)
        o = np.where(has_prefix, k, 0)
        rest = n - o
        size = zero.copy()
        for j in range(TCP_LENGTH):
            size = (size << 8) | p.head[rows, np.minimum(o + j, HEAD_BYTES - 1)]
        body, b0 = size - TCP_LENGTH, o + TCP_LENGTH
        complete = rest >= size
        have = np.minimum(rest - TCP_LENGTH, 4 + ISAKMP_HEADER)  # bytes of an incomplete frame's head
        bmarked = np.ones(len(p), bool)
        for j in range(4):
            bmarked &= p.head[rows, np.minimum(b0 + j, HEAD_BYTES - 1)] == 0
        b_keepalive = (body == 1) & (p.head[rows, np.minimum(b0, HEAD_BYTES - 1)] == NAT_KEEPALIVE[0])
        whole = b_keepalive | np.where(bmarked & (body >= 4), ike_at(b0 + 4, body - 4), esp_at(b0, body))
        partial = (have < 4) | np.where(bmarked, (have < 4 + ISAKMP_HEADER) | ike_at(b0 + 4, body - 4),
                                        esp_at(b0, body))
        framed = (size > TCP_LENGTH) & np.where(complete, whole, partial)
        tcp = part_prefix | (rest < TCP_LENGTH) | framed
        return np.where(p.proto == IPPROTO_TCP, tcp, (p.proto == IPPROTO_UDP) & udp)

    @classmethod
    def closes_window(cls, p: PacketHeads) -> np.ndarray:
        """A TCP flow's first segment decides (the prefilter mirrors `_cut_frames`); a UDP flow's first
        datagram rules IKE out unless it is neutral."""
        return (p.proto == IPPROTO_TCP) | ~udp_neutral_rows(p)

    def __init__(self) -> None:
        super().__init__()
        self._first: tuple[FlowPacket, IKEMessage] | None = None
        self._unanswered: dict[tuple[bytes, int, str], tuple[FlowPacket, IKEMessage]] = {}
        self._waited = 0
        self._streams = (_Stream(), _Stream())

    def on_packet(self, pkt: FlowPacket) -> None:
        units = self._tcp_frames(pkt) if pkt.proto == IPPROTO_TCP else [self._datagram(pkt.payload)]
        for unit in units:
            self._judge(pkt, unit)
            if self.state is not State.CANDIDATE:
                return
        if self._first and self.seen >= self.budget:
            self._settle_single()

    def on_end(self) -> None:
        if self._first:
            self._settle_single()

    def _datagram(self, p: bytes) -> IKEMessage | str:
        """One UDP payload: keepalive, IKE (with or without the non-ESP marker), ESP, or a reason."""
        if p == NAT_KEEPALIVE:
            return KEEPALIVE
        marked = p[:4] == NON_ESP_MARKER
        msg = p[4:] if marked else p
        result = parse_ike(msg)
        if isinstance(result, IKEMessage):
            if marked:
                self.attributes["nat_t"] = "non-ESP marker"
            return result
        if identified(msg, len(msg)):
            self.attributes["malformed"] = result
            return MALFORMED
        if ends_early(msg):
            self.raise_risk(MALFORMED_HEADER)
        if not marked and esp_shaped(p[:4], len(p)):
            return ESP_PACKET
        return "not IKE: " + result

    def _judge(self, pkt: FlowPacket, unit: IKEMessage | str) -> None:
        """Fold one message into the verdict: pair it with the first one, wait, or give up."""
        if isinstance(unit, IKEMessage):
            request = self._request_answered_by(pkt, unit)
            if request:
                self._confirm_pair(request, unit, pkt)
                return
            self._unanswered.setdefault((unit.ispi, unit.msgid, unit.exchange), (pkt, unit))
            if self._first is None:
                self._first = (pkt, unit)
                return
        elif unit == MALFORMED:
            self.raise_risk(MALFORMED_HEADER)
        elif unit not in NEUTRAL:
            if self._first:
                self._settle_single()  # the first message's own consistency still stands
            else:
                self.reject(unit)
            return
        if self._first:
            self._waited += 1
            if self._waited >= RESPONSE_WAIT:
                self._settle_single()
        elif self.seen >= ESP_BEFORE_IKE and "malformed" not in self.attributes:
            self.reject(f"no IKE message in the first {self.seen} packets")

    def _request_answered_by(self, pkt: FlowPacket, msg: IKEMessage) -> IKEMessage | None:
        """The earlier message `msg` replies to: other direction, same SA, message ID and exchange."""
        earlier = self._unanswered.get((msg.ispi, msg.msgid, msg.exchange))
        if earlier is None:
            return None
        earlier_pkt, request = earlier
        if earlier_pkt.direction == pkt.direction:
            return None
        return request if msg.version == 1 or msg.is_response != request.is_response else None

    def _confirm_pair(self, request: IKEMessage, reply: IKEMessage, pkt: FlowPacket) -> None:
        self._describe(request, reply)
        self.confirm(
            pkt,
            0.99,
            f"{request.describe()} and {reply.describe()} in opposite directions share initiator SPI "
            f"{request.ispi.hex()}; length fields and payload chains consistent",
        )

    def _settle_single(self) -> None:
        pkt, first = self._first
        self._describe(first)
        chain = f"{first.payloads}-payload chain"
        if first.encrypted and not first.payloads:
            chain = "encrypted body"
        spi = first.ispi.hex()
        self.confirm(pkt, 0.95, f"{first.describe()}: length field and {chain} consistent, initiator SPI {spi}")

    def _describe(self, *msgs: IKEMessage) -> None:
        self.attributes["version"] = str(msgs[0].version)
        self.attributes["exchange"] = msgs[0].exchange
        if any(m.fragmented for m in msgs):
            self.attributes["fragmentation"] = "RFC 7383 SKF" if msgs[0].version == 2 else "IKEv1 vendor"

    def _tcp_frames(self, pkt: FlowPacket) -> list[IKEMessage | str]:
        """RFC 8229 framing: append the segment to its direction's stream and cut complete frames.
        A frame that is still incomplete is judged on its header as soon as that has arrived, so a
        foreign TCP stream is rejected on its first segment rather than after a 2-byte 'length'."""
        st = self._streams[pkt.direction]
        data = pkt.payload
        if st.next_seq is not None:
            behind = (st.next_seq - pkt.tcp_seq) & 0xFFFFFFFF
            if behind >= 1 << 31:
                return ["TCP stream gap: bytes missing from the capture"]
            data = data[behind:]  # drop retransmitted bytes
        st.next_seq = (pkt.tcp_seq + len(pkt.payload)) & 0xFFFFFFFF
        st.buf += data
        if not st.started:
            if len(st.buf) < len(IKETCP_PREFIX) and IKETCP_PREFIX.startswith(st.buf):
                return []
            if st.buf.startswith(IKETCP_PREFIX):
                del st.buf[: len(IKETCP_PREFIX)]
                self.attributes["transport"] = "tcp (RFC 8229, IKETCP prefix)"
            self.attributes.setdefault("transport", "tcp (RFC 8229)")
            st.started = True
        return _cut_frames(st.buf)


def _cut_frames(buf: bytearray) -> list[IKEMessage | str]:
    """Consume complete frames from `buf`; an incomplete one is only header-checked."""
    units: list[IKEMessage | str] = []
    while len(buf) >= TCP_LENGTH:
        size = int.from_bytes(buf[:TCP_LENGTH], "big")
        if size <= TCP_LENGTH:
            units.append(f"RFC 8229 frame length {size} leaves no message")
            break
        if len(buf) < size:
            head = bytes(buf[TCP_LENGTH : TCP_LENGTH + 4 + ISAKMP_HEADER])
            problem = _frame_head_problem(head, size - TCP_LENGTH)
            if problem:
                units.append(problem)
            break
        units.append(_frame(bytes(buf[TCP_LENGTH:size])))
        del buf[:size]
    return units


def _frame(body: bytes) -> IKEMessage | str:
    """One complete RFC 8229 frame body: keepalive, IKE after the non-ESP marker, or ESP."""
    if body == NAT_KEEPALIVE:
        return KEEPALIVE
    if body[:4] == NON_ESP_MARKER:
        result = parse_ike(body[4:])
        if isinstance(result, IKEMessage):
            return result
        return MALFORMED if identified(body[4:], len(body) - 4) else "not IKE over TCP: " + result
    if esp_shaped(body[:4], len(body)):
        return ESP_PACKET
    return f"RFC 8229 frame of {len(body)} B is neither IKE nor ESP"


def _frame_head_problem(head: bytes, body_size: int) -> str | None:
    """Early check of a frame whose body has not fully arrived (`head` = its first bytes)."""
    if len(head) < 4:
        return None
    if head[:4] == NON_ESP_MARKER:
        if len(head) < 4 + ISAKMP_HEADER or identified(head[4:], body_size - 4):
            return None
        return f"not IKE over TCP: no IKE version byte and length field for {body_size - 4} B"
    if esp_shaped(head[:4], body_size):
        return None
    return f"RFC 8229 frame of {body_size} B is neither IKE nor ESP"
