"""OpenVPN over TCP inside a wrapper (TLS, e.g. stunnel; a fully encrypted proxy, e.g. Shadowsocks), seen
through the sizes and directions of the wrapper's units, never from ports.

A wrapper without padding hands each OpenVPN write to the wire as one unit of its own: a TLS record (RFC
8446 §5.2: the write plus a fixed AEAD overhead known from the ServerHello's suite), or a Shadowsocks AEAD
write (SIP004: the write plus a 34-byte chunk overhead). So the OpenVPN control channel's handshake keeps
its shape (Xue et al., USENIX Security 2022: tunnel-wrapped OpenVPN leaks its ACK pattern; Xue et al.,
USENIX Security 2024: the inner handshake's record sizes and directions show through an outer TLS). The
handshake, in inner sizes, after the wrapper's own handshake:

1. client: hard reset, small (below SMALL bytes);
2. server: hard reset, small (TLS 1.3 session tickets may come before or after it); through TLS exactly
   ACK_ENTRY bytes longer than the client's (it acknowledges the client's reset: one ACK id and the
   client's session ID), so a tls-crypt-v2 reset (the wrapped key makes it long) is not recognised in TLS;
3. client: P_CONTROL_V1 carrying the inner TLS ClientHello (HELLO_MIN..HELLO_MAX bytes);
4. server: the next unit is a full control-channel fragment of F bytes (FRAGMENT_MIN..FRAGMENT_MAX:
   OpenVPN cuts its TLS flight at --tls-mtu, 1250 by default, into packets of one size);
5. client: the next unit is small (its P_ACK_V1 for that fragment); through a fully encrypted proxy,
   whose first writes hide the resets' sizes behind salt and address, it must also be the size of the
   server's reset less a salt (both carry the same ACK array: lab OpenVPN 2.6, every control wrapping);
6. client, within FOLLOW units: a fragment of exactly F bytes (its certificate flight, cut at the same
   tls-mtu by the same rule).

Ordinary TLS does not do this: HTTP/1.1 and HTTP/2 send a request then answers of the server's record
sizes, and a client record of exactly the size of the server's first full record, after a small
acknowledgement-sized record, is a coincidence the negatives never show. The label is `openvpn` with
attribute `wrapped` = `tls` (the outer handshake was TLS) or `fully_encrypted` (random from the first byte:
Shadowsocks and look-alikes; which one the sizes cannot say), and the `wrapped_tunnel` risk.

Joined mid-flow (the handshake not in the capture), the data channel shows instead. Each unit is one
OpenVPN TCP data packet: the length word, the opcode byte, V2's peer-id, the AEAD packet-id and tag, maybe
a compression byte (`openvpn.TCP_AEAD_DATA_FRAMINGS`: 23, 24, 26 or 27 bytes), then one IP packet or the
16-byte ping; so the tunnel's pure TCP ACKs (40, 52, 60, 72) and pings give units of fixed sizes:
- through TLS: record = inner + the suite's AEAD overhead, tried under each overhead as `cstp` does, and
  read beside CSTP's framing (`cstp.MID_FLOW_READINGS`): OpenVPN is named only where its reading explains
  the records better than CSTP's (`ipshape.Readings`), and the other way round for CSTP;
- through a fully encrypted proxy: write = inner + CHUNK_OVERHEAD (SIP004), random from the first byte
  (each direction's first segment without printable prefix, zeroed fields or a length field, as the cheap
  stage checks; no segment with text; every write at least a chunk), MIN_SPREAD distinct write sizes, and
  none of the structure that ordinary encrypted protocols show (`shadowsocks`' length-field,
  repeated-header-byte and aligned-size tests).
Either way the ACKs must answer something: MIN_ANSWERS units the other way larger than them (a protocol
trading one message size both ways, heartbeats or a ping-pong, has none). The label is `openvpn`,
attributes `wrapped` and `mid_flow=true`, at a lower confidence (0.6): sizes alone,
with the framing a guess. Risks: `wrapped_tunnel`, and `obfuscated` for the fully encrypted wrapper. A
proxied download joined mid-flow (ACKs one way only, bulk writes the other) keeps no label through a fully
encrypted proxy; stunnel, which writes what one read returns, merges a burst of packets into one record,
so the run comes from the ACKs and interactive traffic between bursts.

What is not recognised: obfs4 (its random padding of the handshake and of every frame erases the sizes),
wrappers with CBC suites (no fixed record overhead is needed, but the sizes round up to blocks: left out),
OpenVPN's CBC data channel mid-flow (block-rounded sizes), and OpenVPN over UDP (nothing wraps UDP this way).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from numba import njit

from vpnid.features.dissectors.base import Dissector, FlowPacket, FlowPayloads, PacketHeads, State
from vpnid.features.dissectors.cstp import (
    APPLICATION_HEADER,
    CONTENT_APPLICATION_DATA,
    CONTENT_HANDSHAKE,
    CONTENT_TYPES,
    MID_FLOW_READINGS,
    OPENVPN_SIZES,
    SUITE_OVERHEADS,
    TLS13_OVERHEAD,
    WALK_SLOTS,
    Cstp,
    NonceSteps,
    RecordStreams,
    RecordWalker,
    narrow,
    packed_payload,
    record_overhead,
    server_hello_suite,
    walk_packed,
)
from vpnid.features.dissectors.ipshape import MIN_SHAPED, Reading, Readings
from vpnid.features.dissectors.openvpn import TCP_AEAD_DATA_FRAMINGS
from vpnid.features.dissectors.shadowsocks import (
    ALIGNMENTS,
    ALPHA,
    CHUNK_OVERHEAD,
    FULL_SEGMENT,
    HEADER,
    MIN_CHUNK,
    MIN_CLIENT_FIRST,
    Shadowsocks,
    aligned_sizes,
    exemption,
    length_fields,
    repeated_bytes,
    text_in,
    visible,
    visible_heads,
)
from vpnid.features.families import OPENCONNECT, OPENVPN
from vpnid.features.packets import IPPROTO_TCP
from vpnid.features.risks import OBFUSCATED, WRAPPED_TUNNEL

CLIENT_HELLO = 1
SMALL = 200  # hard resets and P_ACK_V1 (with a few ACK ids) over TCP, under any control-channel wrapping
HELLO_MIN, HELLO_MAX = 150, 800  # P_CONTROL_V1 + an inner TLS ClientHello (with tls-crypt-v2's key: more)
FRAGMENT_MIN, FRAGMENT_MAX = 900, 1500  # --tls-mtu fragments (default 1250, less the control header)
ACK_ENTRY = 4 + 8  # the server's hard reset = the client's + one ACK id and the remote session ID (reliable.h)
SALTS = (16, 24, 32)  # a fully encrypted proxy's first server write also holds its salt (SIP004 key sizes)
MAX_SALT = max(SALTS)
FOLLOW = 6  # units after the client's ACK within which the client's own fragment must come
UNITS = 24  # inner units looked at before giving up
TLS_WRAPPER, FULLY_ENCRYPTED_WRAPPER = "tls", "fully_encrypted"
HANDSHAKE_PACKETS = 48  # from the start: packets within which the wrapped handshake shows
MID_FLOW_UNITS = 64  # mid-flow: units per wrapper reading before giving up
MIN_ANSWERS = MIN_SHAPED // 2  # mid-flow: units the other way larger than the ACKs (the data they answer)
# Distinct write sizes (beyond the first of each direction) before the alignment test can speak: the chance
# that sizes of random payloads all keep one remainder modulo the smallest alignment falls below ALPHA.
MIN_SPREAD = math.ceil(math.log(1 / ALPHA) / math.log(min(ALIGNMENTS)))
SEALED_READINGS = {Reading(OPENVPN, CHUNK_OVERHEAD, f): OPENVPN_SIZES for f in TCP_AEAD_DATA_FRAMINGS}

# The TLS reading's state in the compiled stage (`OpenVPNWrapped.skim`): packets seen, the suite's overhead
# (0: no ServerHello yet), then per direction the application records still to skip and the walk
# (`RecordWalker.pack`).
SKIM_SEEN, SKIM_OVERHEAD, SKIM_DIRECTION = 0, 1, 2
SKIP_AT, WALK_AT = 0, 1
DIRECTION_SLOTS = WALK_AT + WALK_SLOTS


@njit(cache=True, nogil=True)
def _skim_packet(row: np.ndarray, d: int, seq: int, payload: np.ndarray, limit: int,
                 overheads: np.ndarray) -> bool:  # pragma: no cover - compiled
    """`OpenVPNWrapped.feed` on one packet through TLS, on a packed row: False where it would decide or give
    `_match` a unit to judge (the row is then left part-way). `overheads`: SUITE_OVERHEADS."""
    row[SKIM_SEEN] += 1
    base = SKIM_DIRECTION + d * DIRECTION_SLOTS
    tls, records = walk_packed(row, base + WALK_AT, seq, payload)
    if not tls:
        return False  # rejected
    for r in range(len(records)):  # each record as `OpenVPNWrapped._tls` takes it
        content, suite = records[r, 0], records[r, 2]
        if d == 1 and content == CONTENT_HANDSHAKE and not row[SKIM_OVERHEAD]:
            if suite < 0 or not overheads[suite]:
                return False  # rejected
            row[SKIM_OVERHEAD] = overheads[suite]
            row[SKIM_DIRECTION + SKIP_AT] = row[SKIM_OVERHEAD] == TLS13_OVERHEAD  # the client's Finished
        elif content == CONTENT_APPLICATION_DATA and row[SKIM_OVERHEAD]:
            if row[SKIM_OVERHEAD] == TLS13_OVERHEAD and d == 1 and row[SKIM_DIRECTION + SKIP_AT]:
                continue
            if not row[base + SKIP_AT]:
                return False  # a unit
            row[base + SKIP_AT] -= 1
    return row[SKIM_SEEN] < limit


@njit(cache=True, nogil=True)
def _skim_run(row: np.ndarray, direction: np.ndarray, seq: np.ndarray, offset: np.ndarray, length: np.ndarray,
              data: np.ndarray, extra: np.ndarray, limit: int, overheads: np.ndarray) -> int:  # pragma: no cover - compiled
    """`_skim_packet` over a flow's packets, up to the first it leaves to `on_packet`; returns how many it
    took, with `row` as after them."""
    for p in range(len(direction)):
        trial = row.copy()
        payload = packed_payload(offset, length, data, extra, p)
        if not _skim_packet(trial, direction[p], seq[p], payload, limit, overheads):
            return p
        row[:] = trial
    return len(direction)


class OpenVPNWrapped(Dissector):
    """TCP OpenVPN's control-channel handshake, seen as unit sizes through a TLS or fully encrypted wrapper."""

    family: ClassVar[str] = OPENVPN
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_TCP})
    budget: ClassVar[int] = 256  # mid-flow through a proxy that merges a burst into one write: ACKs come slowly
    feature_state: ClassVar[bool] = False  # came after feature schema v1
    # Mid-flow, the TLS reading waits as Cstp's does for a segment that starts a record.
    prefilter_window: ClassVar[int] = Cstp.prefilter_window

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """The opening client segment of a connection seen to open: a TLS handshake record holding a
        ClientHello, or what the Shadowsocks prefilter passes (the fully encrypted first segments). Joined
        mid-flow: a segment that starts an application-data record, or one of at least an AEAD chunk that
        shows none of `shadowsocks.visible_heads` (the dissector drops its fully encrypted reading at the
        first segment that does)."""
        tcp = p.proto == IPPROTO_TCP
        hello = (p.u8(0) == CONTENT_HANDSHAKE) & (p.u8(1) == 3) & (p.u8(5) == CLIENT_HELLO)
        record = (p.length >= len(APPLICATION_HEADER)) & (p.be(0, 3) == int.from_bytes(APPLICATION_HEADER, "big"))
        sealed = (p.length >= MIN_CHUNK) & ~visible_heads(p)
        return ((tcp & p.opened & (p.direction == 0) & hello) | Shadowsocks.prefilter(p)
                | (tcp & ~p.opened & (record | sealed)))

    @classmethod
    def closes_window(cls, p: PacketHeads) -> np.ndarray:
        """A connection seen to open is judged on its first payload packet (`_open`: the client's ClientHello
        or fully encrypted segment, else rejected), so only one joined mid-flow needs the window; without
        this every opened TCP flow that is neither (HTTP, SSH, ...) was screened in Python for five packets."""
        return p.opened.copy()

    def __init__(self) -> None:
        super().__init__()
        self._wrapper = ""
        self._walkers = (RecordWalker(), RecordWalker())
        self._overhead = 0
        self._tls13 = False
        self._skip = [0, 0]  # TLS 1.3: the client's Finished, the server's encrypted handshake records
        self._last = [0, 0]  # fully encrypted: the size of each direction's last segment
        self._units: list[tuple[int, int]] = []  # (direction, inner size), in order
        self._mid: MidFlow | None = None
        self._packed: np.ndarray | None = None  # the TLS reading's state while the compiled stage holds it

    def skims(self) -> bool:
        """Through TLS, a packet that completes no unit only walks records and reads the ServerHello's suite
        (an HTTPS connection's handshake flights and its segments that end no record): the compiled stage's
        work. `_match` judges units, so a packet that completes one goes to `on_packet`."""
        return self._packed is not None or self._wrapper == TLS_WRAPPER

    def skim(self, packets: FlowPayloads) -> int:
        if self._packed is None:
            self._packed = self._pack()
        taken = _skim_run(self._packed, packets.direction, packets.tcp_seq, packets.offset, packets.length,
                          packets.data, packets.extra, min(self.budget, HANDSHAKE_PACKETS), SUITE_OVERHEADS)
        self.seen = int(self._packed[SKIM_SEEN])
        return taken

    def _pack(self) -> np.ndarray:
        """The TLS reading's state as one row (`SKIM_SEEN`)."""
        row = np.zeros(SKIM_DIRECTION + 2 * DIRECTION_SLOTS, np.int64)
        row[:SKIM_DIRECTION] = self.seen, self._overhead
        for d, walker in enumerate(self._walkers):
            base = SKIM_DIRECTION + d * DIRECTION_SLOTS
            row[base + SKIP_AT] = self._skip[d]
            walker.pack(row[base + WALK_AT : base + DIRECTION_SLOTS])
        return row

    def _unpack(self) -> None:
        """Take the state back from the compiled stage, for `on_packet`."""
        row, self._packed = self._packed, None
        assert row is not None
        self._overhead = int(row[SKIM_OVERHEAD])
        self._tls13 = self._overhead == TLS13_OVERHEAD
        for d, walker in enumerate(self._walkers):
            base = SKIM_DIRECTION + d * DIRECTION_SLOTS
            self._skip[d] = int(row[base + SKIP_AT])
            walker.unpack(row[base + WALK_AT : base + DIRECTION_SLOTS])

    def on_packet(self, pkt: FlowPacket) -> None:
        if self._packed is not None:
            self._unpack()
        d, p = pkt.direction, pkt.payload
        if self.seen == 1 and not pkt.opened:
            self._mid = MidFlow()
        if self._mid is not None:
            self._mid_flow(pkt)
            return
        if self.seen == 1:
            self._open(pkt)
            if self.state is not State.CANDIDATE:
                return
        if self._wrapper == TLS_WRAPPER:
            self._tls(pkt)
        else:
            self._write(d, len(p))
        if self.state is State.CANDIDATE:
            self._match(pkt)
        if self.state is State.CANDIDATE and self.seen >= HANDSHAKE_PACKETS:
            self.reject(f"undecided after {self.seen} packets")

    def _open(self, pkt: FlowPacket) -> None:
        p = pkt.payload
        if pkt.direction != 0:
            self.reject("the connection's opening client segment was not seen")
        elif p[:2] == bytes([CONTENT_HANDSHAKE, 3]) and p[5:6] == bytes([CLIENT_HELLO]):
            self._wrapper = TLS_WRAPPER
        elif len(p) >= MIN_CLIENT_FIRST and exemption(p) is None:
            self._wrapper = FULLY_ENCRYPTED_WRAPPER
        else:
            self.reject("opens with neither a TLS ClientHello nor a fully encrypted segment")

    def _tls(self, pkt: FlowPacket) -> None:
        d = pkt.direction
        records = self._walkers[d].push(pkt.tcp_seq, pkt.payload)
        if records is None:
            self.reject("the stream is not a sequence of TLS records")
            return
        for content, size, head in records:
            if d == 1 and content == CONTENT_HANDSHAKE and not self._overhead:
                suite = server_hello_suite(head)
                overhead = None if suite is None else record_overhead(suite)
                if overhead is None:
                    self.reject("no ServerHello with an AEAD suite (fixed per-record overhead)")
                    return
                self._overhead, self._tls13 = overhead, overhead == TLS13_OVERHEAD
                self._skip = [1, 0] if self._tls13 else [0, 0]
            elif content == CONTENT_APPLICATION_DATA and self._overhead:
                if self._tls13 and d == 1 and self._skip[0]:
                    continue  # the server's encrypted handshake, before the client's Finished
                if self._skip[d]:
                    self._skip[d] -= 1
                    continue
                self._units.append((d, size - self._overhead))

    def _write(self, d: int, n: int) -> None:
        """A fully encrypted wrapper's segments as writes: a segment continues the previous write of its
        direction when that one filled a segment."""
        if self._last[d] >= FULL_SEGMENT and self._units and self._units[-1][0] == d:
            self._units[-1] = (d, self._units[-1][1] + n)
        elif self._last[d]:  # each direction's first write holds the salt and (client) the address as well
            self._units.append((d, n - CHUNK_OVERHEAD))
        else:
            self._units.append((d, n))
        self._last[d] = n

    def _match(self, pkt: FlowPacket) -> None:
        """Steps 1-6 of the module docstring, on the units so far; reject once they cannot hold."""
        u = self._units
        if len(u) >= UNITS:
            self.reject(f"{UNITS} wrapper units without TCP OpenVPN's control-channel handshake shape")
            return
        client = [i for i, (d, _) in enumerate(u) if d == 0]
        if not client:
            return
        if self._wrapper == TLS_WRAPPER and u[client[0]][1] >= SMALL:  # a proxy's first write adds salt, address
            self.reject(f"the first inner client unit ({u[client[0]][1]} bytes) is no OpenVPN hard reset")
            return
        if len(client) < 2:
            return
        c1, c2 = client[0], client[1]
        resets = [n for d, n in u[c1 + 1 : c2] if d == 1 and n < SMALL + MAX_SALT]
        if self._wrapper == TLS_WRAPPER and u[c1][1] + ACK_ENTRY not in resets:
            self.reject(f"no server unit of the client's first unit + {ACK_ENTRY} bytes (a hard reset that "
                        "acknowledges the client's) before the client's second unit")
            return
        if not resets:
            self.reject("no small server unit (hard reset) before the client's second unit")
            return
        if not HELLO_MIN <= u[c2][1] <= HELLO_MAX:
            self.reject(f"the client's second unit ({u[c2][1]} bytes) does not fit a control packet with a "
                        "TLS ClientHello")
            return
        if len(u) <= c2 + 2:
            return
        (ds, frag), (da, ack) = u[c2 + 1], u[c2 + 2]
        if ds != 1 or not FRAGMENT_MIN <= frag <= FRAGMENT_MAX or da != 0 or ack >= SMALL:
            self.reject("the ClientHello is not answered by a full control fragment and a small client ACK")
            return
        if self._wrapper == FULLY_ENCRYPTED_WRAPPER and not any(ack + CHUNK_OVERHEAD + salt in resets for salt in SALTS):
            self.reject(f"the client's ACK ({ack} B) is not the size of the server's hard reset (less its salt)")
            return
        later = u[c2 + 3 : c2 + 3 + FOLLOW]
        if (0, frag) in later:
            self.attributes["wrapped"] = self._wrapper
            self.raise_risk(WRAPPED_TUNNEL)
            if self._wrapper == FULLY_ENCRYPTED_WRAPPER:
                self.raise_risk(OBFUSCATED)
            where = (f"TLS records less the suite's {self._overhead}-byte overhead" if self._wrapper == TLS_WRAPPER
                     else f"writes less a {CHUNK_OVERHEAD}-byte AEAD chunk overhead, first segments fully encrypted")
            self.confirm(pkt, 0.7, f"wrapped={self._wrapper}; inside {where}: client hard reset, server hard reset, "
                                   f"client ClientHello control packet ({u[c2][1]} B), server {frag}-byte "
                                   f"control fragment, client ACK ({ack} B), client {frag}-byte fragment "
                                   "(TCP OpenVPN's control-channel handshake through a wrapper)")
        elif len(later) == FOLLOW:
            self.reject(f"no client fragment of the server's {frag} bytes within {FOLLOW} units")

    def _mid_flow(self, pkt: FlowPacket) -> None:
        """Joined mid-flow: the TLS and the fully encrypted readings side by side, until one names the flow
        or both are dropped."""
        m = self._mid
        if m.records is not None:
            self._mid_tls(pkt)
        if self.state is State.CANDIDATE and m.writes is not None:
            self._mid_sealed(pkt)
        if self.state is State.CANDIDATE and m.records is None and m.writes is None:
            self.reject(f"{m.why_tls}; {m.why_sealed}")

    def _mid_tls(self, pkt: FlowPacket) -> None:
        m, d = self._mid, pkt.direction
        records = m.streams.push(d, pkt.tcp_seq, pkt.payload)
        if isinstance(records, str):
            m.drop_tls(records)
            return
        for content, size, head in records:
            if content != CONTENT_APPLICATION_DATA:
                continue
            narrow(m.records, m.nonces, d, head)
            if hit := m.records.add(d, size):
                reading, run = hit
                if reading.family == OPENCONNECT:
                    m.drop_tls("the TLS records fit CSTP's framing better than OpenVPN's")
                    return
                if m.records.answers(reading, d) >= MIN_ANSWERS:
                    splits = " or ".join(f"{r.wrapper} + {r.framing}" for r in m.records.sizes
                                         if r.family == OPENVPN and r.offset == reading.offset)
                    self._confirm_mid_flow(pkt, TLS_WRAPPER, reading, run,
                                           f"TLS records {reading.offset} bytes longer than the IP packet each "
                                           f"carries (a guessed AEAD overhead + OpenVPN's TCP data framing: {splits})")
                    return
            if m.records.records >= MID_FLOW_UNITS:
                m.drop_tls(f"{MID_FLOW_UNITS} TLS records without OpenVPN data packets' inner sizes")
                return

    def _mid_sealed(self, pkt: FlowPacket) -> None:
        """A fully encrypted proxy's segments as writes (a segment continues its direction's write while the
        previous one filled a segment). Each direction's first segment is held to what the cheap stage
        checks; later ones, as in `shadowsocks`, only to hold a chunk when they start a write, and no text
        (a printable prefix or a length-like field turns up in one random segment in 400: no reason to drop
        a stream)."""
        m, d, p = self._mid, pkt.direction, pkt.payload
        first = not m.heard[d]
        m.heard[d] = True
        if p[:1] and p[0] in CONTENT_TYPES and p[1:2] == b"\x03":
            m.drop_sealed("a segment starts with a TLS record header")
        elif first and (len(p) < MIN_CHUNK or visible(p)):
            m.drop_sealed("a first segment is shorter than an AEAD chunk or shows a header or a length field")
        elif not m.pending[d] and len(p) < MIN_CHUNK:
            m.drop_sealed(f"a {len(p)}-byte write cannot hold an AEAD chunk")
        elif why := text_in(p):
            m.drop_sealed(f"a segment carries text ({why})")
        if m.writes is None:
            return
        if m.pending[1 - d]:  # the other side speaks: what it had sent was one write
            self._end_write(pkt, 1 - d)
        if not m.pending[d]:
            m.heads[d].append(p[:HEADER])
            m.fields += len(length_fields(p)) > 0
        m.pending[d] += len(p)
        if len(p) < FULL_SEGMENT and self.state is State.CANDIDATE and m.writes is not None:
            self._end_write(pkt, d)
        if m.writes is not None and m.writes.records >= MID_FLOW_UNITS:
            m.drop_sealed(f"{MID_FLOW_UNITS} writes without OpenVPN data packets' sizes, answered")

    def _end_write(self, pkt: FlowPacket, d: int) -> None:
        """Count direction `d`'s write, and confirm once a reading leads, answered, with sizes enough to
        judge and no structure."""
        m = self._mid
        write, m.pending[d] = m.pending[d], 0
        if write not in m.sizes[d]:  # one size repeated says nothing of a block framing: distinct sizes only
            m.sizes[d].append(write)
        if not (hit := m.writes.add(d, write)):
            return
        reading, run = hit
        if m.writes.answers(reading, d) < MIN_ANSWERS or sum(len(s) - 1 for s in m.sizes if s) < MIN_SPREAD:
            return
        structure = (("a length field in several writes" if m.fields >= 2 else None) or repeated_bytes(m.heads[0])
                     or repeated_bytes(m.heads[1]) or aligned_sizes(m.sizes))
        if structure:
            m.drop_sealed(f"random-looking, but structured: {structure}")
        else:
            self._confirm_mid_flow(pkt, FULLY_ENCRYPTED_WRAPPER, reading, run,
                                   f"fully encrypted writes {reading.offset} bytes longer than the IP packet each "
                                   f"carries (a {CHUNK_OVERHEAD}-byte AEAD chunk overhead + OpenVPN's TCP data "
                                   f"framing: {reading.framing})")

    def _confirm_mid_flow(self, pkt: FlowPacket, wrapper: str, reading: Reading, run: str, units: str) -> None:
        self.attributes["wrapped"], self.attributes["mid_flow"] = wrapper, "true"
        self.raise_risk(WRAPPED_TUNNEL)
        if wrapper == FULLY_ENCRYPTED_WRAPPER:
            self.raise_risk(OBFUSCATED)
        self.confirm(pkt, 0.6, f"wrapped={wrapper}; mid-flow, {units}: {run} (OpenVPN over TCP inside a wrapper, "
                               "joined after its handshake)")


class MidFlow:
    """The state of a wrapped connection joined mid-flow: each reading, None once dropped (with why)."""

    __slots__ = ("records", "nonces", "streams", "writes", "heard", "pending", "heads", "sizes",
                 "fields", "why_tls", "why_sealed")

    def __init__(self) -> None:
        self.records: Readings | None = Readings(MID_FLOW_READINGS)
        self.nonces = NonceSteps()
        self.streams = RecordStreams(mid_flow=True)
        self.writes: Readings | None = Readings(SEALED_READINGS)
        self.heard = [False, False]  # a segment of each direction seen
        self.pending = [0, 0]  # bytes of each direction's write so far
        self.heads: tuple[list[bytes], list[bytes]] = ([], [])  # leading bytes of each write
        self.sizes: tuple[list[int], list[int]] = ([], [])  # distinct sizes of whole writes
        self.fields = 0  # writes with a length field of their own size near the start
        self.why_tls = self.why_sealed = ""

    def drop_tls(self, why: str) -> None:
        self.records, self.why_tls = None, why

    def drop_sealed(self, why: str) -> None:
        self.writes, self.why_sealed = None, why
