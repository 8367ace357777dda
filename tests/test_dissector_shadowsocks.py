"""Shadowsocks AEAD: real SIP004/SIP022 ciphertext confirmed when it shows enough writes each way, from the
start or joined mid-flow (a capture started late: then without the risk, at a lower confidence); fully
encrypted flows with nothing more (one-request downloads) and fully encrypted ordinary protocols (compressed
agents, TLS 1.3, SSH, games, MTProto, RLPx, BitTorrent MSE) get the `fully_encrypted` risk and no label.

Every negative used here (built in tests/negbytes.py; tests/test_negatives.py runs them and more through
the whole pipeline on VPN ports) was labelled shadowsocks by the previous rule (first segments fully encrypted,
later ones AEAD-sized and free of text), checked against it when these tests were written."""

from __future__ import annotations

import hashlib
import lzma
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.flowbuild import P, table
from tests.negbytes import (
    Packets,
    agent,
    bittorrent_mse,
    game,
    mtproto_obfuscated2,
    rlpx,
    ssh_binary_packets,
    tls13_resumption,
    writes,
)
from vpnid.classifier.labelling.labels import label
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.dissectors import catalog
from vpnid.features.dissectors.base import FlowPacket, State
from vpnid.features.dissectors.shadowsocks import HEADER, LENGTH_LAYOUTS, MIN_CHUNK, Shadowsocks, length_fields
from vpnid.features.flows import Flow, FlowTable
from vpnid.features.packets import TCP_ACK, TCP_PSH, TCP_SYN
from vpnid.features.risks import FULLY_ENCRYPTED

ROOT = Path(__file__).resolve().parents[1]
# Seeded throughout: random bytes trip an exemption or a structure test ~1% of the time, so every stream
# here is fixed (each builder draws from its own generator, whatever order the tests run in).
rb = random.Random(1).randbytes


class Sender:
    """One direction of a Shadowsocks AEAD stream (SIP004), as ss-local/ss-server write it."""

    def __init__(self, rng: random.Random, salt_size: int = 32, aead=ChaCha20Poly1305,
                 password: bytes = b"lab-secret") -> None:
        master = hashlib.md5(password).digest() + hashlib.md5(hashlib.md5(password).digest() + password).digest()
        self.salt = rng.randbytes(salt_size)
        key = HKDF(hashes.SHA1(), salt_size, self.salt, b"ss-subkey").derive(master[:salt_size])
        self.aead, self.nonce, self.started = aead(key), 0, False

    def _seal(self, data: bytes) -> bytes:
        out = self.aead.encrypt(self.nonce.to_bytes(12, "little"), data, None)
        self.nonce += 1
        return out

    def send(self, payload: bytes) -> bytes:
        """One write: the salt first on a fresh stream, then one chunk (length and payload sealed apart)."""
        chunk = self._seal(struct.pack(">H", len(payload))) + self._seal(payload)
        if not self.started:
            self.started = True
            return self._first() + chunk
        return chunk

    def _first(self) -> bytes:
        return self.salt


class Sip022Sender(Sender):
    """Shadowsocks 2022 (SIP022, 2022-blake3-aes-256-gcm): salt, then a sealed fixed-length header (type,
    timestamp, the next chunk's length; the server's also echoes the request salt) before the chunks. The
    BLAKE3 key derivation is invisible on the wire, so a random key stands in for it."""

    def __init__(self, rng: random.Random, request_salt: bytes | None = None) -> None:
        self.salt, self.request_salt = rng.randbytes(32), request_salt
        self.aead, self.nonce, self.started = AESGCM(rng.randbytes(32)), 0, False

    def _first(self) -> bytes:
        kind = b"\x00" if self.request_salt is None else b"\x01" + self.request_salt
        return self.salt + self._seal(kind[:1] + struct.pack(">Q", 1_764_370_000) + kind[1:] + b"\x00\x20")


SOCKS_TARGET = b"\x01" + bytes([198, 18, 0, 2]) + struct.pack(">H", 80)
GET = b"GET /file HTTP/1.1\r\nHost: 198.18.0.2\r\n\r\n"


def api_session(pair: Callable[[random.Random], tuple[Sender, Sender]], seed: int) -> Packets:
    """An app polling an HTTPS API through the proxy: a TLS handshake, then requests and answers of a few
    hundred bytes (inner TLS records, so random sizes)."""
    r = random.Random(seed)
    c, s = pair(r)
    out = writes(0, c.send(SOCKS_TARGET + r.randbytes(517))) + writes(1, s.send(r.randbytes(2900)))
    for _ in range(8):
        out += writes(0, c.send(r.randbytes(r.randrange(60, 450))))
        out += writes(1, s.send(r.randbytes(r.randrange(40, 480))))
    return out


def sip022(r: random.Random) -> tuple[Sender, Sender]:
    client = Sip022Sender(r)
    return client, Sip022Sender(r, client.salt)


def download(seed: int = 1) -> Packets:
    r = random.Random(seed)
    c, s = Sender(r), Sender(r)
    return [(0, c.send(SOCKS_TARGET + GET)), *writes(1, s.send(b"HTTP/1.1 200 OK\r\n\r\n" + r.randbytes(9000))),
            (0, c.send(b"x"))]


def typing(seed: int = 1) -> Packets:
    r = random.Random(seed)
    c, s = Sender(r), Sender(r)
    return [(0, c.send(SOCKS_TARGET + b"SSH-2.0-OpenSSH_9.6\r\n")), (1, s.send(b"SSH-2.0-OpenSSH_9.2\r\n"))] + [
        (d, (c if d == 0 else s).send(r.randbytes(1))) for _ in range(5) for d in (0, 1)]


def run(packets: Packets, opened: bool = True) -> Shadowsocks:
    d = Shadowsocks()
    for i, (direction, payload) in enumerate(packets, 4):
        if d.feed(FlowPacket(i, direction, float(i), payload, proto=6, opened=opened)) is not State.CANDIDATE:
            return d
    d.on_end()
    return d


def through_table(packets: Packets, port: int) -> Flow:
    """The packets as one TCP connection to `port` (SYN, SYN-ACK, then the payload), through the flow
    table with every dissector."""
    a, b, cport = "198.18.0.1", "198.18.0.2", 50_000
    pkts = [P(0.0, a, b, cport, port, 6, TCP_SYN), P(0.01, b, a, port, cport, 6, TCP_SYN | TCP_ACK)]
    seq = [1, 1]
    for i, (d, payload) in enumerate(packets, 2):
        src, dst, sport, dport = (a, b, cport, port) if d == 0 else (b, a, port, cport)
        pkts.append(P(i * 0.01, src, dst, sport, dport, 6, TCP_PSH | TCP_ACK, payload, seq[d]))
        seq[d] += len(payload)
    ft = FlowTable(catalog.ALL)
    ft.add(table(pkts))
    (flow,) = ft.close()
    return flow


# ---------------------------------------------------------------------------------------------- positives
POSITIVES: dict[str, Callable[[], Packets]] = {
    "chacha20-poly1305": lambda: api_session(lambda r: (Sender(r), Sender(r)), 2),
    "aes-256-gcm": lambda: api_session(lambda r: (Sender(r, aead=AESGCM), Sender(r, aead=AESGCM)), 3),
    "aes-128-gcm": lambda: api_session(lambda r: (Sender(r, 16, AESGCM), Sender(r, 16, AESGCM)), 4),
    "2022-blake3-aes-256-gcm": lambda: api_session(sip022, 5),
}


@pytest.mark.parametrize("name", POSITIVES)
def test_real_aead_sessions_with_writes_both_ways_are_confirmed(name):
    d = run(POSITIVES[name]())
    assert d.state is State.CONFIRMED and d.family == "shadowsocks" and d.confidence == 0.6, d.evidence
    assert "fully encrypted" in d.evidence[-1] and FULLY_ENCRYPTED in d.risks


@pytest.mark.parametrize("port", [443, 8388, 40404])
@pytest.mark.parametrize("name", POSITIVES)
def test_shadowsocks_is_named_on_any_port(name, port):
    rec = label(through_table(POSITIVES[name](), port))
    assert (rec["label"], rec["method"], rec["risks"]) == ("shadowsocks", "signature", [FULLY_ENCRYPTED])


@pytest.mark.parametrize("packets", [download(), typing()], ids=["one request, a download", "keystrokes"])
def test_entropy_alone_is_a_risk_not_a_label(packets):
    """One client write, or constant 35-byte writes: nothing but randomness to go on, which ordinary
    encrypted and compressed protocols show too."""
    d = run(packets)
    assert d.state is State.REJECTED and FULLY_ENCRYPTED in d.risks
    assert "fully encrypted only" in d.evidence[-1] or "aligned sizes" in d.evidence[-1], d.evidence


def test_the_aead_floor_is_a_real_one_byte_chunk():
    """MIN_CHUNK against real ciphertext: a keystroke through the proxy is exactly one floor-sized chunk."""
    assert min(len(p) for _, p in typing()[2:]) == MIN_CHUNK


# ---------------------------------------------------------------------------------------------- negatives
NEGATIVES: dict[str, tuple[Callable[[], Packets], str]] = {
    "zlib agent": (lambda: agent(zlib.compress), "2-byte big-endian length at offset 4"),
    "lzma agent": (lambda: agent(lzma.compress, 13), "2-byte big-endian length at offset 4"),
    "TLS 1.3 resumption": (tls13_resumption, "2-byte big-endian length at offset 3"),
    "SSH binary packets": (ssh_binary_packets, "aligned sizes"),
    "game": (game, "header bytes repeat"),
    "MTProto obfuscated2": (mtproto_obfuscated2, "aligned sizes"),
    "Ethereum RLPx": (rlpx, "aligned sizes"),
    "BitTorrent MSE": (bittorrent_mse, "a 17-byte segment cannot hold an AEAD chunk"),
}


@pytest.mark.parametrize("size", [MIN_CHUNK, 1400, 70_000])
def test_a_length_field_is_found_at_every_layout_and_none_in_high_bytes(size):
    """Every layout's field holding the write's size (less 0..HEADER) is found, among leading bytes too
    large to be a field's high byte (the case the quick rejection skips), and none where none was put."""
    gen = random.Random(size)
    for off, width, order in LENGTH_LAYOUTS:
        for less in (0, HEADER):
            if size - less >= 256**width:
                continue  # does not fit the field
            p = bytearray(gen.randint(0x80, 0xFF) for _ in range(size))
            p[off : off + width] = (size - less).to_bytes(width, order)
            assert (off, width, order) in length_fields(bytes(p)), (off, width, order, less)
    assert length_fields(bytes(gen.randint(0x80, 0xFF) for _ in range(size))) == []


@pytest.mark.parametrize("name", NEGATIVES)
def test_fully_encrypted_ordinary_protocols_are_rejected_by_the_structure_they_show(name):
    build, reason = NEGATIVES[name]
    d = run(build())
    assert d.state is State.REJECTED and d.risks == {FULLY_ENCRYPTED}
    assert reason in d.evidence[-1], d.evidence


@pytest.mark.parametrize("cut", [1, 2, 5])
@pytest.mark.parametrize("name", POSITIVES)
def test_joined_mid_flow_the_writes_alone_name_it(name, cut):
    """A capture that starts `cut` writes into the session: no salt, no opening, but the writes that
    follow pass the same tests; the label says mid-flow, and no risk is claimed for first segments unseen."""
    d = run(POSITIVES[name]()[cut:], opened=False)
    assert d.state is State.CONFIRMED and d.confidence == 0.5 and d.attributes == {"mid_flow": "true"}, d.evidence
    assert d.evidence[-1].startswith("joined mid-flow") and not d.risks


@pytest.mark.parametrize("cut", [1, 2, 5])
@pytest.mark.parametrize("name", NEGATIVES)
def test_joined_mid_flow_ordinary_protocols_still_show_their_structure(name, cut):
    d = run(NEGATIVES[name][0]()[cut:], opened=False)
    assert d.state is State.REJECTED and not d.risks, d.evidence


def test_joined_mid_flow_through_the_table_on_a_vpn_port():
    """The cheap stage passes a connection joined mid-flow (no SYN seen) to the dissector."""
    packets = POSITIVES["aes-256-gcm"]()[3:]
    a, b = "198.18.0.1", "198.18.0.2"
    seq = [1000, 9000]
    pkts = []
    for i, (d, payload) in enumerate(packets):
        src, dst, sport, dport = (a, b, 50_000, 8388) if d == 0 else (b, a, 8388, 50_000)
        pkts.append(P(i * 0.01, src, dst, sport, dport, 6, TCP_PSH | TCP_ACK, payload, seq[d]))
        seq[d] += len(payload)
    ft = FlowTable(catalog.ALL)
    ft.add(table(pkts))
    (flow,) = ft.close()
    rec = label(flow)
    assert (rec["label"], rec["confidence"], rec["risks"]) == ("shadowsocks", 0.5, []), rec


HEAD = rb(8)  # one fixed 8-byte header on every write


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
    ([(d, HEAD + rb(90)) for _ in range(16) for d in (0, 1)], True, "header bytes repeat"),  # ~900 equal pairs
    # joined mid-flow: a proxied download shows one client write, too little to tell ciphertext apart
    (download(), False, "fully encrypted only: 1 client and 0 server"),
    ([(0, rb(20)), (1, rb(300))], False, "below the AEAD floor of 35"),  # no chunk is that short
    ([(0, b"\x17\x03\x03\x01\x2b" + rb(294))], False, "length field at offset 3"),  # a TLS record, mid-flow
])
def test_other_streams_are_rejected(packets, opened, reason):
    d = run(packets, opened)
    assert d.state is State.REJECTED
    assert reason in d.evidence[-1], d.evidence


def test_lab_connections_carry_the_risk_and_the_label():
    """The lab's proxied connections are kept alive for several exchanges (small requests and answers,
    then a larger object): each gets the risk and the label; the lab's other TCP services get neither."""
    opts = Options()
    for name in ("shadowsocks-chacha-8388.pcap", "shadowsocks-aes256gcm-443.pcap"):
        records = list(classify_capture(str(ROOT / "pcaps/corpus" / name), opts))
        assert records and {(r.label, tuple(r.risks)) for r in records} == {("shadowsocks", (FULLY_ENCRYPTED,))}
    for name in ("neg-ssh-22.pcap", "neg-https-tls13-443.pcap", "neg-http-80.pcap"):
        assert {(r.label, tuple(r.risks)) for r in classify_capture(str(ROOT / "pcaps/corpus" / name), opts)} == {
            ("none", ())}
