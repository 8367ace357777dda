"""Shadowsocks AEAD: real SIP004 ciphertext confirmed; structured, textual, mid-flow and server-first
streams (Ethereum RLPx, WhatsApp, TLS, SSH, BitTorrent's clear handshake) rejected."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.dissectors.base import FlowPacket, State
from vpnid.features.dissectors.shadowsocks import MIN_CHUNK, Shadowsocks

ROOT = Path(__file__).resolve().parents[1]
rb = random.Random(1).randbytes  # seeded: fixed salts and ciphertext (random bytes trip an exemption ~1% of the time)


class Sender:
    """One direction of a chacha20-ietf-poly1305 Shadowsocks stream (SIP004), as ss-local/ss-server write it."""

    def __init__(self, password: bytes = b"lab-secret", salt_size: int = 32) -> None:
        master = hashlib.md5(password).digest() + hashlib.md5(hashlib.md5(password).digest() + password).digest()
        self.salt = rb(salt_size)
        key = HKDF(hashes.SHA1(), 32, self.salt, b"ss-subkey").derive(master)
        self.aead, self.nonce, self.started = ChaCha20Poly1305(key), 0, False

    def _seal(self, data: bytes) -> bytes:
        out = self.aead.encrypt(self.nonce.to_bytes(12, "little"), data, None)
        self.nonce += 1
        return out

    def send(self, payload: bytes) -> bytes:
        """One write: the salt first on a fresh stream, then one chunk (length and payload sealed apart)."""
        chunk = self._seal(struct.pack(">H", len(payload))) + self._seal(payload)
        if not self.started:
            self.started = True
            return self.salt + chunk
        return chunk


SOCKS_TARGET = b"\x01" + bytes([198, 18, 0, 2]) + struct.pack(">H", 80)
GET = b"GET /file HTTP/1.1\r\nHost: 198.18.0.2\r\n\r\n"


def download() -> list[tuple[int, bytes]]:
    c, s = Sender(), Sender()
    return [(0, c.send(SOCKS_TARGET + GET)), (1, s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n")),
            *[(1, s.send(rb(1380))) for _ in range(5)], (0, c.send(b"x"))]


def typing() -> list[tuple[int, bytes]]:
    c, s = Sender(), Sender()
    return [(0, c.send(SOCKS_TARGET + b"SSH-2.0-OpenSSH_9.6\r\n")), (1, s.send(b"SSH-2.0-OpenSSH_9.2\r\n"))] + [
        (d, (c if d == 0 else s).send(rb(1))) for _ in range(5) for d in (0, 1)]


def run(packets: list[tuple[int, bytes]], opened: bool = True) -> Shadowsocks:
    d = Shadowsocks()
    for i, (direction, payload) in enumerate(packets, 4):
        if d.feed(FlowPacket(i, direction, float(i), payload, proto=6, opened=opened)) is not State.CANDIDATE:
            return d
    d.on_end()
    return d


@pytest.mark.parametrize("packets", [download(), typing()], ids=["bulk", "interactive"])
def test_real_aead_streams_are_confirmed(packets):
    d = run(packets)
    assert d.state is State.CONFIRMED and d.family == "shadowsocks" and d.confidence == 0.6
    assert "fully encrypted" in d.evidence[-1]


def test_one_request_one_answer_is_confirmed_when_the_flow_ends():
    c, s = Sender(), Sender()
    d = run([(0, c.send(SOCKS_TARGET + GET)), (1, s.send(b"HTTP/1.1 204 No Content\r\n\r\n"))])
    assert d.state is State.CONFIRMED and d.verdict_packet == 5


def test_the_aead_floor_is_a_real_one_byte_chunk():
    """MIN_CHUNK against real ciphertext: a keystroke through the proxy is exactly one floor-sized chunk."""
    assert min(len(p) for _, p in typing()[2:]) == MIN_CHUNK


def rlpx_auth() -> bytes:
    """Ethereum RLPx EIP-8 auth: a clear 2-byte size prefix, then ECIES ciphertext."""
    body = rb(470)
    return struct.pack(">H", len(body)) + body


@pytest.mark.parametrize("packets, opened, reason", [
    ([(0, rlpx_auth()), (1, rlpx_auth())], True, "length field at offset 0"),
    ([(0, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rb(505))], True, "length field"),
    ([(0, b"SSH-2.0-OpenSSH_9.6 Ubuntu-3ubuntu13.5\r\n" + rb(40))], True, "printable"),
    ([(0, b"\x3a\x00\x00\x00" + rb(58))], True, "zeroed header fields"),  # chat app header
    ([(0, rb(40))], True, "below the AEAD floor"),
    ([(0, rb(300)), (1, rb(300)), (0, rb(16)), (1, rb(300))], True,
     "cannot hold an AEAD chunk"),
    # BitTorrent message stream encryption that settled on plaintext: the clear handshake shows up later
    ([(0, rb(198)), (1, rb(424)), (0, rb(471)),
      (1, b"\x13BitTorrent protocol" + bytes(8) + rb(40))], True, "printable bytes in a row"),
    ([(1, rb(200)), (0, rb(200))], True, "responder spoke first"),
    (download(), False, "start was not seen"),  # mid-flow: random bytes say nothing
])
def test_other_streams_are_rejected(packets, opened, reason):
    d = run(packets, opened)
    assert d.state is State.REJECTED
    assert reason in d.evidence[-1], d.evidence


def test_lab_captures_label_every_proxied_connection_and_no_negative():
    opts = Options()
    for name in ("shadowsocks-chacha-8388.pcap", "shadowsocks-aes256gcm-443.pcap"):
        records = list(classify_capture(str(ROOT / "pcaps/corpus" / name), opts))
        assert records and {r.label for r in records} == {"shadowsocks"}
    for name in ("neg-ssh-22.pcap", "neg-https-tls13-443.pcap", "neg-http-80.pcap"):
        assert {r.label for r in classify_capture(str(ROOT / "pcaps/corpus" / name), opts)} == {"none"}
