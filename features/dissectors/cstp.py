"""OpenConnect / AnyConnect CSTP: a VPN tunnel carried in TLS records, one IP packet per record.

CSTP is HTTPS until the client's `CONNECT /CSCOSSLC/tunnel`; from then on every TLS record holds one CSTP
packet: an 8-byte header ('S' 'T' 'F' 0x01, length, type, 0) and, for data, one whole IP packet. Both
ends write each CSTP packet with its own record (ocserv and openconnect do), so with an AEAD cipher the
record length gives the inner packet's length exactly:

    inner = record length - AEAD overhead (from the ServerHello's suite) - 8

The inner sizes then show the tunnel (see `ipshape`). A capture that starts mid-stream is tried under
each AEAD overhead, from the first segment of each direction that starts with an application-data record.
TLS 1.2's GCM suites send an explicit nonce, which OpenSSL, GnuTLS and BoringSSL fill with the record's
sequence number (RFC 5288 section 3 allows it): nonces stepping by one fix the overhead at GCM's, and
nonces that do not step rule GCM out (a stack with random GCM nonces is then missed, never mislabelled).

Mid-flow, OpenVPN over TCP wrapped in TLS (stunnel) looks the same: one OpenVPN packet per record, an IP
packet behind OpenVPN's data framing. With the suite a guess, CSTP under one overhead and OpenVPN under
another can read the same records as ACKs (TLS 1.3 + 27 bytes of OpenVPN framing is ChaCha20's 16 + 8
bytes of CSTP, 20 bytes off: IPv4's 52-byte ACKs read as IPv6's 72). So every mid-flow reading of both
tunnels is kept (`MID_FLOW_READINGS`), and the family named is the one whose reading explains the
records (`ipshape.Readings`); where neither leads, neither is named.

When DTLS carries the data, the TLS connection stays quiet; the DTLS flow names it instead (see
`OpenConnect.sibling_transport`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numba import njit

from vpnid.features.dissectors.base import Dissector, FlowPacket, FlowPayloads, PacketHeads, State
from vpnid.features.dissectors.ipshape import (
    ACK_SIZES,
    PACKED_FIXED,
    RECORDS,
    SHAPED,
    InnerSizes,
    Reading,
    Readings,
    add_packed,
)
from vpnid.features.dissectors.openvpn import PING_SIZE, TCP_AEAD_DATA_FRAMINGS
from vpnid.features.dissectors.tcpstream import SEQ_MOD, InOrderStream
from vpnid.features.families import OPENCONNECT, OPENVPN
from vpnid.features.packets import IPPROTO_TCP

# TLS record layer (RFC 5246 section 6.2; RFC 8446 section 5.1).
RECORD_HEADER = 5
CONTENT_HANDSHAKE, CONTENT_APPLICATION_DATA = 22, 23
CONTENT_LOW, CONTENT_HIGH = 20, 23  # change_cipher_spec, alert, handshake, application_data
CONTENT_TYPES = frozenset(range(CONTENT_LOW, CONTENT_HIGH + 1))
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
SUITE_OVERHEADS = np.zeros(1 << 16, np.int64)  # per suite: the overhead, 0 for CBC and unknown suites
SUITE_OVERHEADS[sorted(TLS13_SUITES)] = TLS13_OVERHEAD
SUITE_OVERHEADS[sorted(GCM_SUITES)] = GCM_OVERHEAD
SUITE_OVERHEADS[sorted(CHACHA_SUITES)] = CHACHA_OVERHEAD

CSTP_HEADER = 8  # 'S' 'T' 'F' 0x01, length (2), type, 0
SKIP_RECORDS = 4  # application records per direction before the tunnel starts (HTTP auth and CONNECT)
APPLICATION_HEADER = bytes([CONTENT_APPLICATION_DATA, 3, 3])  # a TLS 1.2/1.3 application-data record
MID_FLOW_OVERHEADS = (GCM_OVERHEAD, CHACHA_OVERHEAD, TLS13_OVERHEAD)
# A tunnel packet is at most one IP packet of the tunnel MTU (AnyConnect's is below the 1500 of the
# path it runs over), so a bigger record, HTTPS's 16 KiB bulk records for one, is not CSTP.
MAX_RECORD_SIZE = 1500 + CSTP_HEADER + GCM_OVERHEAD
MAX_UNSYNCED = 3  # mid-flow: segments per direction that may pass before one starts with a record
MAX_RECORDS = 48  # application records (both directions) after which a flow without the run is not CSTP
EXPLICIT_NONCE = 8  # TLS 1.2 GCM: the record body starts with it (RFC 5288 section 3)
NONCE_STEPS = 3  # records in a row, per direction, whose explicit nonce steps by one: a sequence-number nonce
OPENVPN_SIZES = ACK_SIZES | {PING_SIZE}  # an OpenVPN data packet's tunnel-shaped payloads


# The readings of TLS records that carry one tunnel packet each, under each guessed AEAD overhead: CSTP's
# 8-byte header, and OpenVPN's TCP data framings (with the tunnel-shaped inner sizes of each).
MID_FLOW_READINGS = {**{Reading(OPENCONNECT, t, CSTP_HEADER): SHAPED for t in MID_FLOW_OVERHEADS},
                     **{Reading(OPENVPN, t, f): OPENVPN_SIZES
                        for t in MID_FLOW_OVERHEADS for f in TCP_AEAD_DATA_FRAMINGS}}


class NonceSteps:
    """TLS 1.2 GCM explicit nonces per direction: whether they count records (only GCM's overhead is then
    possible), do not (GCM is ruled out), or are undecided yet."""

    __slots__ = ("_last", "_steps", "stepping")

    def __init__(self) -> None:
        self._last: list[int | None] = [None, None]
        self._steps = [0, 0]
        self.stepping: bool | None = None

    def add(self, d: int, body: bytes) -> bool | None:
        """One application record's first body bytes; returns `stepping` once it is decided."""
        nonce = int.from_bytes(body[:EXPLICIT_NONCE], "big")
        last, self._last[d] = self._last[d], nonce
        if self.stepping is None and last is not None:
            if nonce != last + 1:
                self.stepping = False
            else:
                self._steps[d] += 1
                self.stepping = True if self._steps[d] >= NONCE_STEPS else None
        return self.stepping


def narrow(readings: Readings, nonces: NonceSteps, d: int, body: bytes) -> None:
    """Let a record's explicit nonce rule GCM's overhead in or out of the mid-flow readings."""
    if nonces.stepping is None and (stepping := nonces.add(d, body)) is not None:
        readings.keep(lambda r: (r.wrapper == GCM_OVERHEAD) == stepping)


def record_overhead(suite: int) -> int | None:
    """Bytes an AEAD record adds to its plaintext under `suite`; None for CBC and unknown suites."""
    return int(SUITE_OVERHEADS[suite]) or None


def server_hello_suite(body: bytes) -> int | None:
    """The cipher suite chosen by a ServerHello handshake message (RFC 5246 section 7.4.1.3)."""
    suite = _hello_suite(np.frombuffer(body, np.uint8))
    return None if suite < 0 else suite


@njit(cache=True, nogil=True)
def _hello_suite(body: np.ndarray) -> int:  # pragma: no cover - compiled
    """`server_hello_suite` of a handshake message's first bytes as an array (also in a compiled stage's
    walk); -1 for None."""
    if len(body) < 4 + 2 + RANDOM_SIZE + 1 or body[0] != SERVER_HELLO:
        return -1
    pos = 4 + 2 + RANDOM_SIZE
    pos += 1 + np.int64(body[pos])  # session id
    return (np.int64(body[pos]) << 8) | np.int64(body[pos + 1]) if pos + 2 <= len(body) else -1


class RecordWalker(InOrderStream):
    """One direction of a TLS-over-TCP stream cut into records."""

    __slots__ = ()

    def pack(self, row: np.ndarray) -> None:
        """Write the walk as a compiled stage keeps it into `row`, WALK_SLOTS zeros (see `WALK_NEXT`)."""
        kept = self.buf[:KEPT]
        row[:WALK_BYTES] = -1 if self.next_seq is None else self.next_seq, self.broken, len(self.buf)
        row[WALK_BYTES : WALK_BYTES + len(kept)] = np.frombuffer(kept, np.uint8)

    def unpack(self, row: np.ndarray) -> None:
        """Take the walk back from a row `pack` made and a compiled stage advanced. Bytes of the current
        record beyond its first KEPT are not kept there; `push` reads only those, so they come back as
        zeros that hold their place."""
        next_seq, broken, have = row[:WALK_BYTES].tolist()
        self.next_seq = None if next_seq < 0 else next_seq
        self.broken = bool(broken)
        kept = min(have, KEPT)
        self.buf = bytearray(row[WALK_BYTES : WALK_BYTES + kept].astype(np.uint8).tobytes()) + bytearray(have - kept)

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


# A direction's walk in a compiled stage (`RecordWalker.pack`): the next sequence number (-1: none yet),
# whether a gap broke it, the bytes of the current record so far, and the first KEPT of them (its header
# and the head `push` reports).
WALK_NEXT, WALK_BROKEN, WALK_HAVE, WALK_BYTES = range(4)
KEPT = RECORD_HEADER + HEAD
WALK_SLOTS = WALK_BYTES + KEPT


class RecordStreams:
    """Both directions of a TLS-over-TCP stream as records. Joined mid-flow, a direction is cut from its
    first segment that starts with an application-data record, and given up after MAX_UNSYNCED segments
    that do not."""

    __slots__ = ("walkers", "unsynced")

    def __init__(self, mid_flow: bool = False) -> None:
        self.walkers: list[RecordWalker | None] = [None, None] if mid_flow else [RecordWalker(), RecordWalker()]
        self.unsynced = [0, 0]

    def push(self, d: int, seq: int, payload: bytes) -> list[tuple[int, int, bytes]] | str:
        """One segment of direction `d`: the records it completed, or why the stream is not TLS records."""
        if self.walkers[d] is None:
            if payload[:3] != APPLICATION_HEADER:
                self.unsynced[d] += 1
                if self.unsynced[d] >= MAX_UNSYNCED:
                    return f"mid-flow, and none of {MAX_UNSYNCED} segments starts with a TLS record"
                return []
            self.walkers[d] = RecordWalker()
        records = self.walkers[d].push(seq, payload)
        return "the stream is not a sequence of TLS records" if records is None else records


# `Cstp`'s state in its compiled stage (`Cstp.skim`): packets seen, the suite's overhead (0: no ServerHello
# yet) and the suite, then per direction the application records still to skip, whether a packet was heard,
# the walk (WALK_SLOTS) and the inner sizes (`InnerSizes.pack`).
SKIM_SEEN, SKIM_OVERHEAD, SKIM_SUITE = 0, 1, 2
SKIM_DIRECTION = 3
SKIP_AT, HEARD_AT, WALK_AT, SIZES_AT = 0, 1, 2, 2 + WALK_SLOTS
SKIM_SHAPED = np.array(sorted(SHAPED), np.int64)
DIRECTION_SLOTS = SIZES_AT + PACKED_FIXED + 2 * len(SHAPED)


@njit(inline="always")
def _record_size(row: np.ndarray, w: int) -> int:  # pragma: no cover - compiled
    """The length field of the record header kept in the walk at `row[w:]`."""
    return (row[w + WALK_BYTES + 3] << 8) | row[w + WALK_BYTES + 4]


@njit(cache=True, nogil=True)
def walk_packed(row: np.ndarray, w: int, seq: int, payload: np.ndarray) -> tuple[bool, np.ndarray]:  # pragma: no cover - compiled
    """`RecordWalker.push` on a walk packed at `row[w:]` (`RecordWalker.pack`): whether the bytes can be
    TLS records, and for each record the segment completes a row (content type, length, the suite a
    ServerHello chose or -1: `server_hello_suite` of its first bytes, which the next record overwrites)."""
    done = np.empty((len(payload) // RECORD_HEADER + 1, 3), np.int64)  # each after the first takes a header
    if row[w + WALK_BROKEN]:
        return True, done[:0]
    cut = 0
    if row[w + WALK_NEXT] >= 0:  # `InOrderStream.append`
        ahead = (seq - row[w + WALK_NEXT]) % SEQ_MOD
        if ahead >= SEQ_MOD // 2:
            cut = (row[w + WALK_NEXT] - seq) % SEQ_MOD
            seq = row[w + WALK_NEXT]
        elif ahead:
            row[w + WALK_BROKEN] = 1
            return True, done[:0]
    n = len(payload)
    row[w + WALK_NEXT] = (seq + max(n - cut, 0)) % SEQ_MOD
    q, count = cut, 0
    while q < n:
        have = row[w + WALK_HAVE]
        if have < RECORD_HEADER:
            row[w + WALK_BYTES + have] = payload[q]
            have += 1
            q += 1
            if have == RECORD_HEADER:
                content, version = row[w + WALK_BYTES], row[w + WALK_BYTES + 1]
                if not CONTENT_LOW <= content <= CONTENT_HIGH or version != 3 or _record_size(row, w) > MAX_RECORD:
                    return False, done[:count]
        else:
            take = min(RECORD_HEADER + _record_size(row, w) - have, n - q)
            for j in range(min(take, max(KEPT - have, 0))):
                row[w + WALK_BYTES + have + j] = payload[q + j]
            have += take
            q += take
        row[w + WALK_HAVE] = have
        if have < RECORD_HEADER or have < RECORD_HEADER + _record_size(row, w):
            continue
        row[w + WALK_HAVE] = 0
        content, size = row[w + WALK_BYTES], _record_size(row, w)
        body = row[w + WALK_BYTES + RECORD_HEADER : w + WALK_BYTES + RECORD_HEADER + min(size, HEAD)]
        done[count, 0], done[count, 1] = content, size
        done[count, 2] = _hello_suite(body) if content == CONTENT_HANDSHAKE else -1
        count += 1
    return True, done[:count]


@njit(inline="always")
def packed_payload(offset: np.ndarray, length: np.ndarray, data: np.ndarray, extra: np.ndarray,
                   p: int) -> np.ndarray:  # pragma: no cover - compiled
    """Row `p`'s payload in `FlowPayloads` columns."""
    a = offset[p]
    return data[a : a + length[p]] if a < data.size else extra[a - data.size : a - data.size + length[p]]


@njit(cache=True, nogil=True)
def _skim_packet(row: np.ndarray, d: int, seq: int, payload: np.ndarray, budget: int,
                 overheads: np.ndarray) -> bool:  # pragma: no cover - compiled
    """`Cstp.feed` on one packet in the state `Cstp.skims` allows (the connection opened by the client's
    handshake record), on a packed row: False where it would decide or join mid-flow (the row is then left
    part-way). `overheads`: SUITE_OVERHEADS."""
    row[SKIM_SEEN] += 1
    base = SKIM_DIRECTION + d * DIRECTION_SLOTS
    row[base + HEARD_AT] = 1
    answered = row[SKIM_DIRECTION + DIRECTION_SLOTS + HEARD_AT]  # the server heard
    tls, records = walk_packed(row, base + WALK_AT, seq, payload)
    if not tls:
        return False  # rejected
    for r in range(len(records)):  # each record as `Cstp.on_packet` takes it
        content, size, suite = records[r, 0], records[r, 1], records[r, 2]
        if not row[SKIM_OVERHEAD]:  # `Cstp._server_hello`
            if d == 1 and content == CONTENT_HANDSHAKE:
                if suite < 0 or not overheads[suite]:
                    return False  # joins mid-flow, or rejected
                row[SKIM_OVERHEAD], row[SKIM_SUITE] = overheads[suite], suite
            elif d == 0 and content == CONTENT_APPLICATION_DATA and not answered:
                return False  # joins mid-flow
            continue
        if content != CONTENT_APPLICATION_DATA:  # `Cstp._application` from here on
            continue
        if row[base + SKIP_AT]:
            row[base + SKIP_AT] -= 1
            continue
        if size > MAX_RECORD_SIZE:
            return False
        if add_packed(row, base + SIZES_AT, SKIM_SHAPED, size - row[SKIM_OVERHEAD] - CSTP_HEADER):
            return False
        sizes = SKIM_DIRECTION + SIZES_AT + RECORDS
        if row[sizes] + row[sizes + DIRECTION_SLOTS] >= MAX_RECORDS:
            return False
    return row[SKIM_SEEN] < budget


@njit(cache=True, nogil=True)
def _skim_run(row: np.ndarray, direction: np.ndarray, seq: np.ndarray, offset: np.ndarray, length: np.ndarray,
              data: np.ndarray, extra: np.ndarray, budget: int, overheads: np.ndarray) -> int:  # pragma: no cover - compiled
    """`_skim_packet` over a flow's packets, up to the first that would decide; returns how many it took,
    with `row` as after them."""
    for p in range(len(direction)):
        trial = row.copy()
        payload = packed_payload(offset, length, data, extra, p)
        if not _skim_packet(trial, direction[p], seq[p], payload, budget, overheads):
            return p
        row[:] = trial
    return len(direction)


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
        self._streams = RecordStreams()
        self._mid_flow = False  # no ServerHello: every AEAD overhead is tried, for CSTP and wrapped OpenVPN
        self._readings: Readings | None = None
        self._nonces = NonceSteps()
        self._skip = [SKIP_RECORDS, SKIP_RECORDS]
        self._heard = [False, False]  # a payload packet of each direction seen
        self._sizes: dict[int, InnerSizes] = {}
        self._packed: np.ndarray | None = None  # the state while the compiled stage holds it (`skim`)

    def skims(self) -> bool:
        """From the client's opening handshake record on, every packet only walks records, reads the
        ServerHello's suite and counts inner sizes until one decides or the connection turns out to be joined
        mid-flow: the compiled stage's work (ordinary HTTPS spends its life here)."""
        return self._packed is not None or (self._readings is None and self.seen > 0)

    def skim(self, packets: FlowPayloads) -> int:
        if self._packed is None:
            self._packed = self._pack()
        taken = _skim_run(self._packed, packets.direction, packets.tcp_seq, packets.offset, packets.length,
                          packets.data, packets.extra, self.budget, SUITE_OVERHEADS)
        self.seen = int(self._packed[SKIM_SEEN])
        return taken

    def _pack(self) -> np.ndarray:
        """The state `skims` allows as one row (`SKIM_SEEN`)."""
        (overhead, sizes), = self._sizes.items() or [(0, InnerSizes())]
        row = np.zeros(SKIM_DIRECTION + 2 * DIRECTION_SLOTS, np.int64)
        row[:SKIM_DIRECTION] = self.seen, overhead, 0
        for d, walker in enumerate(self._streams.walkers):
            assert walker is not None  # opened by the client's handshake record: both directions are walked
            base = SKIM_DIRECTION + d * DIRECTION_SLOTS
            row[base : base + WALK_AT] = self._skip[d], self._heard[d]
            walker.pack(row[base + WALK_AT : base + SIZES_AT])
            sizes.pack(d, row[base + SIZES_AT : base + DIRECTION_SLOTS])
        return row

    def _unpack(self) -> None:
        """Take the state back from the compiled stage, for `on_packet`."""
        row, self._packed = self._packed, None
        assert row is not None
        if row[SKIM_OVERHEAD] and not self._sizes:  # the compiled stage read the ServerHello
            self._suite(int(row[SKIM_SUITE]), int(row[SKIM_OVERHEAD]))
        for d, walker in enumerate(self._streams.walkers):
            assert walker is not None
            base = SKIM_DIRECTION + d * DIRECTION_SLOTS
            self._skip[d], self._heard[d] = int(row[base + SKIP_AT]), bool(row[base + HEARD_AT])
            walker.unpack(row[base + WALK_AT : base + SIZES_AT])
            for sizes in self._sizes.values():
                sizes.unpack(d, row[base + SIZES_AT : base + DIRECTION_SLOTS])

    def on_packet(self, pkt: FlowPacket) -> None:
        if self._packed is not None:
            self._unpack()
        d = pkt.direction
        self._heard[d] = True
        if self.seen == 1 and (d != 0 or pkt.payload[:1] != bytes([CONTENT_HANDSHAKE])):
            if pkt.opened:
                self.reject("the connection was seen to open, and not with a TLS ClientHello")
                return
            self._join_mid_flow()
            self._streams = RecordStreams(mid_flow=True)
        records = self._streams.push(d, pkt.tcp_seq, pkt.payload)
        if isinstance(records, str):
            self.reject(records)
            return
        for content, size, head in records:
            if not self._sizes and self._readings is None:
                if d == 1 and content == CONTENT_HANDSHAKE:
                    self._server_hello(head)
                elif d == 0 and content == CONTENT_APPLICATION_DATA and not self._heard[1]:
                    self._join_mid_flow()  # the client's data unanswered: only its direction is in the capture
                    self._application(pkt, size, head)
            elif content == CONTENT_APPLICATION_DATA:
                self._application(pkt, size, head)
            if self.state is not State.CANDIDATE:
                return

    def _join_mid_flow(self) -> None:
        """No ServerHello to read the suite from: try every AEAD overhead, from the next records on."""
        self._mid_flow, self._skip = True, [0, 0]
        self._readings = Readings(MID_FLOW_READINGS)

    def _server_hello(self, head: bytes) -> None:
        """The chosen suite fixes how many bytes each record adds to its plaintext."""
        suite = server_hello_suite(head)
        if suite is None:  # the capture began after the hellos: the rest of a handshake
            self._join_mid_flow()
        elif (overhead := record_overhead(suite)) is None:
            self.reject(f"cipher suite 0x{suite:04x} has no fixed per-record overhead")
        else:
            self._suite(suite, overhead)

    def _suite(self, suite: int, overhead: int) -> None:
        self._sizes = {overhead: InnerSizes()}
        self.attributes["tls_suite"] = f"0x{suite:04x}"

    def _application(self, pkt: FlowPacket, size: int, head: bytes) -> None:
        d = pkt.direction
        if self._skip[d]:
            self._skip[d] -= 1
            return
        if size > MAX_RECORD_SIZE:
            self.reject(f"a {size}-byte record holds more than one IP packet of a 1500-byte MTU")
            return
        if self._readings is not None:
            self._mid_flow_record(pkt, size, head)
            return
        for overhead, sizes in self._sizes.items():
            if run := sizes.add(d, size - overhead - CSTP_HEADER):
                self._confirm(pkt, "the suite's overhead", run)
                return
        if sum(next(iter(self._sizes.values())).records) >= MAX_RECORDS:  # every hypothesis counts the same
            self.reject(f"{MAX_RECORDS} application records without a tunnel's inner sizes")

    def _mid_flow_record(self, pkt: FlowPacket, size: int, head: bytes) -> None:
        """Mid-flow: every reading of CSTP and of wrapped OpenVPN; CSTP only where its reading leads."""
        readings = self._readings
        narrow(readings, self._nonces, pkt.direction, head)
        if hit := readings.add(pkt.direction, size):
            reading, run = hit
            if reading.family != OPENCONNECT:
                self.reject(f"the records fit OpenVPN's data framing in TLS ({reading.offset} bytes a record) "
                            "better than CSTP's")
            else:
                self._confirm(pkt, f"a {reading.wrapper}-byte AEAD overhead (mid-flow guess)", run)
        elif readings.records >= MAX_RECORDS:
            self.reject(f"{MAX_RECORDS} application records without a tunnel's inner sizes that one tunnel "
                        "explains")

    def _confirm(self, pkt: FlowPacket, how: str, run: str) -> None:
        one_way = not all(self._heard)
        if one_way:
            self.attributes["one_way"] = "true"
        self.confirm(pkt, 0.6 if one_way else 0.7 if self._mid_flow else 0.8,
                     f"TLS records carry one IP packet each behind an 8-byte CSTP header, under {how}: "
                     f"{run} (AnyConnect CSTP tunnel" + (", one direction only)" if one_way else ")"))
