"""OpenConnect / AnyConnect CSTP: a VPN tunnel carried in TLS records, one IP packet per record.

CSTP is HTTPS until the client's `CONNECT /CSCOSSLC/tunnel`; from then on every TLS record holds one CSTP
packet: an 8-byte header ('S' 'T' 'F' 0x01, length, type, 0) and, for data, one whole IP packet. Both
ends write each CSTP packet with its own record (ocserv and openconnect do), so with an AEAD cipher the
record length gives the inner packet's length exactly:

    inner = record length - AEAD overhead (from the ServerHello's suite) - 8

The inner sizes then show the tunnel (see `ipshape`). A capture that starts mid-stream is tried under
each AEAD overhead, from the first segment of each direction that starts with an application-data record.

When DTLS carries the data, the TLS connection stays quiet; the DTLS flow names it instead (see
`OpenConnect.sibling_transport`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.ipshape import InnerSizes
from vpnid.features.dissectors.tcpstream import InOrderStream
from vpnid.features.families import OPENCONNECT
from vpnid.features.packets import IPPROTO_TCP

# TLS record layer (RFC 5246 section 6.2; RFC 8446 section 5.1).
RECORD_HEADER = 5
CONTENT_HANDSHAKE, CONTENT_APPLICATION_DATA = 22, 23
CONTENT_TYPES = frozenset({20, 21, 22, 23})
MAX_RECORD = 2**14 + 2048  # RFC 5246 section 6.2.3: TLSCiphertext.length limit
SERVER_HELLO = 2
RANDOM_SIZE = 32
HEAD = 4 + 2 + RANDOM_SIZE + 1 + 32 + 2  # record bytes kept: a ServerHello up to its cipher suite

# Per-record expansion of the AEAD suites: explicit nonce + tag in TLS 1.2 (RFC 5288 section 3: 8 + 16;
# RFC 7905: ChaCha20-Poly1305 has no explicit nonce, 16), inner content type + tag in TLS 1.3 (RFC 8446
# section 5.2: 1 + 16, no padding by default).
TLS13_OVERHEAD = 17
GCM_OVERHEAD, CHACHA_OVERHEAD = 24, 16
TLS13_SUITES = frozenset(range(0x1301, 0x1306))
GCM_SUITES = frozenset([*range(0x009C, 0x00AE), *range(0xC02B, 0xC033), 0xD001, 0xD002])
CHACHA_SUITES = frozenset(range(0xCCA8, 0xCCAF))

CSTP_HEADER = 8  # 'S' 'T' 'F' 0x01, length (2), type, 0
SKIP_RECORDS = 4  # application records per direction before the tunnel starts (HTTP auth and CONNECT)
APPLICATION_HEADER = bytes([CONTENT_APPLICATION_DATA, 3, 3])  # a TLS 1.2/1.3 application-data record
MID_FLOW_OVERHEADS = (GCM_OVERHEAD, CHACHA_OVERHEAD, TLS13_OVERHEAD)
# A tunnel packet is at most one IP packet of the tunnel MTU (AnyConnect's is below the 1500 of the
# path it runs over), so a bigger record, HTTPS's 16 KiB bulk records for one, is not CSTP.
MAX_RECORD_SIZE = 1500 + CSTP_HEADER + GCM_OVERHEAD
MAX_UNSYNCED = 3  # mid-flow: segments per direction that may pass before one starts with a record
MAX_RECORDS = 48  # application records (both directions) after which a flow without the run is not CSTP


def record_overhead(suite: int) -> int | None:
    """Bytes an AEAD record adds to its plaintext under `suite`; None for CBC and unknown suites."""
    if suite in TLS13_SUITES:
        return TLS13_OVERHEAD
    if suite in GCM_SUITES:
        return GCM_OVERHEAD
    if suite in CHACHA_SUITES:
        return CHACHA_OVERHEAD
    return None


def server_hello_suite(body: bytes) -> int | None:
    """The cipher suite chosen by a ServerHello handshake message (RFC 5246 section 7.4.1.3)."""
    if len(body) < 4 + 2 + RANDOM_SIZE + 1 or body[0] != SERVER_HELLO:
        return None
    pos = 4 + 2 + RANDOM_SIZE
    pos += 1 + body[pos]  # session id
    return int.from_bytes(body[pos : pos + 2], "big") if pos + 2 <= len(body) else None


class RecordWalker(InOrderStream):
    """One direction of a TLS-over-TCP stream cut into records."""

    __slots__ = ()

    def push(self, seq: int, data: bytes) -> list[tuple[int, int, bytes]] | None:
        """Add one segment; returns the (content type, length, first body bytes) of the records it
        completed, None if the bytes cannot be TLS records."""
        if not self.append(seq, data):
            return []
        out = []
        while len(self.buf) >= RECORD_HEADER:
            size = int.from_bytes(self.buf[3:5], "big")
            if self.buf[0] not in CONTENT_TYPES or self.buf[1] != 3 or size > MAX_RECORD:
                return None
            if len(self.buf) < RECORD_HEADER + size:
                break
            out.append((self.buf[0], size, bytes(self.buf[RECORD_HEADER : RECORD_HEADER + HEAD])))
            del self.buf[: RECORD_HEADER + size]
        return out


class Cstp(Dissector):
    """AnyConnect CSTP tunnel inside TLS: IP packets one per AEAD record, seen through record lengths."""

    family: ClassVar[str] = OPENCONNECT
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_TCP})
    budget: ClassVar[int] = 96
    feature_state: ClassVar[bool] = False  # came after feature schema v1 (its sig_openconnect is DTLS)

    # A connection joined mid-flow is rejected once one direction has shown MAX_UNSYNCED segments that do
    # not start with an application-data record; among a flow's first 2 * (MAX_UNSYNCED - 1) + 1 payload
    # packets one direction has that many.
    prefilter_window: ClassVar[int] = 2 * (MAX_UNSYNCED - 1) + 1

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """A segment that could start the dissector's stream: the client's TLS handshake record (what a
        connection seen to open must start with), or, joined mid-flow, a segment that starts with an
        application-data record (the dissector waits for one). Whether the flow was seen to open is not
        looked at: only the first packet's counts, and the window may span chunks."""
        hello = (p.direction == 0) & (p.u8(0) == CONTENT_HANDSHAKE)
        application = (p.length >= len(APPLICATION_HEADER)) & (p.be(0, 3) == int.from_bytes(APPLICATION_HEADER, "big"))
        return (p.proto == IPPROTO_TCP) & (hello | application)

    @classmethod
    def closes_window(cls, p: PacketHeads) -> np.ndarray:
        """A connection seen to open must start with the client's handshake record, or is rejected on its
        first payload packet: only one joined mid-flow needs the window."""
        return p.opened.copy()

    def __init__(self) -> None:
        super().__init__()
        self._walkers: list[RecordWalker | None] = [RecordWalker(), RecordWalker()]
        self._mid_flow = False  # no ServerHello: every AEAD overhead is tried
        self._skip = [SKIP_RECORDS, SKIP_RECORDS]
        self._unsynced = [0, 0]
        self._heard = [False, False]  # a payload packet of each direction seen
        self._sizes: dict[int, InnerSizes] = {}

    def on_packet(self, pkt: FlowPacket) -> None:
        d = pkt.direction
        self._heard[d] = True
        if self.seen == 1 and (d != 0 or pkt.payload[:1] != bytes([CONTENT_HANDSHAKE])):
            if pkt.opened:
                self.reject("the connection was seen to open, and not with a TLS ClientHello")
                return
            self._join_mid_flow()
            self._walkers = [None, None]
        if self._walkers[d] is None:  # mid-flow: wait for a segment that starts with a record
            if pkt.payload[:3] != APPLICATION_HEADER:
                self._unsynced[d] += 1
                if self._unsynced[d] >= MAX_UNSYNCED:
                    self.reject(f"mid-flow, and none of {MAX_UNSYNCED} segments starts with a TLS record")
                return
            self._walkers[d] = RecordWalker()
        records = self._walkers[d].push(pkt.tcp_seq, pkt.payload)
        if records is None:
            self.reject("the stream is not a sequence of TLS records")
            return
        for content, size, head in records:
            if not self._sizes:
                if d == 1 and content == CONTENT_HANDSHAKE:
                    self._server_hello(head)
                elif d == 0 and content == CONTENT_APPLICATION_DATA and not self._heard[1]:
                    self._join_mid_flow()  # the client's data unanswered: only its direction is in the capture
                    self._application(pkt, size)
            elif content == CONTENT_APPLICATION_DATA:
                self._application(pkt, size)
            if self.state is not State.CANDIDATE:
                return

    def _join_mid_flow(self) -> None:
        """No ServerHello to read the suite from: try every AEAD overhead, from the next records on."""
        self._mid_flow, self._skip = True, [0, 0]
        self._sizes = {overhead: InnerSizes() for overhead in MID_FLOW_OVERHEADS}

    def _server_hello(self, head: bytes) -> None:
        """The chosen suite fixes how many bytes each record adds to its plaintext."""
        suite = server_hello_suite(head)
        if suite is None:  # the capture began after the hellos: the rest of a handshake
            self._join_mid_flow()
        elif (overhead := record_overhead(suite)) is None:
            self.reject(f"cipher suite 0x{suite:04x} has no fixed per-record overhead")
        else:
            self._sizes = {overhead: InnerSizes()}
            self.attributes["tls_suite"] = f"0x{suite:04x}"

    def _application(self, pkt: FlowPacket, size: int) -> None:
        d = pkt.direction
        if self._skip[d]:
            self._skip[d] -= 1
            return
        if size > MAX_RECORD_SIZE:
            self.reject(f"a {size}-byte record holds more than one IP packet of a 1500-byte MTU")
            return
        for overhead, sizes in self._sizes.items():
            if run := sizes.add(d, size - overhead - CSTP_HEADER):
                how = f"a {overhead}-byte AEAD overhead (mid-flow guess)" if self._mid_flow else "the suite's overhead"
                one_way = not all(self._heard)
                if one_way:
                    self.attributes["one_way"] = "true"
                self.confirm(pkt, 0.6 if one_way else 0.7 if self._mid_flow else 0.8,
                             f"TLS records carry one IP packet each behind an 8-byte CSTP header, under {how}: "
                             f"{run} (AnyConnect CSTP tunnel" + (", one direction only)" if one_way else ")"))
                return
        if sum(next(iter(self._sizes.values())).records) >= MAX_RECORDS:  # every hypothesis counts the same
            self.reject(f"{MAX_RECORDS} application records without a tunnel's inner sizes")
