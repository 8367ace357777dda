"""OpenConnect / Cisco AnyConnect data channel: DTLS set up from keys handed over inside the TLS tunnel.

The control channel (CSTP) is HTTPS and looks like any TLS. The DTLS data channel gives itself away: the
client never authenticates with certificates there, because the TLS tunnel already handed it the keys.
Two shapes exist:

* DTLS 1.2 "PSK-NEGOTIATE" (openconnect/ocserv): the ClientHello carries the 32-byte application id as its
  session ID and offers only plain PSK cipher suites (RFC 4279 section 2), which the server accepts.
* Cisco's pre-standard DTLS (record version 0x0100, DTLS1_BAD_VER): the ClientHello resumes the session
  whose ID the CSTP headers announced, and the ServerHello echoes that ID (abbreviated handshake).

WebRTC and other DTLS users do full certificate handshakes, and IoT DTLS-PSK clients start with an empty
session ID, so neither shape occurs there. Both directions are needed.

A capture that starts after the handshake sees only application-data records. Each datagram is one
record with a constant epoch and a sequence number that steps by one per direction (RFC 6347 section
4.1), holding AnyConnect's 1-byte packet type and one IP packet; under an AEAD cipher the record length
gives that packet's length, and the pure TCP ACKs and keepalives of a tunnel show (see `ipshape`). With
one direction only in the capture (asymmetric tap), that direction's run and steady sequence decide at
the flow's end or budget, at a lower confidence.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.ipshape import InnerSizes
from vpnid.features.dissectors.seqtrack import CounterTrack
from vpnid.features.families import OPENCONNECT
from vpnid.features.packets import IPPROTO_TCP, IPPROTO_UDP

# DTLS record and handshake layout (RFC 6347 sections 4.1 and 4.2.2).
CONTENT_HANDSHAKE, CONTENT_APPLICATION_DATA = 22, 23
CONTENT_TYPES = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, application_data
RECORD_HEADER = 13  # type, version, epoch, sequence number (6), length
HANDSHAKE_HEADER = 12  # msg_type, length (3), message_seq, fragment_offset (3), fragment_length (3)
CLIENT_HELLO, SERVER_HELLO = 1, 2
DTLS_VERSIONS = frozenset({0xFEFF, 0xFEFD, 0xFEFC})  # DTLS 1.0, 1.2, 1.3
DTLS1_BAD_VER = 0x0100  # Cisco's pre-RFC 4347 DTLS (OpenSSL's DTLS1_BAD_VER)
RECORD_VERSIONS = DTLS_VERSIONS | {DTLS1_BAD_VER}
RANDOM_SIZE = 32
SESSION_ID_SIZE = 32  # the AnyConnect application/session id
HANDSHAKE_BUDGET = 4  # datagrams to wait for the ServerHello
PACKET_TYPE = 1  # AnyConnect DTLS: 1-byte packet type (data, DPD, keepalive) before the IP packet
# DTLS 1.2 AEAD record overheads tried mid-flow: AES-GCM explicit nonce + tag (RFC 5288), ChaCha20 tag
# (RFC 7905). Cisco's 0x0100 DTLS uses CBC, whose padding hides the length.
MID_FLOW_OVERHEADS = (24, 16)
MIN_STEADY = 8  # sequence steps of one per direction before a mid-flow verdict
MIN_STEADY_ONE_WAY = 2 * MIN_STEADY  # ... and in the one direction an asymmetric tap shows

# Plain TLS_PSK_WITH_* suites (RFC 4279, 4785, 5487, 6655, 7905): no certificate, no (EC)DHE.
PSK_SUITES = frozenset({
    0x002C, 0x008A, 0x008B, 0x008C, 0x008D, 0x00A8, 0x00A9, 0x00AE, 0x00AF, 0x00B0, 0x00B1,
    0xC064, 0xC065, 0xC06A, 0xC06B, 0xC08E, 0xC08F, 0xC094, 0xC095, 0xC0A4, 0xC0A5, 0xC0A8, 0xC0A9, 0xCCAB,
})


class Hello(NamedTuple):
    version: int  # record version
    session_id: bytes
    suites: tuple[int, ...]  # offered (ClientHello) or chosen (ServerHello)


def parse_hello(p: bytes, msg_type: int) -> Hello | None:
    """The first handshake message of a DTLS datagram, if it is an unfragmented hello of `msg_type`."""
    if len(p) < RECORD_HEADER + HANDSHAKE_HEADER + 2 + RANDOM_SIZE + 1 or p[0] != CONTENT_HANDSHAKE:
        return None
    version = int.from_bytes(p[1:3], "big")
    if version not in RECORD_VERSIONS:
        return None
    h = RECORD_HEADER
    if p[h] != msg_type or p[h + 6 : h + 9] != b"\0\0\0":  # fragment_offset 0
        return None
    pos = h + HANDSHAKE_HEADER + 2 + RANDOM_SIZE
    sid_len = p[pos]
    session_id = p[pos + 1 : pos + 1 + sid_len]
    pos += 1 + sid_len
    if len(session_id) != sid_len:
        return None
    if msg_type == SERVER_HELLO:
        if pos + 2 > len(p):
            return None
        return Hello(version, session_id, (int.from_bytes(p[pos : pos + 2], "big"),))
    if pos >= len(p):
        return None
    pos += 1 + p[pos]  # cookie
    if pos + 2 > len(p):
        return None
    n = int.from_bytes(p[pos : pos + 2], "big")
    raw = p[pos + 2 : pos + 2 + n]
    if n == 0 or n % 2 or len(raw) != n:
        return None
    return Hello(version, session_id, tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, n, 2)))


def is_record(p: bytes) -> bool:
    """The datagram starts with a DTLS record header (RFC 6347 section 4.1) of a known content type."""
    return len(p) >= RECORD_HEADER and p[0] in CONTENT_TYPES and int.from_bytes(p[1:3], "big") in RECORD_VERSIONS


def app_record(p: bytes) -> tuple[int, int, int] | None:
    """(version << 16 | epoch, sequence number, record length) of a datagram that is exactly one DTLS
    application-data record under a negotiated epoch, else None."""
    if not is_record(p) or p[0] != CONTENT_APPLICATION_DATA:
        return None
    version, epoch = int.from_bytes(p[1:3], "big"), int.from_bytes(p[3:5], "big")
    size = int.from_bytes(p[11:13], "big")
    if epoch == 0 or size != len(p) - RECORD_HEADER:
        return None
    return version << 16 | epoch, int.from_bytes(p[5:11], "big"), size


class OpenConnect(Dissector):
    """AnyConnect-style DTLS data channel (PSK-negotiated DTLS 1.2, or Cisco's DTLS 0x0100 resumption)."""

    family: ClassVar[str] = OPENCONNECT
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_UDP})
    # Mid-flow: a tunnel's pure ACKs show once it carries TCP, which a call's media in front of it may
    # put off for hundreds of datagrams; only records with steady sequence numbers get this far. A
    # handshake decides within HANDSHAKE_BUDGET datagrams.
    budget: ClassVar[int] = 1024
    sibling_transport: ClassVar[int | None] = IPPROTO_TCP  # the CSTP (TLS) connection that handed over the keys

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """A DTLS record header (`is_record`): a first datagram without one is rejected."""
        return ((p.proto == IPPROTO_UDP) & (p.length >= RECORD_HEADER) & np.isin(p.u8(0), list(CONTENT_TYPES))
                & np.isin(p.be(1, 2), list(RECORD_VERSIONS)))

    def __init__(self) -> None:
        super().__init__()
        self._client: tuple[int, Hello] | None = None  # (direction, ClientHello)
        self._tracks: tuple[CounterTrack, CounterTrack] | None = None  # mid-flow: (epoch, sequence) per direction
        self._sizes: dict[int, InnerSizes] = {}
        self._one_way: tuple[int, int, str] | None = None  # mid-flow: (direction, overhead, run) first seen
        self._last: FlowPacket | None = None

    def on_end(self) -> None:
        if self._last is not None:
            self._check_one_way(self._last)

    def on_packet(self, pkt: FlowPacket) -> None:
        if self.seen == 1 and is_record(pkt.payload) and parse_hello(pkt.payload, CLIENT_HELLO) is None:
            self._join_mid_flow()  # joined after the ClientHello
        if self._tracks is not None:
            self._mid_flow(pkt)
            return
        self._handshake(pkt)
        if self.state is State.CANDIDATE and self._tracks is None and self.seen >= HANDSHAKE_BUDGET:
            self.reject(f"no ServerHello within {HANDSHAKE_BUDGET} datagrams")

    def _handshake(self, pkt: FlowPacket) -> None:
        if self._client is None:
            hello = parse_hello(pkt.payload, CLIENT_HELLO)
            if hello is None:
                self.reject("first datagram is not a DTLS ClientHello")
            elif len(hello.session_id) != SESSION_ID_SIZE:
                self.reject("DTLS ClientHello without a resumed/application session ID")
            elif hello.version != DTLS1_BAD_VER and not set(hello.suites) <= PSK_SUITES:
                self.reject("DTLS ClientHello offers certificate-based suites")
            else:
                self._client = (pkt.direction, hello)
            return
        direction, client = self._client
        if pkt.direction == direction and app_record(pkt.payload) is not None:
            self._join_mid_flow()  # the client sends data unanswered: only its direction is in the capture
            self._mid_flow(pkt)
            return
        if pkt.direction == direction:
            return  # a retransmitted ClientHello or the client's next flight
        server = parse_hello(pkt.payload, SERVER_HELLO)
        if server is None:
            self.reject("the answer to the DTLS ClientHello is not a ServerHello")
        elif client.version == DTLS1_BAD_VER and server.session_id == client.session_id:
            self.attributes["variant"] = "cisco-dtls-0x0100"
            self.confirm(pkt, 0.9, f"Cisco DTLS 0x0100 ClientHello resumes session {client.session_id[:4].hex()}…, "
                                   "ServerHello echoes it (AnyConnect data channel)")
        elif server.suites[0] in PSK_SUITES and set(client.suites) <= PSK_SUITES:
            self.attributes["variant"] = "dtls1.2-psk"
            self.confirm(pkt, 0.9, f"DTLS ClientHello with 32-byte application id {client.session_id[:4].hex()}… "
                                   f"offering only PSK suites, server chose PSK suite 0x{server.suites[0]:04x} "
                                   "(OpenConnect PSK-NEGOTIATE data channel)")
        else:
            self.reject("ServerHello neither resumes the session nor picks a PSK suite")

    def _join_mid_flow(self) -> None:
        self._tracks = (CounterTrack(), CounterTrack())
        self._sizes = {overhead: InnerSizes() for overhead in MID_FLOW_OVERHEADS}

    def _mid_flow(self, pkt: FlowPacket) -> None:
        self._last = pkt
        if not is_record(pkt.payload):
            self.reject("mid-flow datagram is not a DTLS record")
            return
        record = app_record(pkt.payload)
        if record is None:
            return  # the rest of a handshake, or an alert
        key, seq, size = record
        track = self._tracks[pkt.direction]
        if track.key != key:
            track.start(key, seq)
        else:
            track.step(seq)
        if track.erratic:
            self.reject("DTLS sequence numbers do not step by one")
            return
        for overhead, sizes in self._sizes.items():
            run = sizes.add(pkt.direction, size - overhead - PACKET_TYPE)
            if run and all(t.steady(MIN_STEADY) for t in self._tracks):
                self.attributes["variant"] = "mid-flow"
                self.confirm(pkt, 0.8, f"DTLS application records with steady epoch and sequence both ways carry "
                                       f"one IP packet each behind a 1-byte type under a {overhead}-byte AEAD "
                                       f"overhead (mid-flow guess): {run} (AnyConnect DTLS data channel)")
                return
            if run and self._one_way is None:
                self._one_way = (pkt.direction, overhead, run)
        if self.seen >= self.budget:  # the last packet the budget allows: a one-way verdict or none
            self._check_one_way(pkt)

    def _check_one_way(self, pkt: FlowPacket) -> None:
        """Asymmetric tap: the run in one direction, whose sequence stayed steady, the other never seen."""
        if self._one_way is None or self._tracks is None:
            return
        d, overhead, run = self._one_way
        if self._tracks[1 - d].key is None and self._tracks[d].steady(MIN_STEADY_ONE_WAY):
            self.attributes.update(variant="mid-flow", one_way="true")
            self.confirm(pkt, 0.6, f"one direction only: DTLS application records with steady epoch and sequence "
                                   f"carry one IP packet each behind a 1-byte type under a {overhead}-byte AEAD "
                                   f"overhead (mid-flow guess): {run} (AnyConnect DTLS data channel)")
