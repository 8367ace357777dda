"""OpenConnect/AnyConnect DTLS data channel: positives for both shapes, negatives for other DTLS uses."""

from __future__ import annotations

import os
import struct

import pytest

from vpnid.features.dissectors.base import FlowPacket, State
from vpnid.features.dissectors.openconnect import OpenConnect

PSK = [0x00A9, 0xCCAB, 0xC0A5, 0x008D, 0x00A8, 0xC0A4, 0x008C, 0x00AE]
ECDHE = [0xC02B, 0xC02F, 0xC02C, 0xCCA9]


def record(version: int, handshake: bytes, seq: int = 0) -> bytes:
    return struct.pack(">BHH6sH", 22, version, 0, seq.to_bytes(6, "big"), len(handshake)) + handshake


def handshake(msg_type: int, body: bytes, seq: int = 0) -> bytes:
    n = len(body).to_bytes(3, "big")
    return bytes([msg_type]) + n + struct.pack(">H", seq) + b"\0\0\0" + n + body


def client_hello(suites: list[int], sid: bytes, version: int = 0xFEFF, cookie: bytes = b"") -> bytes:
    body = struct.pack(">H", 0xFEFD) + os.urandom(32) + bytes([len(sid)]) + sid + bytes([len(cookie)]) + cookie
    body += struct.pack(">H", 2 * len(suites)) + b"".join(struct.pack(">H", s) for s in suites) + b"\x01\x00"
    return record(version, handshake(1, body))


def server_hello(suite: int, sid: bytes, version: int = 0xFEFD) -> bytes:
    body = struct.pack(">H", 0xFEFD) + os.urandom(32) + bytes([len(sid)]) + sid + struct.pack(">HB", suite, 0)
    return record(version, handshake(2, body))


def run(packets: list[tuple[int, bytes]]) -> OpenConnect:
    d = OpenConnect()
    for i, (direction, payload) in enumerate(packets, 1):
        if d.feed(FlowPacket(i, direction, float(i), payload)) is not State.CANDIDATE:
            break
    return d


SID, OTHER = os.urandom(32), os.urandom(32)


def test_psk_negotiated_dtls12_data_channel_is_confirmed_at_the_server_hello():
    d = run([(0, client_hello(PSK, SID)), (0, client_hello(PSK, SID)), (1, server_hello(0x00A9, OTHER))])
    assert d.state is State.CONFIRMED and d.confidence == 0.9 and d.verdict_packet == 3
    assert "PSK-NEGOTIATE" in d.evidence[-1] and d.attributes["variant"] == "dtls1.2-psk"


def test_cisco_dtls_0100_session_resumption_is_confirmed():
    d = run([(1, client_hello(ECDHE, SID, version=0x0100)), (0, server_hello(0xC02F, SID, version=0x0100))])
    assert d.state is State.CONFIRMED and d.attributes["variant"] == "cisco-dtls-0x0100"


@pytest.mark.parametrize("packets, reason", [
    ([(0, client_hello(ECDHE, SID)), (1, server_hello(0xC02F, SID))], "certificate-based suites"),  # WebRTC-like
    ([(0, client_hello(PSK, b"")), (1, server_hello(0x00A8, b""))], "session ID"),  # IoT DTLS-PSK
    ([(0, client_hello(ECDHE, SID, version=0x0100)), (1, server_hello(0xC02F, OTHER, version=0x0100))],
     "neither resumes"),
    ([(0, client_hello(PSK, SID)), (1, os.urandom(60))], "not a ServerHello"),
    ([(0, bytes([0xC3]) + os.urandom(1199))], "not a DTLS ClientHello"),  # QUIC Initial
    ([(0, struct.pack(">HHI", 1, 0, 0x2112A442) + os.urandom(12))], "not a DTLS ClientHello"),  # STUN
    ([(0, bytes.fromhex("abcd01000001000000000000") + b"\x01a\x03lab\x00\x00\x01\x00\x01")], "not a DTLS"),  # DNS
])
def test_other_dtls_and_lookalikes_are_rejected(packets, reason):
    d = run(packets)
    assert d.state is State.REJECTED and reason in d.evidence[-1]


def test_one_way_client_hellos_stay_undecided():
    d = run([(0, client_hello(PSK, SID))] * 3)
    assert d.state is State.CANDIDATE


def app_data(seq: int, inner: int, overhead: int = 24, epoch: int = 1) -> bytes:
    """One AnyConnect DTLS datagram: an application-data record holding the type byte and an IP packet."""
    body = os.urandom(1 + inner + overhead)
    return struct.pack(">BHH6sH", 23, 0xFEFD, epoch, seq.to_bytes(6, "big"), len(body)) + body


def download(n: int = 12, overhead: int = 24, ack: int = 52) -> list[tuple[int, bytes]]:
    """Mid-flow: full-size packets down, a pure TCP ACK up for every two."""
    out, seq = [], [100, 300]
    for _ in range(n):
        for direction, inner in ((1, 1400), (1, 1400), (0, ack)):
            out.append((direction, app_data(seq[direction], inner, overhead)))
            seq[direction] += 1
    return out


@pytest.mark.parametrize("overhead", [24, 16])
def test_mid_flow_data_channel_is_confirmed_from_record_sizes_and_sequence(overhead):
    d = run(download(overhead=overhead))
    assert d.state is State.CONFIRMED and d.confidence == 0.8 and d.attributes["variant"] == "mid-flow"
    assert f"{overhead}-byte AEAD overhead" in d.evidence[-1] and "8× 52" in d.evidence[-1]


def test_mid_flow_join_skips_the_end_of_a_handshake():
    finished = record(0xFEFD, handshake(20, os.urandom(12)))
    d = run([(0, finished), (1, finished)] + download())
    assert d.state is State.CONFIRMED


@pytest.mark.parametrize("packets, reason", [
    # WebRTC data channel: SCTP inside DTLS (SACKs of 28 bytes, DATA chunks), no IP-packet sizes
    ([(i % 2, app_data(50 + i // 2, 27 if i % 3 else 300)) for i in range(60)], "undecided"),
    # sizes of a tunnel, but sequence numbers that jump: not one DTLS sender's records
    ([(d, app_data(seq * 7, inner)) for seq, (d, inner) in enumerate([(1, 1400), (0, 52)] * 8)], "step by one"),
    ([(1, app_data(9, 1400)), (0, os.urandom(80))], "not a DTLS record"),
    ([(0, client_hello(PSK, SID)[:40])] + [(0, os.urandom(90))], "not a DTLS record"),  # a hello cut short
])
def test_mid_flow_dtls_that_is_no_tunnel_is_not_confirmed(packets, reason):
    d = run(packets)
    assert d.state is not State.CONFIRMED
    assert reason in (d.evidence[-1] if d.evidence else "undecided")



def call_then(tail: list[tuple[int, bytes]], calls: int = 300, seq: tuple[int, int] = (100, 300)) -> list[tuple[int, bytes]]:
    """Mid-flow: `calls` voice packets each way (inner 200 bytes: IP + UDP + RTP + 160-byte G.711 frame),
    then `tail` with its sequence numbers moved on behind them."""
    out, nxt = [], list(seq)
    for _ in range(calls):
        for direction in (0, 1):
            out.append((direction, app_data(nxt[direction], 200)))
            nxt[direction] += 1
    for direction, p in tail:
        out.append((direction, app_data(nxt[direction], int.from_bytes(p[11:13], "big") - 25)))
        nxt[direction] += 1
    return out


def test_mid_flow_tunnel_carrying_a_call_first_is_confirmed_once_acks_fill_the_window():
    """A capture joined during a call through the tunnel: its pure ACKs show only in the download after
    it, too few to make 60 % of all the direction's records, but all of its last 16."""
    d = run(call_then(download(n=12)))
    assert d.state is State.CONFIRMED and "of the last 16 of" in d.evidence[-1]
    assert d.verdict_packet > 600


def test_mid_flow_dtls_with_sporadic_small_records_is_not_confirmed():
    """A long DTLS application session (media, then a data channel) where records of ACK-like sizes turn up
    now and then among others: never most of 16 in a row."""
    sizes = [52, 40, 1200, 300, 27, 800, 52, 1400, 90, 0, 640, 500]
    tail = [(i % 2, app_data(0, sizes[i % len(sizes)])) for i in range(600)]
    d = run(call_then(tail, calls=150))
    assert d.state is not State.CONFIRMED


def finish(packets: list[tuple[int, bytes]]) -> OpenConnect:
    """`run`, then the flow's end (where a one-direction verdict is taken)."""
    d = run(packets)
    if d.state is State.CANDIDATE:
        d.on_end()
    return d


def test_client_side_only_data_channel_is_confirmed_at_the_flows_end():
    """An asymmetric tap that sees only the client: its PSK ClientHello, then the pure ACKs it sends during a
    download, sequence numbers stepping by one, the server never seen."""
    acks = [(0, app_data(1 + i, 52)) for i in range(20)]
    assert run([(0, client_hello(PSK, SID))] + acks).state is State.CANDIDATE  # not before the end
    d = finish([(0, client_hello(PSK, SID))] + acks)
    assert d.state is State.CONFIRMED and d.confidence == 0.6 and d.attributes["one_way"] == "true"
    assert "one direction only" in d.evidence[-1]


@pytest.mark.parametrize("packets", [
    [(0, app_data(1 + i, 52)) for i in range(12)],  # too few steps for one direction alone
    [(0, app_data(1 + 3 * i, 52)) for i in range(30)],  # sequence numbers that jump
    [(0, app_data(1 + i, [52, 300, 1200, 27, 640][i % 5])) for i in range(60)],  # sizes of no tunnel
    [(0, client_hello(PSK, SID))] + [(0, app_data(1 + i, 52)) for i in range(20)] + [(1, os.urandom(60))],
])
def test_one_direction_without_a_tunnels_structure_is_not_confirmed(packets):
    assert finish(packets).state is not State.CONFIRMED
