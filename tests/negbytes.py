"""Ordinary protocols that look like tunnels, built from real bytes (compressors, ciphers and framings as
their specs and implementations write them), for the negatives suite (tests/test_negatives.py) and the
dissector tests that name the structure each is rejected by.

Each builder returns (direction, payload) pairs, direction 0 the client's; TCP builders give one write
per segment (MSS-sized where a write is longer). Every stream is seeded: random bytes trip a rule's
exemption about 1 time in 100, so each one is fixed.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import random
import struct
import zlib
from collections.abc import Callable

import lz4.block
import lz4.frame
import zstandard
from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.test_dissector_cstp import tls_record

MSS = 1448
Packets = list[tuple[int, bytes]]


def writes(direction: int, data: bytes) -> Packets:
    """One write as TCP carries it: MSS-sized segments, the last one shorter."""
    return [(direction, data[i : i + MSS]) for i in range(0, len(data), MSS)]


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


def lz4_block(data: bytes) -> bytes:
    """An LZ4 block (no frame), as agents that prefix their own length send it."""
    return lz4.block.compress(data, store_size=False)


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


def tls12_resumption(seed: int = 13) -> Packets:
    """TLS 1.2 resuming by session ID (RFC 5246 section 7.3, the abbreviated handshake): the client offers
    the old session's ID, the server echoes it and sends ChangeCipherSpec and Finished at once; then
    AES-GCM application records (8-byte explicit nonce, 16-byte tag) both ways."""
    r = random.Random(seed)
    sid = r.randbytes(32)
    ext = b"\x00\x00\x00\x10\x00\x0e\x00\x00\x0bexample.org" + b"\x00\x23\x00\x00"  # SNI, empty ticket
    hello = b"\x03\x03" + r.randbytes(32) + b"\x20" + sid + b"\x00\x04\xc0\x2f\xc0\x2b\x01\x00"
    hello += struct.pack(">H", len(ext)) + ext
    server = b"\x03\x03" + r.randbytes(32) + b"\x20" + sid + b"\xc0\x2f\x00\x00\x00"
    finished = lambda: tls_record(22, r.randbytes(8 + 16 + 16))  # noqa: E731 - encrypted Finished
    app = lambda n: tls_record(23, r.randbytes(8 + n + 16))  # noqa: E731
    out = [(0, tls_record(22, b"\x01" + len(hello).to_bytes(3, "big") + hello)),
           (1, tls_record(22, b"\x02" + len(server).to_bytes(3, "big") + server) + tls_record(20, b"\x01") + finished()),
           (0, tls_record(20, b"\x01") + finished() + app(r.randrange(200, 400)))]
    for _ in range(8):
        out += [(1, app(r.randrange(100, 1300))), (0, app(r.randrange(30, 300)))]
    return out


def ssh_session(seed: int = 14) -> Packets:
    """An SSH connection from its start (RFC 4253): version banners, clear KEXINITs, then the
    encrypted binary packets of `ssh_binary_packets`."""
    r = random.Random(seed)
    names = lambda *n: struct.pack(">I", len(",".join(n))) + ",".join(n).encode()  # noqa: E731

    def kexinit() -> bytes:
        body = b"\x14" + r.randbytes(16) + names("sntrup761x25519-sha512@openssh.com", "curve25519-sha256")
        body += names("ssh-ed25519") + names("chacha20-poly1305@openssh.com") * 2 + names("umac-64-etm@openssh.com") * 2
        body += names("none") * 2 + names() * 2 + b"\x00" + bytes(4)
        pad = 8 - (len(body) + 5) % 8 + 8
        return struct.pack(">IB", len(body) + pad + 1, pad) + body + r.randbytes(pad)

    out = [(0, b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n"), (1, b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"),
           (0, kexinit()), (1, kexinit())]
    return out + ssh_binary_packets(seed)


def game_udp(seed: int = 15) -> Packets:
    """A game's UDP protocol (Quake 3 / Source style netchan): a 32-bit sequence number with a reliable
    bit, a 32-bit ack, a 16-bit client port id, then delta-compressed state (zlib), 20-60 packets a
    second both ways."""
    r = random.Random(seed)
    seq, qport = [r.randrange(1, 1000), r.randrange(1, 1000)], r.randrange(65536)
    out: Packets = []
    for i in range(40):
        d = i % 2
        seq[d] += 1
        state = bytes(r.choice(b"\x00\x00\x01\x02\x7f\xff") for _ in range(r.randrange(60, 300))) + r.randbytes(40)
        head = struct.pack("<II", seq[d] | (0x80000000 if i % 7 == 0 else 0), seq[1 - d])
        out.append((d, head + (struct.pack("<H", qport) if d == 0 else b"") + zlib.compress(state)))
    return out


def compressed_udp(seed: int = 16) -> Packets:
    """A telemetry exporter over UDP: a 4-byte magic, a sequence number, then a zstd-compressed batch;
    the collector answers every fourth datagram with a short compressed acknowledgement."""
    r = random.Random(seed)
    out: Packets = []
    for i in range(24):
        batch = json.dumps([{"k": f"m{r.randrange(50)}", "v": r.random(), "t": 1_764_370_000 + i} for _ in range(20)])
        out.append((0, b"TLM1" + struct.pack(">I", i) + zstd(batch.encode())))
        if i % 4 == 3:
            out.append((1, b"TLM1" + struct.pack(">I", i) + zstd(json.dumps({"ack": i}).encode())))
    return out


def obfuscated_udp(seed: int = 17) -> Packets:
    """A messenger's call transport after obfuscation (as VoIP over an XOR/AES-CTR mask): every datagram
    random from its first byte, 20 ms voice frames of 60-160 bytes each way."""
    r = random.Random(seed)
    up = Cipher(algorithms.AES(r.randbytes(32)), modes.CTR(r.randbytes(16))).encryptor()
    down = Cipher(algorithms.AES(r.randbytes(32)), modes.CTR(r.randbytes(16))).encryptor()
    return [(d, (up if d == 0 else down).update(r.randbytes(r.randrange(60, 160)))) for _ in range(30) for d in (0, 1)]


AGENTS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": zlib.compress, "lzma": lzma.compress, "lz4 frame": lz4.frame.compress, "lz4 block": lz4_block,
    "zstd": zstd,
}
# name -> builder, per transport: every ordinary protocol the suite moves onto VPN ports.
TCP_NEGATIVES: dict[str, Callable[[], Packets]] = {
    **{f"{name} agent": (lambda c=c, s=s: agent(c, s)) for s, (name, c) in enumerate(AGENTS.items(), 6)},
    "TLS 1.3 resumption": tls13_resumption,
    "TLS 1.2 resumption": tls12_resumption,
    "SSH session": ssh_session,
    "SSH binary packets": ssh_binary_packets,
    "game": game,
    "MTProto obfuscated2": mtproto_obfuscated2,
    "Ethereum RLPx": rlpx,
    "BitTorrent MSE": bittorrent_mse,
}
UDP_NEGATIVES: dict[str, Callable[[], Packets]] = {
    "game netchan": game_udp,
    "zstd telemetry": compressed_udp,
    "obfuscated voice": obfuscated_udp,
}
