"""OpenVPN packets built from the ssl_pkt.h layouts, for dissector tests (no captured bytes).

A `Session` plays both ends of one handshake with one control-channel wrapping, keeping the per-direction
replay and message packet-ids the way OpenVPN does, so sizes, echoed session IDs and counters are right.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from vpnid.features.dissectors.base import FlowPacket
from vpnid.features.dissectors.openvpn import (
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_CLIENT_V3,
    P_CONTROL_HARD_RESET_SERVER_V2,
    P_CONTROL_V1,
    P_CONTROL_WKC_V1,
    P_DATA_V1,
    P_DATA_V2,
)

CLIENT, SERVER = 0, 1
HMAC_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
NET_TIME = 0x66AA2300
TCP_ACK_PSH = 0x18


def client_hello(rng: random.Random, size: int = 250) -> bytes:
    """A TLS 1.2 record holding a ClientHello-shaped body (content is random past the header)."""
    body = b"\x01" + (size - 4).to_bytes(3, "big") + b"\x03\x03" + rng.randbytes(size - 6)
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


@dataclass
class Session:
    """Both ends of an OpenVPN control channel. wrap: "plain", "md5".."sha512", "tls-crypt"."""

    wrap: str = "plain"
    seed: int = 1
    rng: random.Random = field(init=False)
    sids: tuple[bytes, bytes] = field(init=False)
    replay: list[int] = field(default_factory=lambda: [0, 0])
    msg: list[int] = field(default_factory=lambda: [0, 0])

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.sids = (self.rng.randbytes(8), self.rng.randbytes(8))

    def packet(
        self,
        side: int,
        opcode: int,
        acks: tuple[int, ...] = (),
        payload: bytes = b"",
        key_id: int = 0,
        wkc: bytes = b"",
        resend: bool = False,
    ) -> bytes:
        """One control-channel packet from `side`; control opcodes consume a message packet-id unless
        `resend` (a retransmission repeats the last one, but is re-wrapped with a new replay id)."""
        if resend:
            self.msg[side] -= 1
        inner = bytes([len(acks)]) + b"".join(struct.pack(">I", a) for a in acks)
        if acks:
            inner += self.sids[1 - side]
        if opcode != P_ACK_V1:
            inner += struct.pack(">I", self.msg[side]) + payload
            self.msg[side] += 1
        head = bytes([opcode << 3 | key_id]) + self.sids[side]
        if self.wrap == "plain":
            return head + inner
        self.replay[side] += 1
        clear_id = struct.pack(">II", self.replay[side], NET_TIME)
        if self.wrap == "tls-crypt":
            return head + clear_id + self.rng.randbytes(32) + self.rng.randbytes(len(inner)) + wkc
        return head + self.rng.randbytes(HMAC_SIZES[self.wrap]) + clear_id + inner

    def handshake(self, v3: bool = False, reset_tlv: bytes = b"") -> list[tuple[int, bytes]]:
        """Client reset, server reset acking it, client ACK, then a TLS flight each way with ACKs."""
        reset = P_CONTROL_HARD_RESET_CLIENT_V3 if v3 else P_CONTROL_HARD_RESET_CLIENT_V2
        wkc = self.rng.randbytes(32 + 290) + (32 + 290 + 2).to_bytes(2, "big") if v3 else b""
        return [
            (CLIENT, self.packet(CLIENT, reset, payload=reset_tlv, wkc=wkc)),
            (SERVER, self.packet(SERVER, P_CONTROL_HARD_RESET_SERVER_V2, acks=(0,))),
            (CLIENT, self.packet(CLIENT, P_ACK_V1, acks=(0,))),
            (CLIENT, self.packet(CLIENT, P_CONTROL_V1, payload=client_hello(self.rng))),
            (SERVER, self.packet(SERVER, P_CONTROL_V1, acks=(1,), payload=client_hello(self.rng, 900))),
            (CLIENT, self.packet(CLIENT, P_ACK_V1, acks=(1,))),
            (SERVER, self.packet(SERVER, P_CONTROL_V1, payload=self.rng.randbytes(300))),
            (CLIENT, self.packet(CLIENT, P_ACK_V1, acks=(2,))),
        ]


def tls_crypt_v2_session(seed: int = 5, server_restart: int | None = 0) -> list[tuple[int, bytes]]:
    """A complete OpenVPN 2.6 tls-crypt-v2 handshake in 13 packets: client reset V3 with its wrapped key,
    the server's reset, P_CONTROL_WKC_V1 (ClientHello + wrapped key again), both TLS flights and ACKs.

    Client replay packet-ids count from EARLY_NEG_START + 1. A 2.6 server answers the first reset
    statelessly (HMAC session-id cookie, ssl_pkt.c tls_reset_standalone): that reset takes replay id 1 from
    a throw-away context, and the session created afterwards counts its own ids from `server_restart` + 1
    (0 or EARLY_NEG_START); with `server_restart=None` the server keeps one counter (no cookie)."""
    s = Session("tls-crypt", seed=seed)
    s.replay = [0x0F000000, 0]
    rng = s.rng
    wkc = rng.randbytes(32 + 290) + (32 + 290 + 2).to_bytes(2, "big")
    items = [
        (CLIENT, s.packet(CLIENT, P_CONTROL_HARD_RESET_CLIENT_V3, wkc=wkc)),
        (SERVER, s.packet(SERVER, P_CONTROL_HARD_RESET_SERVER_V2, acks=(0,))),
    ]
    if server_restart is not None:
        s.replay[SERVER] = server_restart
    items += [
        (CLIENT, s.packet(CLIENT, P_CONTROL_WKC_V1, acks=(0,), payload=client_hello(rng), wkc=wkc)),
        (SERVER, s.packet(SERVER, P_CONTROL_V1, acks=(1,), payload=rng.randbytes(1100))),
        (SERVER, s.packet(SERVER, P_CONTROL_V1, payload=rng.randbytes(1100))),
        (CLIENT, s.packet(CLIENT, P_ACK_V1, acks=(1, 2))),
        (SERVER, s.packet(SERVER, P_CONTROL_V1, payload=rng.randbytes(400))),
        (CLIENT, s.packet(CLIENT, P_CONTROL_V1, acks=(3,), payload=rng.randbytes(800))),
        (SERVER, s.packet(SERVER, P_ACK_V1, acks=(2,))),
        (SERVER, s.packet(SERVER, P_CONTROL_V1, payload=rng.randbytes(300))),
        (CLIENT, s.packet(CLIENT, P_ACK_V1, acks=(4,))),
        (CLIENT, s.packet(CLIENT, P_CONTROL_V1, payload=rng.randbytes(200))),
        (SERVER, s.packet(SERVER, P_ACK_V1, acks=(3,))),
    ]
    return items


def data_v2(peer_id: int, counter: int, size: int, rng: random.Random, key_id: int = 0) -> bytes:
    """P_DATA_V2 with AEAD: opcode, peer-id, clear packet-id, 16-byte tag, ciphertext."""
    head = bytes([P_DATA_V2 << 3 | key_id]) + peer_id.to_bytes(3, "big") + struct.pack(">I", counter)
    return head + rng.randbytes(16 + size)


def data_v1(counter: int, size: int, rng: random.Random, key_id: int = 0) -> bytes:
    """P_DATA_V1 with AEAD: opcode, clear packet-id, tag, ciphertext."""
    return bytes([P_DATA_V1 << 3 | key_id]) + struct.pack(">I", counter) + rng.randbytes(16 + size)


def data_cbc(plaintext: int, rng: random.Random, hmac: int = 32, block: int = 16, peer_id: int | None = None,
             key_id: int = 0) -> bytes:
    """Non-AEAD data packet (--cipher *-CBC --auth SHA*, crypto.c): opcode (+ peer-id), HMAC, IV, then
    packet-id + payload + PKCS#7 padding in whole cipher blocks; the packet-id is inside the ciphertext."""
    blocks = (4 + plaintext) // block + 1
    head = bytes([(P_DATA_V2 if peer_id is not None else P_DATA_V1) << 3 | key_id])
    if peer_id is not None:
        head += peer_id.to_bytes(3, "big")
    return head + rng.randbytes(hmac + block + blocks * block)


def udp_packets(items: list[tuple[int, bytes]]) -> list[FlowPacket]:
    return [FlowPacket(i, d, 1_700_000_000.0 + i / 100, p) for i, (d, p) in enumerate(items, 1)]


def framed(pdu: bytes) -> bytes:
    """OpenVPN over TCP: 2-byte big-endian length, excluding itself."""
    return len(pdu).to_bytes(2, "big") + pdu


class TcpStreams:
    """Sequence numbers per direction, so tests can split, merge and repeat segments."""

    def __init__(self, opened: bool = False) -> None:
        self.seq = [1_000_000, 4_000_000_000]  # the second one wraps around 2**32
        self.index = 0
        self.opened = opened  # the connection's SYN was seen (False: the capture joined it mid-flow)

    def segment(self, direction: int, data: bytes, seq: int | None = None) -> FlowPacket:
        """Next segment of `direction` (or a repeat at an explicit earlier `seq`)."""
        self.index += 1
        if seq is None:
            seq = self.seq[direction]
            self.seq[direction] = (seq + len(data)) & 0xFFFFFFFF
        return FlowPacket(self.index, direction, 1_700_000_000.0 + self.index / 100, data, seq, TCP_ACK_PSH, 6,
                          self.opened)

    def stream(self, direction: int, data: bytes, mss: int) -> list[FlowPacket]:
        """`data` sent as full segments of `mss` bytes (a saturated direction: packets cut anywhere)."""
        return [self.segment(direction, data[i : i + mss]) for i in range(0, len(data), mss)]

    def one_pdu_each(self, items: list[tuple[int, bytes]]) -> list[FlowPacket]:
        return [self.segment(d, framed(p)) for d, p in items]
