"""AnyConnect CSTP inside TLS: IP-packet-per-record tunnels confirmed, ordinary HTTPS and non-TLS rejected."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.dissectors.base import FlowPacket, State
from vpnid.features.dissectors.cstp import HEAD, Cstp, RecordWalker, record_overhead

ROOT = Path(__file__).resolve().parents[1]
GCM, CHACHA, TLS13_AES, CBC = 0xC02C, 0xCCA9, 0x1301, 0xC014


def tls_record(content: int, body: bytes) -> bytes:
    return struct.pack(">BHH", content, 0x0303, len(body)) + body


def client_hello() -> bytes:
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + struct.pack(">H", 4) + struct.pack(">HH", GCM, CHACHA) + b"\x01\x00"
    return tls_record(22, b"\x01" + len(body).to_bytes(3, "big") + body)


def server_hello(suite: int) -> bytes:
    body = b"\x03\x03" + os.urandom(32) + b"\x20" + os.urandom(32) + struct.pack(">HB", suite, 0)
    return tls_record(22, b"\x02" + len(body).to_bytes(3, "big") + body)


def app(plaintext: int, overhead: int) -> bytes:
    return tls_record(23, os.urandom(plaintext + overhead))


def handshake(suite: int) -> list[tuple[int, bytes]]:
    """ClientHello, ServerHello (+ the rest of the server flight in one segment), Finished both ways."""
    return [(0, client_hello()), (1, server_hello(suite) + tls_record(22, os.urandom(900))),
            (0, tls_record(22, os.urandom(70)) + tls_record(20, b"\x01") + tls_record(22, os.urandom(40))),
            (1, tls_record(20, b"\x01") + tls_record(22, os.urandom(40)))]


def sealed(plaintext: int, overhead: int, seq: int) -> bytes:
    """An AEAD record; under TLS 1.2 GCM its explicit nonce is the record's sequence number, as OpenSSL,
    GnuTLS and BoringSSL send it."""
    if overhead != 24:
        return app(plaintext, overhead)
    return tls_record(23, seq.to_bytes(8, "big") + os.urandom(plaintext + overhead - 8))


def http_phase(overhead: int) -> list[tuple[int, bytes]]:
    """Auth POSTs and the CONNECT: four requests and four answers of a few hundred bytes."""
    return [(d, sealed(size, overhead, i)) for i in range(1, 5) for d, size in ((0, 980), (1, 520))]


def tunnel(overhead: int, acks: int = 12, inner_ack: int = 52, framing: int = 8) -> list[tuple[int, bytes]]:
    """A download through the tunnel: full-size records down, one pure-ACK record up per two (`framing`:
    the tunnel's bytes before the IP packet, CSTP's header by default)."""
    out, seq = [], [100, 900]
    for _ in range(acks):
        for d, inner in ((1, 1400), (1, 1400), (0, inner_ack)):
            seq[d] += 1
            out.append((d, sealed(framing + inner, overhead, seq[d])))
    return out


def run(packets: list[tuple[int, bytes]], opened: bool = True) -> Cstp:
    """Feed the packets; `opened`: the capture saw the connection's SYN (False: it started mid-flow)."""
    d, seq = Cstp(), [1000, 5000]
    for i, (direction, payload) in enumerate(packets, 1):
        pkt = FlowPacket(i, direction, float(i), payload, tcp_seq=seq[direction], proto=6, opened=opened)
        if d.feed(pkt) is not State.CANDIDATE:
            break
        seq[direction] += len(payload)
    return d


@pytest.mark.parametrize("suite, inner_ack", [(GCM, 52), (CHACHA, 40), (TLS13_AES, 72)])
def test_ip_packets_one_per_record_are_confirmed(suite, inner_ack):
    overhead = record_overhead(suite)
    d = run(handshake(suite) + http_phase(overhead) + tunnel(overhead, inner_ack=inner_ack))
    assert d.state is State.CONFIRMED and d.family == "openconnect" and d.confidence == 0.8
    assert f"8× {inner_ack}" in d.evidence[-1] and d.attributes["tls_suite"] == f"0x{suite:04x}"


def test_keepalives_and_dpd_count_as_bare_cstp_headers():
    d = run(handshake(GCM) + http_phase(24) + [(0, app(8, 24)) for _ in range(8)])
    assert d.state is State.CONFIRMED and "8× 0" in d.evidence[-1]


H2 = [(d, app(s, 24)) for _ in range(20) for d, s in ((0, 13), (1, 17), (1, 1400))]  # window updates, pings, data


@pytest.mark.parametrize("packets, reason", [
    # HTTP/2 over TLS: frames with 9-byte headers, never a pure-ACK-sized run
    (handshake(GCM) + http_phase(24) + H2, "application records without a tunnel's inner sizes"),
    # the same record sizes under a CBC suite: the plaintext length is not knowable
    (handshake(CBC) + http_phase(24) + tunnel(24), "no fixed per-record overhead"),
    # a tunnel's sizes, but only now and then among larger records (a chat app)
    (handshake(GCM) + http_phase(24) + [(0, app(s, 24)) for s in [60, 300, 411, 60, 290, 60, 515, 60, 333, 60, 612,
                                                                   60, 250, 60, 410, 60, 380, 60, 300]],
     "undecided"),
    ([(0, b"SSH-2.0-OpenSSH_9.6\r\n"), (1, b"SSH-2.0-OpenSSH_9.2\r\n")], "not with a TLS ClientHello"),
    (handshake(GCM)[:1] + [(1, b"\x15\x03\x03\x00\x02\x02\x28")] + [(1, b"GET / HTTP/1.1\r\n\r\n")],
     "not a sequence of TLS records"),
    # joined after the hellos: judged mid-flow, and HTTP/2 records follow
    ([(0, client_hello()), (1, tls_record(22, b"\x0b\x00\x00\x03" + bytes(3)))] + H2,
     "application records without a tunnel's inner sizes"),
    # HTTPS bulk: 16 KiB records cannot be one IP packet each
    (handshake(GCM) + http_phase(24) + [(1, app(16384, 24)[i:i + 1448]) for i in range(0, 16408, 1448)],
     "more than one IP packet"),
])
def test_other_tls_and_non_tls_streams_are_not_cstp(packets, reason):
    d = run(packets)
    assert d.state is not State.CONFIRMED
    assert reason in (d.evidence[-1] if d.evidence else "undecided")


@pytest.mark.parametrize("packets, reason", [
    ([(d, b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(i)) for i in range(3) for d in (0, 1)], "none of 3 segments"),
    (H2, "application records without a tunnel's inner sizes"),  # HTTP/2
])
def test_other_streams_joined_mid_flow_are_not_cstp(packets, reason):
    d = run(packets, opened=False)
    assert d.state is not State.CONFIRMED
    assert reason in (d.evidence[-1] if d.evidence else "undecided")


@pytest.mark.parametrize("overhead", [24, 16, 17])
def test_a_capture_that_starts_inside_the_tunnel_is_confirmed_under_the_right_overhead(overhead):
    d = run([(1, os.urandom(700))] + tunnel(overhead), opened=False)  # first: a record's tail
    assert d.state is State.CONFIRMED and d.confidence == 0.7
    assert f"{overhead}-byte AEAD overhead (mid-flow guess)" in d.evidence[-1]


def test_a_capture_that_starts_after_the_hellos_is_judged_mid_flow():
    d = run(handshake(GCM)[2:] + http_phase(24) + tunnel(24), opened=False)  # Finished both ways, then the tunnel
    assert d.state is State.CONFIRMED and "mid-flow guess" in d.evidence[-1]


def test_records_are_followed_across_segments_and_retransmissions():
    w = RecordWalker()
    stream = tls_record(23, bytes(100)) + tls_record(23, bytes(30))
    assert w.push(1, stream[:50]) == []
    assert w.push(1, stream[:50]) == []  # retransmitted
    assert [(c, n) for c, n, _ in w.push(51, stream[50:])] == [(23, 100), (23, 30)]
    assert w.push(500, tls_record(23, bytes(5))) == [] and w.broken  # a gap: framing lost for good


@pytest.mark.parametrize("seed", range(4))
def test_records_and_their_first_bytes_do_not_depend_on_how_segments_cut_the_stream(seed: int) -> None:
    """Bulk records give the same types, lengths and first body bytes
    whether the stream comes whole, in MSS-sized or tiny segments, or with retransmissions overlapping a
    record's header and body; a bad header after them is still refused."""
    import random

    rng = random.Random(seed)
    bodies = [rng.randbytes(n) for n in (16384, HEAD - 1, HEAD, HEAD + 1, 0, 1, 3000, 16384, 120)]
    types = [rng.choice((22, 23)) for _ in bodies]
    stream = b"".join(tls_record(c, b) for c, b in zip(types, bodies))

    def records(got: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
        return [(c, n, head[: min(n, HEAD)]) for c, n, head in got]  # past a short body: the next record's bytes

    want = [(c, len(b), b[:HEAD]) for c, b in zip(types, bodies)]
    assert records(RecordWalker().push(7, stream)) == want
    for cut in (1, 5, 1448, None):
        w, pos, got = RecordWalker(), 0, []
        while pos < len(stream):
            n = cut or rng.randint(1, 4000)
            start = max(0, pos - rng.randint(0, 60)) if cut is None else pos  # retransmitted overlap
            got += w.push(7 + start, stream[start : pos + n])
            pos += n
        assert records(got) == want, cut
        assert w.push(7 + len(stream), b"\x17\x09\x09\x00\x01x") is None  # not a TLS record header


def test_lab_capture_of_cstp_without_dtls_is_labelled_and_https_is_not():
    opts = Options()
    cstp = list(classify_capture(str(ROOT / "pcaps/corpus/openconnect-tls-8443.pcap"), opts))
    assert [(r.label, r.method) for r in cstp] == [("openconnect", "signature")]
    assert "CSTP" in cstp[0].evidence[-1]
    for name in ("neg-https-tls12-8443.pcap", "neg-https-tls13-443.pcap"):
        assert {r.label for r in classify_capture(str(ROOT / "pcaps/corpus" / name), opts)} == {"none"}


def test_client_side_only_is_confirmed_at_a_lower_confidence():
    """An asymmetric tap that sees only the client: its hello, its HTTP requests, then the pure-ACK records
    it sends during a download."""
    client = [p for p in handshake(GCM) + http_phase(24) + tunnel(24) if p[0] == 0]
    d = run(client)
    assert d.state is State.CONFIRMED and d.confidence == 0.6 and d.attributes["one_way"] == "true"
    assert "one direction only" in d.evidence[-1]


@pytest.mark.parametrize("sizes", [
    [13, 1400, 13, 13, 700, 13, 1400] * 6,  # HTTP/2 client: window updates among request bodies
    [60, 300, 411, 60, 290, 60, 515, 60, 333, 60, 612, 60, 250, 60, 410] * 3,  # chat app uploads
])
def test_client_side_only_of_other_tls_is_not_cstp(sizes):
    d = run([(0, client_hello())] + [(0, app(s, 24)) for s in sizes])
    assert d.state is not State.CONFIRMED
