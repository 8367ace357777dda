"""Shadowsocks AEAD: real SIP004/SIP022 ciphertext confirmed when it shows enough writes each way; fully
encrypted flows with nothing more (one-request downloads) and fully encrypted ordinary protocols (compressed
agents, TLS 1.3, SSH, games, MTProto, RLPx, BitTorrent MSE) get the `fully_encrypted` risk and no label.

Every negative built here was labelled shadowsocks by the previous rule (first segments fully encrypted,
later ones AEAD-sized and free of text), checked against it when these tests were written."""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.flowbuild import P, table
from tests.test_dissector_cstp import tls_record
from vpnid.classifier.labelling.labels import label
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.dissectors import catalog
from vpnid.features.dissectors.base import FlowPacket, State
from vpnid.features.dissectors.shadowsocks import MIN_CHUNK, Shadowsocks
from vpnid.features.flows import Flow, FlowTable
from vpnid.features.packets import TCP_ACK, TCP_PSH, TCP_SYN
from vpnid.features.risks import FULLY_ENCRYPTED

ROOT = Path(__file__).resolve().parents[1]
# Seeded throughout: random bytes trip an exemption or a structure test ~1% of the time, so every stream
# here is fixed (each builder draws from its own generator, whatever order the tests run in).
rb = random.Random(1).randbytes
MSS = 1448
Packets = list[tuple[int, bytes]]


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


def writes(direction: int, data: bytes) -> Packets:
    """One write as TCP carries it: MSS-sized segments, the last one shorter."""
    return [(direction, data[i : i + MSS]) for i in range(0, len(data), MSS)]


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
def agent(compress: Callable[[bytes], bytes], seed: int = 6) -> Packets:
    """A monitoring agent: JSON metrics compressed behind a 6-byte header (magic, type, flags, length of
    the body); the server answers with compressed acknowledgements and configuration. (bz2 is left out:
    its small outputs have too few set bits, which the GFW's first exemption already catches.)"""
    r = random.Random(seed)

    def message(kind: int, doc: dict) -> bytes:
        body = compress(json.dumps(doc).encode())
        return b"\xc3\x5a" + bytes([kind, 1]) + struct.pack(">H", len(body)) + body

    def metrics() -> dict:
        return {"host": f"web-{r.randrange(100):02d}", "ts": 1_764_370_000 + r.randrange(10**5),
                "cpu": [round(r.random() * 100, 2) for _ in range(r.randrange(8, 24))],
                "mem": {k: r.randrange(10**9) for k in ("used", "free", "cached", "swap")},
                "disk": {f"sd{c}": [r.randrange(10**6), r.randrange(10**6)] for c in "abcd"[: r.randrange(1, 5)]}}

    out: Packets = []
    for i in range(8):
        out.append((0, message(0x11, metrics())))
        probes = [{"id": r.randrange(10**6), "target": r.randrange(2**32)} for _ in range(r.randrange(3, 8))]
        answer = {"ack": i, "interval": r.choice((10, 15, 30)), "probes": probes}
        out.append((1, message(0x21, answer)))
    return out


def tls13_resumption(seed: int = 7) -> Packets:
    """TLS 1.3 resuming a session (PSK with X25519MLKEM768, as Chrome and Firefox offer it): the hybrid key
    shares make both hellos mostly random bytes; then application records both ways."""
    r = random.Random(seed)
    ext = lambda kind, body: struct.pack(">HH", kind, len(body)) + body  # noqa: E731
    psk = struct.pack(">H", 198) + struct.pack(">H", 192) + r.randbytes(192) + r.randbytes(4)
    psk += struct.pack(">H", 33) + b"\x20" + r.randbytes(32)
    shares = struct.pack(">HH", 0x11EC, 1216) + r.randbytes(1216) + struct.pack(">HH", 0x001D, 32) + r.randbytes(32)
    exts = (ext(0, b"\x00\x0e\x00\x00\x0bexample.org") + ext(10, b"\x00\x04\x11\xec\x00\x1d")
            + ext(43, b"\x02\x03\x04") + ext(45, b"\x01\x01") + ext(51, struct.pack(">H", len(shares)) + shares)
            + ext(41, psk))
    hello = b"\x03\x03" + r.randbytes(32) + b"\x20" + r.randbytes(32) + b"\x00\x06\x13\x01\x13\x02\x13\x03\x01\x00"
    hello += struct.pack(">H", len(exts)) + exts
    client_hello = tls_record(22, b"\x01" + len(hello).to_bytes(3, "big") + hello)
    sexts = ext(43, b"\x03\x04") + ext(51, struct.pack(">H", 0x11EC) + struct.pack(">H", 1120) + r.randbytes(1120))
    sexts += ext(41, b"\x00\x00")
    server = b"\x03\x03" + r.randbytes(32) + b"\x20" + r.randbytes(32) + b"\x13\x01\x00"
    server += struct.pack(">H", len(sexts)) + sexts
    flight = tls_record(22, b"\x02" + len(server).to_bytes(3, "big") + server) + tls_record(20, b"\x01")
    flight += tls_record(23, r.randbytes(40)) + tls_record(23, r.randbytes(53))  # EncryptedExtensions, Finished
    out = writes(0, client_hello) + [(1, flight), (0, tls_record(20, b"\x01") + tls_record(23, r.randbytes(53)))]
    for _ in range(8):
        out += [(0, tls_record(23, r.randbytes(r.randrange(40, 420)))),
                (1, tls_record(23, r.randbytes(r.randrange(40, 480))))]
    return out


def ssh_binary_packets(seed: int = 8) -> Packets:
    """SSH binary packets (RFC 4253 section 6) under chacha20-poly1305@openssh.com, the framing that
    obfuscated-SSH transports keep: encrypted length, payload padded to 8 bytes, 16-byte MAC."""
    r = random.Random(seed)

    def packet(payload: int) -> bytes:
        body = 1 + payload + 4
        return r.randbytes(4 + body + -body % 8 + 16)

    out = [(0, packet(r.randrange(300, 400))), (1, packet(r.randrange(200, 300)))]
    for _ in range(8):
        out += [(0, packet(r.randrange(20, 300))), (1, packet(r.randrange(20, 400)))]
    return out


def game(seed: int = 9) -> Packets:
    """A game's TCP protocol: 16-bit sequence number and a message type, then a compressed state body."""
    r = random.Random(seed)
    seq = [r.randrange(0x4000), r.randrange(0x4000)]

    def message(d: int, kind: int, size: int) -> tuple[int, bytes]:
        seq[d] += 1
        state = bytes(r.choice(b"\x00\x01\x02\x03\x10\x7f\xff") for _ in range(size * 3)) + r.randbytes(size)
        return d, struct.pack("<HB", seq[d], kind) + zlib.compress(state, 9)

    out = [message(0, 1, 120), message(1, 2, 200)]
    for _ in range(8):
        out += [message(0, 3, r.randrange(20, 80)), message(1, 4, r.randrange(40, 150))]
    return out


def mtproto_obfuscated2(seed: int = 10) -> Packets:
    """Telegram's obfuscated2 transport: a 64-byte random nonce (the protocol tag encrypted in its last
    8 bytes), then AES-256-CTR both ways over intermediate frames (4-byte length, 16-aligned messages)."""
    r = random.Random(seed)
    nonce = bytearray(r.randbytes(56)) + b"\xee\xee\xee\xee" + r.randbytes(4)
    nonce[0] = 0x5C  # not 0xef and no HTTP/TLS look-alike (the spec's forbidden starts)
    rev = nonce[8:56][::-1]
    up = Cipher(algorithms.AES(bytes(nonce[8:40])), modes.CTR(bytes(nonce[40:56]))).encryptor()
    down = Cipher(algorithms.AES(bytes(rev[:32])), modes.CTR(bytes(rev[32:48]))).encryptor()

    def frame(cipher, size: int) -> bytes:
        return cipher.update(struct.pack("<I", size) + r.randbytes(size))

    hello = bytes(nonce[:56]) + up.update(bytes(nonce))[56:]
    out = [(0, hello + frame(up, 40)), (1, frame(down, 84))]  # req_pq_multi and resPQ, then encrypted messages
    for _ in range(8):
        out += [(0, frame(up, 24 + 16 * r.randrange(2, 20))), (1, frame(down, 24 + 16 * r.randrange(2, 28)))]
    return out


def rlpx(seed: int = 11) -> Packets:
    """Ethereum RLPx with the pre-EIP-8 handshake (fixed-size ECIES auth of 307 and ack of 210 bytes, no size
    prefix), then frames: encrypted header and its MAC, frame data padded to 16, frame MAC."""
    r = random.Random(seed)
    ecies = lambda size: b"\x04" + r.randbytes(size - 1)  # noqa: E731 - an uncompressed ephemeral key first
    frame = lambda size: r.randbytes(32 + size + -size % 16 + 16)  # noqa: E731
    out = [(0, ecies(307)), (1, ecies(210)), (0, frame(r.randrange(100, 200))), (1, frame(r.randrange(100, 200)))]
    for _ in range(8):
        out += [(0, frame(r.randrange(1, 400))), (1, frame(r.randrange(1, 400)))]
    return out


MSE_P = int("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
            "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563", 16)


def bittorrent_mse(seed: int = 12) -> Packets:
    """BitTorrent message stream encryption: 96-byte Diffie-Hellman keys with random padding both ways,
    then RC4 over the handshake and the peer wire messages of a download."""
    r = random.Random(seed)
    xa, xb, info_hash = r.getrandbits(160), r.getrandbits(160), r.randbytes(20)
    ya, yb = (pow(2, x, MSE_P).to_bytes(96, "big") for x in (xa, xb))
    secret = pow(int.from_bytes(yb, "big"), xa, MSE_P).to_bytes(96, "big")
    sha = lambda *parts: hashlib.sha1(b"".join(parts)).digest()  # noqa: E731

    def rc4(key: bytes):
        c = Cipher(ARC4(sha(key, secret, info_hash)), None).encryptor()
        c.update(bytes(1024))  # MSE discards the first 1 KiB of keystream
        return c

    up, down = rc4(b"keyA"), rc4(b"keyB")
    handshake = b"\x13BitTorrent protocol" + bytes(8) + info_hash + r.randbytes(20)
    req2 = bytes(a ^ b for a, b in zip(sha(b"req2", info_hash), sha(b"req3", secret)))
    request = lambda i: struct.pack(">IBIII", 13, 6, 0, i * 16384, 16384)  # noqa: E731
    bitfield = struct.pack(">IB", 9, 5) + r.randbytes(8)
    # VC (8 zero bytes), crypto_provide/crypto_select RC4, no padding; the client's initial payload length
    out = [(0, ya + r.randbytes(r.randrange(513))), (1, yb + r.randbytes(r.randrange(513))),
           (0, sha(b"req1", secret) + req2 + up.update(bytes(8) + b"\x00\x00\x00\x02\x00\x00\x00\x44" + handshake)),
           (1, down.update(bytes(8) + b"\x00\x00\x00\x02\x00\x00" + handshake + bitfield)),
           (0, up.update(struct.pack(">IB", 1, 2) + b"".join(request(i) for i in range(4))))]  # interested, requests
    piece = down.update(struct.pack(">IB", 1, 1) + struct.pack(">IBII", 16393, 7, 0, 0) + r.randbytes(16384))
    out += writes(1, piece)[:6]
    out += [(0, up.update(request(4)))] + writes(1, down.update(r.randbytes(4 * MSS)))
    return out


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


@pytest.mark.parametrize("name", NEGATIVES)
def test_fully_encrypted_ordinary_protocols_are_rejected_by_the_structure_they_show(name):
    build, reason = NEGATIVES[name]
    d = run(build())
    assert d.state is State.REJECTED and d.risks == {FULLY_ENCRYPTED}
    assert reason in d.evidence[-1], d.evidence


@pytest.mark.parametrize("port", [443, 8388, 40404])
@pytest.mark.parametrize("name", NEGATIVES)
def test_fully_encrypted_ordinary_protocols_are_no_tunnel_on_any_port(name, port):
    rec = label(through_table(NEGATIVES[name][0](), port))
    assert (rec["label"], rec["method"], rec["risks"]) == ("none", "none", [FULLY_ENCRYPTED])


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
    (download(), False, "start was not seen"),  # mid-flow: random bytes say nothing
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
