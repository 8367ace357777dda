"""Byte builders for WireGuard, IKE, ESP and AH tests, and for the look-alikes they must not match.

Everything is built from the specs (struct + a seeded RNG), never copied from captures.
"""

from __future__ import annotations

import random
import struct

from vpnid.features.dissectors.base import Dissector, FlowPacket, State

RNG = random.Random(20240229)


def rnd(n: int) -> bytes:
    return RNG.randbytes(n)


def run(d: Dissector, packets: list[tuple[int, float, bytes]], *, tcp: bool = False, proto: int = 17,
        end: bool = True) -> State:
    """Feed (direction, ts, payload) packets in order; TCP packets get ACK flags and per-direction
    sequence numbers. Calls on_end when the dissector is still undecided and `end` is set."""
    seq = [1000, 5000]
    for i, (direction, ts, payload) in enumerate(packets, 1):
        pkt = FlowPacket(i, direction, ts, payload, seq[direction] if tcp else 0, 0x18 if tcp else 0, 6 if tcp else proto)
        seq[direction] += len(payload)
        if d.feed(pkt) is not State.CANDIDATE:
            return d.state
    if end:
        d.on_end()
    return d.state


# --- WireGuard (whitepaper §5.4) ---------------------------------------------------------------------


def wg_initiation(sender: int, size: int = 148) -> bytes:
    return b"\x01\x00\x00\x00" + struct.pack("<I", sender) + rnd(size - 8)


def wg_response(sender: int, receiver: int, size: int = 92) -> bytes:
    return b"\x02\x00\x00\x00" + struct.pack("<II", sender, receiver) + rnd(size - 12)


def wg_cookie(receiver: int) -> bytes:
    return b"\x03\x00\x00\x00" + struct.pack("<I", receiver) + rnd(56)


def wg_data(receiver: int, counter: int, plaintext: int, mtu: int = 1420) -> bytes:
    padded = min(-(-plaintext // 16) * 16, max(plaintext, mtu))  # padding stops at the MTU (§5.4.6)
    return b"\x04\x00\x00\x00" + struct.pack("<IQ", receiver, counter) + rnd(padded + 16)


# --- IKE (RFC 2408 §3.1, RFC 7296 §3) ---------------------------------------------------------------


def ike(
    version: int,
    exchange: int,
    flags: int,
    payloads: list[tuple[int, bytes]],
    *,
    ispi: bytes = b"\x11" * 8,
    rspi: bytes = bytes(8),
    msgid: int = 0,
    length_delta: int = 0,
) -> bytes:
    """An IKE message whose payload chain is `payloads` [(type, body)]; `length_delta` makes the
    header's length field lie."""
    types = [t for t, _ in payloads] + [0]
    body = b"".join(struct.pack("!BBH", types[i + 1], 0, len(b) + 4) + b for i, (_, b) in enumerate(payloads))
    size = 28 + len(body)
    header = ispi + rspi + struct.pack("!BBBBII", types[0], version, exchange, flags, msgid, size + length_delta)
    return header + body


def ikev2_sa_init_request(ispi: bytes) -> bytes:
    # SA, KE, Nonce, Notify (NAT_DETECTION_SOURCE_IP), Notify (IKEV2_FRAGMENTATION_SUPPORTED)
    chain = [(33, rnd(44)), (34, rnd(260)), (40, rnd(32)), (41, rnd(24)), (41, rnd(4))]
    return ike(0x20, 34, 0x08, chain, ispi=ispi)


def ikev2_sa_init_response(ispi: bytes, rspi: bytes) -> bytes:
    chain = [(33, rnd(44)), (34, rnd(260)), (40, rnd(32)), (38, rnd(21)), (41, rnd(4))]
    return ike(0x20, 34, 0x20, chain, ispi=ispi, rspi=rspi)


def ikev2_encrypted(ispi: bytes, rspi: bytes, exchange: int, flags: int, msgid: int, size: int) -> bytes:
    """IKE_AUTH / CREATE_CHILD_SA / INFORMATIONAL: one SK payload (46) whose next-payload names the
    first inner payload."""
    body = ike(0x20, exchange, flags, [(46, rnd(size))], ispi=ispi, rspi=rspi, msgid=msgid)
    return body[:28] + bytes([35]) + body[29:]  # SK's next payload = IDi, as in IKE_AUTH


def ikev2_skf(ispi: bytes, rspi: bytes, flags: int, msgid: int, number: int, total: int, size: int) -> bytes:
    """RFC 7383 encrypted fragment: Fragment Number, Total Fragments, then IV/ciphertext/ICV."""
    return ike(0x20, 35, flags, [(53, struct.pack("!HH", number, total) + rnd(size))], ispi=ispi, rspi=rspi, msgid=msgid)


def ikev1_main_mode_1(ispi: bytes) -> bytes:
    return ike(0x10, 2, 0, [(1, rnd(52)), (13, rnd(16)), (13, rnd(16))], ispi=ispi)


def ikev1_main_mode_2(ispi: bytes, rspi: bytes) -> bytes:
    return ike(0x10, 2, 0, [(1, rnd(52)), (13, rnd(16))], ispi=ispi, rspi=rspi)


def ikev1_aggressive_1(ispi: bytes) -> bytes:
    # SA, KE, Nonce, ID, Vendor ID
    return ike(0x10, 4, 0, [(1, rnd(52)), (4, rnd(128)), (10, rnd(20)), (5, rnd(8)), (13, rnd(16))], ispi=ispi)


def ikev1_aggressive_2(ispi: bytes, rspi: bytes) -> bytes:
    chain = [(1, rnd(52)), (4, rnd(128)), (10, rnd(20)), (5, rnd(8)), (8, rnd(20)), (20, rnd(20)), (20, rnd(20))]
    return ike(0x10, 4, 0, chain, ispi=ispi, rspi=rspi)


def ikev1_encrypted(ispi: bytes, rspi: bytes, exchange: int, msgid: int, size: int) -> bytes:
    """Quick Mode / Informational with the E flag: everything after the header is ciphertext (first
    payload HASH)."""
    return ispi + rspi + struct.pack("!BBBBII", 8, 0x10, exchange, 0x01, msgid, 28 + size) + rnd(size)


def nat_t(message: bytes) -> bytes:
    """RFC 3948 §2.2: IKE on a NAT-T flow carries the 4-byte non-ESP marker."""
    return bytes(4) + message


def tcp_frame(message: bytes) -> bytes:
    """RFC 8229 §3: 16-bit length (counting itself) in front of each message."""
    return struct.pack("!H", len(message) + 2) + message


# --- ESP / AH (RFC 4303, RFC 4302) -------------------------------------------------------------------


def esp(spi: int, seq: int, size: int) -> bytes:
    """An ESP packet of `size` bytes (rounded up to 4): header, then IV/ciphertext/ICV."""
    size = -(-size // 4) * 4
    return struct.pack("!II", spi, seq) + rnd(size - 8)


def ah(spi: int, seq: int, next_header: int = 6, icv: int = 12, reserved: int = 0) -> bytes:
    payload_len = (12 + icv) // 4 - 2
    inner = b"\x45\x00" + rnd(38)
    return struct.pack("!BBHII", next_header, payload_len, reserved, spi, seq) + rnd(icv) + inner


# --- look-alikes ------------------------------------------------------------------------------------


def quic_initial(dcid: bytes) -> bytes:
    head = bytes([0xC3]) + b"\x00\x00\x00\x01" + bytes([len(dcid)]) + dcid + b"\x08" + rnd(8) + b"\x00"
    return head + struct.pack("!H", 0x4000 | (1200 - len(head) - 2)) + rnd(1200 - len(head) - 2)


def quic_short(dcid: bytes, size: int) -> bytes:
    return bytes([0x40 | RNG.randrange(0x40)]) + dcid + rnd(size - 1 - len(dcid))


def dtls_record(content_type: int, version: int, epoch: int, seq: int, size: int) -> bytes:
    return struct.pack("!BHH", content_type, version, epoch) + seq.to_bytes(6, "big") + struct.pack("!H", size) + rnd(size)


def stun_binding(response: bool = False) -> bytes:
    attrs = b"\x00\x20\x00\x08" + rnd(8) if response else b"\x00\x06\x00\x04" + rnd(4)
    return struct.pack("!HHI", 0x0101 if response else 0x0001, len(attrs), 0x2112A442) + rnd(12) + attrs


def rtp(seq: int, ts: int, ssrc: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq & 0xFFFF, ts, ssrc) + rnd(size - 12)


def game(prefix: int, counter: int, size: int) -> bytes:
    """A game/P2P datagram: constant session prefix, big-endian counter, cleartext state records."""
    size = -(-size // 4) * 4
    records = b"".join(struct.pack("!HHhh", 1, i, RNG.randrange(-50, 50), 0) for i in range(size))
    return struct.pack("!II", prefix, counter) + records[: size - 8]
