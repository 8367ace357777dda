"""Shadowsocks AEAD (SIP004) over TCP: a stream that is random from its first byte in both directions.

Shadowsocks has no fixed bytes. Each direction opens with a random salt (16, 24 or 32 bytes) followed by
AEAD chunks of `encrypted length (2) + tag (16) + encrypted payload (1..0x3FFF) + tag (16)`; the client's
first chunk holds the target address. So a chunk is never shorter than 35 bytes, the client's first
segment never shorter than salt + 35 + a SOCKS address, and nothing in either direction's first segment
is printable text, a clear length field or a zeroed header.

That is the passive half of what the Great Firewall does (Wu et al., USENIX Security 2023): a first
packet is "fully encrypted" unless it is exempt because its bits per byte fall outside 3.4..4.6, its
first 6 bytes are printable, more than half of it is printable, or it has a run of 20 printable bytes.
Requiring it of both first segments, plus the AEAD size floor on the segments that follow, no text in
them, and no structured header (a length field or zero padding, as in Ethereum RLPx, WhatsApp Noise,
or game and chat protocols), leaves fully encrypted proxies. Other fully encrypted proxies (VMess,
obfs4) look the same by design, so confidence stays moderate.

Mid-flow the bytes say nothing: the flow's start (TCP SYN) must have been seen. The exemptions cost a
little recall by design: about 1 connection in 200 has a first segment with printable first bytes,
mostly printable bytes or a 16-bit field that looks like its length.
"""

from __future__ import annotations

from typing import ClassVar

from vpnid.features.dissectors.base import Dissector, FlowPacket, State
from vpnid.features.families import SHADOWSOCKS
from vpnid.features.packets import IPPROTO_TCP

MIN_SALT = 16  # SIP004: salt is the key size, 16 (AES-128-GCM), 24 or 32 bytes
CHUNK_OVERHEAD = 2 + 16 + 16  # encrypted length + its tag + the payload's tag
MIN_CHUNK = CHUNK_OVERHEAD + 1
MIN_ADDRESS = 1 + 1 + 1 + 2  # SOCKS5 address: type, domain length, a 1-byte domain, port
MIN_CLIENT_FIRST = MIN_SALT + CHUNK_OVERHEAD + MIN_ADDRESS
MIN_SERVER_FIRST = MIN_SALT + MIN_CHUNK
# GFW exemption thresholds (Wu et al. 2023, section 4; nDPI's fully_enc_heuristic).
MIN_BITS_PER_BYTE, MAX_BITS_PER_BYTE = 3.4, 4.6
PRINTABLE_PREFIX = 6
PRINTABLE_RUN = 20
LATER_PRINTABLE_RUN = 16  # in later segments: random bytes hold such a run with p ~ 1e-7 per byte offset
MOSTLY_TEXT_MIN = 256  # shorter random segments are "mostly printable" too often (37% of bytes are)
HEADER = 8  # leading bytes checked for zeroed fields
LENGTH_OFFSETS = range(4)  # where a 16-bit length field is looked for
LENGTH_SLACK = 4  # a field 0..4 below the segment length is taken for a length (of the rest, or all)
FULL_SEGMENT = 536  # a shorter segment is a whole write, not the middle of a split chunk
CONFIRM_AFTER = 8  # payload segments (both first segments included) checked before confirming

_PRINTABLE = bytes(0x20 <= i <= 0x7E for i in range(256))


def exemption(p: bytes, client: bool = True) -> str | None:
    """Why `p` is not fully encrypted (a GFW exemption or a visible header), or None if it looks random.
    The printable-prefix exemption is the GFW's for client packets only; on the server's first segment
    it would cost recall (1 in 400 random segments) and the other checks cover text there."""
    n = len(p)
    bits = int.from_bytes(p, "big").bit_count() / n
    if not MIN_BITS_PER_BYTE < bits < MAX_BITS_PER_BYTE:
        return f"{bits:.2f} set bits per byte"
    printable = p.translate(_PRINTABLE)
    if client and all(printable[:PRINTABLE_PREFIX]):
        return "printable first bytes"
    if printable.count(1) * 2 > n:
        return "mostly printable"
    if b"\1" * PRINTABLE_RUN in printable:
        return f"{PRINTABLE_RUN} printable bytes in a row"
    head = p[:HEADER]
    if head.count(0) >= 3:
        return "zeroed header fields"
    for off in LENGTH_OFFSETS:
        for value in (int.from_bytes(p[off : off + 2], "big"), int.from_bytes(p[off : off + 2], "little")):
            if n - LENGTH_SLACK <= value <= n:
                return f"length field at offset {off}"
    return None


def text_in(p: bytes) -> str | None:
    """Plain text inside a later segment (a protocol that went clear after its handshake, or printable
    payload); ciphertext has neither except by a chance far below one in a thousand segments."""
    printable = p.translate(_PRINTABLE)
    if len(p) >= MOSTLY_TEXT_MIN and printable.count(1) * 2 > len(p):
        return "mostly printable"
    if b"\1" * LATER_PRINTABLE_RUN in printable:
        return f"{LATER_PRINTABLE_RUN} printable bytes in a row"
    return None


class Shadowsocks(Dissector):
    """Shadowsocks AEAD: both first segments fully encrypted and AEAD-sized, client first, start seen."""

    family: ClassVar[str] = SHADOWSOCKS
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_TCP})
    budget: ClassVar[int] = 2 * CONFIRM_AFTER  # room for a client that sends several segments first
    feature_state: ClassVar[bool] = False  # came after feature schema v1

    def __init__(self) -> None:
        super().__init__()
        self._first = [0, 0]  # first segment size per direction (0: none yet)
        self._last = [0, 0]
        self._latest: FlowPacket | None = None  # the packet a verdict is dated to

    def on_packet(self, pkt: FlowPacket) -> None:
        d, p = pkt.direction, pkt.payload
        if self.seen == 1:
            if not pkt.opened:
                self.reject("the flow's start was not seen")
            elif d != 0:
                self.reject("the responder spoke first")
        if self.state is not State.CANDIDATE:
            return
        if not self._first[d]:
            floor = MIN_CLIENT_FIRST if d == 0 else MIN_SERVER_FIRST
            why = exemption(p, d == 0) if len(p) >= floor else f"{len(p)} bytes, below the AEAD floor of {floor}"
            if why:
                self.reject(f"first {'client' if d == 0 else 'server'} segment not fully encrypted: {why}")
                return
            self._first[d] = len(p)
        elif len(p) < MIN_CHUNK and self._last[d] < FULL_SEGMENT:
            self.reject(f"a {len(p)}-byte segment cannot hold an AEAD chunk")
            return
        elif why := text_in(p):
            self.reject(f"a later segment carries text ({why}): not ciphertext")
            return
        self._last[d] = len(p)
        self._latest = pkt
        if self.seen >= CONFIRM_AFTER and all(self._first):
            self._decide()

    def on_end(self) -> None:
        """A short connection (one request, one answer) ends before CONFIRM_AFTER segments."""
        if all(self._first):
            self._decide()

    def _decide(self) -> None:
        self.confirm(self._latest, 0.6, f"first segments of both sides fully encrypted ({self._first[0]} and "
                                        f"{self._first[1]} bytes: no printable text, header, length field or "
                                        "skewed bit counts), every segment at least one AEAD chunk, client "
                                        "spoke first (Shadowsocks-style fully encrypted proxy)")
