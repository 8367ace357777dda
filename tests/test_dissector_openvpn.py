"""OpenVPN dissector on handshakes, TCP framing, mid-flow data and look-alike protocols (bytes built here)."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vpnbytes_openvpn import (
    CLIENT,
    SERVER,
    Session,
    TcpStreams,
    client_hello,
    data_v1,
    data_v2,
    framed,
    udp_packets,
)
from vpnid.features.dissectors.base import FlowPacket, State
from vpnid.features.dissectors.openvpn import (
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_SERVER_V2,
    P_CONTROL_V1,
    OpenVPN,
    PduWalker,
    _chain_start,
    _fits,
)

WRAPS = ["plain", "md5", "sha1", "sha256", "sha512", "tls-crypt"]


def run(packets: list[FlowPacket]) -> OpenVPN:
    d = OpenVPN()
    for p in packets:
        d.feed(p)
    if d.state is State.CANDIDATE:
        d.on_end()
    return d


def handshake_packets(session: Session, tcp: bool, **kw: object) -> list[FlowPacket]:
    items = session.handshake(**kw)  # type: ignore[arg-type]
    return TcpStreams().one_pdu_each(items) if tcp else udp_packets(items)


# -- handshakes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("wrap", WRAPS)
def test_handshake_confirmed_for_every_wrapping(wrap: str, tcp: bool) -> None:
    s = Session(wrap, seed=7)
    d = run(handshake_packets(s, tcp))
    assert d.state is State.CONFIRMED
    assert d.confidence == pytest.approx(0.99)
    assert d.attributes["transport"] == ("tcp" if tcp else "udp")
    text = " ".join(d.evidence)
    if wrap == "tls-crypt":
        # ACKs are encrypted: both resets plus one more packet per side with the same session IDs
        assert d.verdict_packet == 5 and d.attributes["variant"] == "tls-crypt"
        assert s.sids[CLIENT][:4].hex() in text and "replay packet-ids rising [1, 2, 3] / [1, 2]" in text
    else:
        # the server reset's ACK names the client's session ID: decided on packet 2
        assert d.verdict_packet == 2
        assert f"peer's session {s.sids[CLIENT][:4].hex()}" in text
        assert d.attributes["variant"] == ("plain" if wrap == "plain" else "tls-auth")
        assert d.attributes.get("hmac") == (None if wrap == "plain" else wrap)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_tls_crypt_v2_client_reset_with_wrapped_key(tcp: bool) -> None:
    s = Session("tls-crypt", seed=3)
    d = run(handshake_packets(s, tcp, v3=True))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.99)
    assert d.attributes["variant"] == "tls-crypt-v2"
    assert "P_CONTROL_HARD_RESET_CLIENT_V3" in " ".join(d.evidence)


@pytest.mark.parametrize("wrap, v3", [("tls-crypt", True), ("sha256", False)])
def test_openvpn_26_client_replay_ids_from_early_negotiation_start(wrap: str, v3: bool) -> None:
    """A 2.6 client that supports early negotiation counts its replay packet-ids from 0x0f000001."""
    s = Session(wrap, seed=11)
    s.replay[CLIENT] = 0x0F000000
    d = run(handshake_packets(s, False, v3=v3))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.99)
    s = Session(wrap, seed=11)
    s.replay[CLIENT] = 0x1E000000  # anywhere else that high is not a packet-id
    assert run(handshake_packets(s, False, v3=v3)).state is State.REJECTED


def test_client_reset_with_early_negotiation_tlv() -> None:
    tlv = struct.pack(">HHHHH", 0x0F00, 6, 0x0001, 2, 0x0001)
    d = run(handshake_packets(Session("sha256", seed=5), False, reset_tlv=tlv))
    assert d.state is State.CONFIRMED and d.verdict_packet == 2 and d.attributes["hmac"] == "sha256"


def test_reset_with_trailing_garbage_is_not_a_reset() -> None:
    s = Session("plain", seed=5)
    items = s.handshake(reset_tlv=b"\x0f\x00\x00\x09abc")  # TLV claims 9 bytes, carries 3
    d = run(udp_packets(items[:1]))
    assert d.state is State.REJECTED and "fits no OpenVPN control-channel layout" in d.evidence[-1]


def test_capture_starting_mid_handshake_confirms_at_lower_confidence() -> None:
    s = Session("sha1", seed=11)
    items = s.handshake()[3:]  # resets and first ACK not captured: starts with the client's TLS flight
    d = run(udp_packets(items))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9)
    assert d.verdict_packet == 2 and "handshake partly before capture" in d.evidence


@pytest.mark.parametrize("side", [CLIENT, SERVER])
def test_one_direction_handshake_with_tls_record(side: int) -> None:
    """Asymmetric routing: only one side's packets exist, but they carry a TLS record and steady ACKs."""
    s = Session("plain", seed=13)
    mine = [p for d, p in s.handshake() if d == side]
    d = run(udp_packets([(0, p) for p in mine]))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9)
    assert "one direction only" in d.evidence[0] and s.sids[1 - side][:4].hex() in d.evidence[1]


def test_one_way_resets_only_are_rejected() -> None:
    s = Session("sha1", seed=17)
    resets = [(0, s.packet(CLIENT, P_CONTROL_HARD_RESET_CLIENT_V2, resend=i > 0)) for i in range(6)]
    for _, p in resets:  # retransmitted resets keep message id 0 but take new replay ids
        assert p[-4:] == b"\x00\x00\x00\x00"
    d = run(udp_packets(resets))
    assert d.state is State.REJECTED and "both directions" in d.evidence[-1]


def test_reset_of_quic_size_is_rejected() -> None:
    s = Session("plain", seed=19)
    big = s.packet(CLIENT, P_CONTROL_HARD_RESET_CLIENT_V2, payload=struct.pack(">HH", 1, 1200) + bytes(1200))
    d = run(udp_packets([(0, big)]))
    assert d.state is State.REJECTED and "QUIC-sized" in d.evidence[-1]


def test_session_id_change_rejects() -> None:
    a, b = Session("plain", seed=1), Session("plain", seed=2)
    items = [(0, a.packet(CLIENT, P_CONTROL_HARD_RESET_CLIENT_V2)), (0, b.packet(CLIENT, P_ACK_V1, acks=(0,)))]
    d = run(udp_packets(items))
    assert d.state is State.REJECTED and "session ID changed" in d.evidence[-1]


# -- TCP framing ----------------------------------------------------------------------------------------


def test_tcp_two_pdus_in_one_segment_and_one_pdu_over_two_segments() -> None:
    s = Session("sha1", seed=23)
    items = s.handshake()
    t = TcpStreams(opened=True)  # a connection seen from its SYN: its first segment starts a packet
    cr = framed(items[0][1])
    sr = framed(items[1][1])
    packets = [
        t.segment(CLIENT, cr[:5]),  # client reset split in two
        t.segment(CLIENT, cr[5:]),
        t.segment(SERVER, sr + framed(items[4][1])[:7]),  # server reset + head of its next packet
    ]
    d = run(packets)
    assert d.state is State.CONFIRMED and d.verdict_packet == 3
    assert f"peer's session {s.sids[CLIENT][:4].hex()}" in d.evidence[0]


def test_tcp_retransmission_is_skipped() -> None:
    s = Session("plain", seed=29)
    items = s.handshake()
    t = TcpStreams()
    first = t.segment(CLIENT, framed(items[0][1]))
    again = t.segment(CLIENT, first.payload, seq=first.tcp_seq)  # same bytes, same seq
    d = run([first, again, t.segment(SERVER, framed(items[1][1]))])
    assert d.state is State.CONFIRMED and d.verdict_packet == 3


def test_pdu_walker_follows_lengths_and_stops_after_gap() -> None:
    w = PduWalker()
    assert w.push(100, b"\x00\x03abc\x00\x02x") == [b"abc"]
    assert w.push(108, b"y\x00\x01") == [b"xy"]
    assert w.push(100, b"\x00\x03abc\x00\x02xy\x00\x01z") == [b"z"]  # retransmission with one new byte
    assert w.push(200, b"\x00\x01q") == [] and w.broken  # gap: the framing is lost
    assert w.push(114, b"\x00\x01q") == []


@pytest.mark.parametrize("lost", [0, 6])
def test_tcp_gap_stops_the_walker(lost: int) -> None:
    """A lost segment inside the server reset: the rest of that stream is not trusted (no echo seen)."""
    s = Session("plain", seed=31)
    items = s.handshake()
    t = TcpStreams()
    server = framed(items[1][1])
    packets = [t.segment(CLIENT, framed(items[0][1])), t.segment(SERVER, server[:10])]
    t.seq[SERVER] += lost
    packets.append(t.segment(SERVER, server[10 + lost :]))
    d = run(packets)
    assert d.state is (State.REJECTED if lost else State.CONFIRMED)


# -- mid-flow data ---------------------------------------------------------------------------------------


def _data_flow(server_v1: bool = False, server_peer: int = 0x21, start: int = 5000) -> list[FlowPacket]:
    rng = random.Random(37)
    items = []
    for i in range(4):
        items.append((0, data_v2(0x21, start + i, rng.randrange(40, 1300), rng)))
        server = data_v1(900 + i, 60, rng) if server_v1 else data_v2(server_peer, 900 + i, 60, rng)
        items.append((1, server))
    return udp_packets(items)


def test_mid_flow_data_v2_both_ways() -> None:
    d = run(_data_flow())
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9)
    assert d.verdict_packet == 5 and d.attributes["peer_id"] == "000021"  # 3 packets one way, 2 the other
    assert "peer-id 0x000021 both ways" in d.evidence[0] and "5000..5002 / 900..901" in d.evidence[1]


def test_mid_flow_bulk_with_a_quiet_direction() -> None:
    """A download: the server's data packets stream while the client's side sends two (its TCP ACKs
    carry no payload)."""
    rng = random.Random(5)
    items = [(1, data_v2(0x21, 900 + i, 1300, rng)) for i in range(6)] + [(0, data_v2(0x21, 40 + i, 60, rng))
                                                                           for i in range(2)]
    assert run(udp_packets(items)).state is State.CONFIRMED
    assert run(udp_packets(items[:6] + items[7:])).state is State.REJECTED  # one packet back: not enough


@pytest.mark.parametrize("back_peer, confirmed", [(0x21, True), (0x22, False)])
def test_mid_flow_long_bulk_run_needs_one_packet_back(back_peer: int, confirmed: bool) -> None:
    """A UDP download seen mid-flow whose client acknowledged once within the budget: ten server packets
    stepping by one, and one client packet under the same key and peer-id (not another peer's)."""
    rng = random.Random(6)
    items = [(1, data_v2(0x21, 900 + i, 1400, rng)) for i in range(10)] + [(0, data_v2(back_peer, 40, 60, rng))]
    assert (run(udp_packets(items)).state is State.CONFIRMED) is confirmed


def test_mid_flow_data_v2_client_v1_server() -> None:
    d = run(_data_flow(server_v1=True))
    assert d.state is State.CONFIRMED and d.attributes["data"] == "P_DATA_V1+P_DATA_V2"


def test_mid_flow_different_peer_ids_are_not_openvpn() -> None:
    d = run(_data_flow(server_peer=0x22))
    assert d.state is State.REJECTED


def test_mid_flow_over_tcp() -> None:
    t = TcpStreams()
    d = run([t.segment(p.direction, framed(p.payload)) for p in _data_flow()])
    assert d.state is State.CONFIRMED and d.attributes["transport"] == "tcp"


def _bulk_mid_flow(rng: random.Random, mss: int = 1448) -> tuple[bytes, bytes]:
    """The two byte streams of a TCP tunnel seen from its middle: a download of 1452-byte framed data
    packets (server), small framed ACK-carrying packets (client), each started inside a packet."""
    server = b"".join(framed(data_v2(0, 300 + i, 1450 - 5, rng)) for i in range(40))
    client = b"".join(framed(data_v2(0, 90 + i, 76 - 5, rng)) for i in range(12))
    return server[rng.randrange(1, 1400):], client[rng.randrange(1, 70):]


def _bulk_mid_flow_segments(seed: int) -> list[FlowPacket]:
    """`_bulk_mid_flow` as segments: the download in full 1448-byte segments, the client's in 78-byte
    ones, interleaved while both last."""
    server, client = _bulk_mid_flow(random.Random(seed))
    t = TcpStreams()
    down = t.stream(SERVER, server, 1448)
    up = [t.segment(CLIENT, client[i : i + 78]) for i in range(0, len(client), 78)]
    return [p for pair in zip(down[:12], up) for p in pair] + down[12:]


@pytest.mark.parametrize("seed", range(6))
def test_tcp_joined_mid_flow_resyncs_on_packet_boundaries(seed: int) -> None:
    """A capture that starts inside a bulk download: no segment of the saturated direction need start
    a packet; two packets following each other across two segments give the walk its start."""
    d = run(_bulk_mid_flow_segments(seed))
    assert d.state is State.CONFIRMED and d.attributes["mid_flow"] == "true"
    assert d.evidence[0].startswith("P_DATA_V2 both ways")


def _control(opcode: int, sid: bytes, rng: random.Random) -> bytes:
    return bytes([opcode << 3]) + sid + rng.randbytes(24)


def test_mid_flow_sync_start_needs_two_packets_of_one_sender() -> None:
    """Where a mid-flow direction is walked from (`_chain_start`, compiled): a whole packet from its first
    byte; else the first offset where a packet is followed by another of the same key and peer-id, data
    packet-id a little higher, or control session ID, the chain running to the end of the bytes."""
    rng = random.Random(5)
    junk = b"\xff" * 7  # a length prefix of 0xffff fits no packet
    sid, other = rng.randbytes(8), rng.randbytes(8)
    assert _chain_start(framed(data_v2(7, 10, 60, rng))) == 0
    assert _chain_start(junk + framed(data_v2(7, 10, 60, rng)) + framed(data_v2(7, 11, 90, rng))) == len(junk)
    assert _chain_start(junk + framed(data_v2(7, 10, 60, rng)) + framed(data_v2(8, 11, 90, rng))) is None
    for step, found in ((1, True), (64, True), (0, False), (65, False)):
        b = junk + framed(data_v1(1000, 60, rng)) + framed(data_v1(1000 + step, 80, rng))
        assert _chain_start(b) == (len(junk) if found else None), step
    two = junk + framed(_control(P_ACK_V1, sid, rng)) + framed(_control(P_CONTROL_V1, sid, rng))
    assert _chain_start(two) == len(junk)
    assert _chain_start(two + b"\x00") == len(junk)  # a byte of the next length prefix
    assert _chain_start(two + b"\x00\x01\x00") is None  # a next header that fits no packet: no chain
    assert _chain_start(junk + framed(_control(P_ACK_V1, sid, rng)) + framed(_control(P_CONTROL_V1, other, rng))) is None
    assert _chain_start(junk + framed(data_v2(7, 10, 60, rng)) + framed(_control(P_ACK_V1, sid, rng))) is None


def test_tcp_seen_to_open_does_not_resync() -> None:
    """The same bytes on a connection whose SYN was seen: it must start with a packet, so it is not one."""
    server, client = _bulk_mid_flow(random.Random(3))
    t = TcpStreams(opened=True)
    d = run([t.segment(CLIENT, client[:78]), *t.stream(SERVER, server, 1448)])
    assert d.state is State.REJECTED and d.seen == 1


@pytest.mark.parametrize("kind", ["tls", "ssh", "http2", "random"])
def test_tcp_look_alikes_joined_mid_flow_are_not_openvpn(kind: str) -> None:
    """Mid-flow streams of other protocols, each direction cut at arbitrary points: never confirmed."""
    rng = random.Random(kind)
    streams = []
    for _ in range(2):
        if kind == "tls":  # application-data records of varied sizes
            body = b"".join(b"\x17\x03\x03" + (n := rng.randrange(30, 16401)).to_bytes(2, "big") + rng.randbytes(n)
                            for _ in range(30))
        elif kind == "ssh":  # binary packets: 4-byte length, padding length, encrypted body
            body = b"".join((n := rng.randrange(12, 4000)).to_bytes(4, "big") + rng.randbytes(n) for _ in range(60))
        elif kind == "http2":  # frames: 3-byte length, type, flags, stream id
            body = b"".join((n := rng.randrange(0, 16384)).to_bytes(3, "big") + bytes([0, 0]) + (1).to_bytes(4, "big")
                            + rng.randbytes(n) for _ in range(40))
        else:
            body = rng.randbytes(200_000)
        streams.append(body[rng.randrange(1, 2000):])
    t = TcpStreams()
    packets = []
    for i in range(60):
        side = i % 2
        n = rng.choice((1448, 1448, rng.randrange(1, 1448)))
        packets.append(t.segment(side, streams[side][:n]))
        streams[side] = streams[side][n:]
    assert run(packets).state is State.REJECTED


# -- look-alikes -----------------------------------------------------------------------------------------


def _quic_short(rng: random.Random, dcid: bytes, first: int | None = None) -> bytes:
    b0 = first if first is not None else 0x40 | rng.randrange(32)  # header protection masks 5 bits
    return bytes([b0]) + dcid + rng.randbytes(rng.randrange(30, 1200))


@pytest.mark.parametrize("fixed_first_byte", [None, 0x48])
def test_quic_short_headers_both_ways_rejected(fixed_first_byte: int | None) -> None:
    """Constant DCID per direction is QUIC's own 'peer-id'; it differs between directions."""
    rng = random.Random(41)
    cid_c, cid_s = rng.randbytes(8), rng.randbytes(8)
    items = [(i % 2, _quic_short(rng, cid_c if i % 2 == 0 else cid_s, fixed_first_byte)) for i in range(20)]
    assert run(udp_packets(items)).state is State.REJECTED


def test_quic_initial_rejected_on_first_packet() -> None:
    rng = random.Random(43)
    initial = b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x00\x00\x44\xd0" + rng.randbytes(1180)
    d = run(udp_packets([(0, initial)]))
    assert d.state is State.REJECTED and d.seen == 1


def test_dtls_client_hello_rejected() -> None:
    rec = b"\x16\xfe\xfd" + bytes(8) + struct.pack(">H", 60) + b"\x01" + bytes(59)
    d = run(udp_packets([(0, rec), (1, b"\x16\xfe\xff" + rec[3:])]))
    assert d.state is State.REJECTED and d.seen == 1


def _stun(msg_type: int, rng: random.Random) -> bytes:
    return struct.pack(">HHI", msg_type, 8, 0x2112A442) + rng.randbytes(12) + b"\x80\x22\x00\x04test"


def test_stun_binding_rejected() -> None:
    rng = random.Random(47)
    d = run(udp_packets([(0, _stun(0x0001, rng)), (1, _stun(0x0101, rng))]))
    assert d.state is State.REJECTED and d.seen == 1


def test_stun_magic_cookie_rejects_even_with_a_reset_opcode() -> None:
    odd = b"\x38\x00\x00\x00" + struct.pack(">I", 0x2112A442) + bytes(20)
    d = run(udp_packets([(0, odd)]))
    assert d.state is State.REJECTED and "STUN" in d.evidence[-1]


def _dns(txid: int, response: bool) -> bytes:
    flags = 0x8180 if response else 0x0100
    q = b"\x07example\x03com\x00\x00\x01\x00\x01"
    ans = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\x5d\xb8\xd8\x22" if response else b""
    return struct.pack(">HHHHHH", txid, flags, 1, int(response), 0, 0) + q + ans


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_queries_and_responses_rejected(tcp: bool) -> None:
    """Transaction IDs chosen so byte 0 reads as resets, ACKs and data opcodes."""
    items = []
    for txid in (0x3800, 0x3801, 0x4000, 0x4801, 0x2800, 0x2000):
        items += [(0, _dns(txid, False)), (1, _dns(txid, True))]
    t = TcpStreams()
    packets = [t.segment(dr, framed(p)) for dr, p in items] if tcp else udp_packets(items)
    assert run(packets).state is State.REJECTED


def test_one_way_dns_queries_not_confirmed() -> None:
    items = [(0, _dns(0x3800 + i, False)) for i in range(10)]
    assert run(udp_packets(items)).state is State.REJECTED


def test_rtp_rejected() -> None:
    rng = random.Random(53)
    items = [(i % 2, struct.pack(">BBHII", 0x80, 0x60, i, 160 * i, 0xDEADBEEF) + rng.randbytes(160)) for i in range(6)]
    d = run(udp_packets(items))
    assert d.state is State.REJECTED and d.seen == 1


@pytest.mark.parametrize(
    "client, server",
    [
        (client_hello(random.Random(1), 512), b"\x16\x03\x03\x00\x5a\x02" + bytes(89)),
        (b"SSH-2.0-OpenSSH_9.6\r\n", b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3\r\n"),
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
    ids=["tls", "ssh", "http"],
)
def test_tcp_text_and_tls_rejected_on_first_segment(client: bytes, server: bytes) -> None:
    t = TcpStreams(opened=True)
    d = run([t.segment(CLIENT, client), t.segment(SERVER, server)])
    assert d.state is State.REJECTED and d.seen == 1


def test_random_bytes_of_all_sizes_never_confirmed() -> None:
    rng = random.Random(59)
    for size in range(1, 1500, 7):
        items = [(rng.randrange(2), rng.randbytes(size)) for _ in range(12)]
        assert run(udp_packets(items)).state is State.REJECTED, size


def test_random_bytes_behind_openvpn_first_bytes_never_confirmed() -> None:
    """The hard case: valid-looking opcodes, random everything else, both directions."""
    rng = random.Random(61)
    firsts = [0x38, 0x40, 0x28, 0x20, 0x48, 0x30, 0x50, 0x58]
    for _ in range(300):
        items = [(i % 2, bytes([rng.choice(firsts)]) + rng.randbytes(rng.randrange(13, 300))) for i in range(12)]
        assert run(udp_packets(items)).state is not State.CONFIRMED


def test_ack_and_control_opcodes_parse_consistently() -> None:
    """Sanity for the builders: the sizes the notes derive for plain packets."""
    s = Session("plain", seed=67)
    assert len(s.packet(CLIENT, P_CONTROL_HARD_RESET_CLIENT_V2)) == 14
    assert len(s.packet(SERVER, P_CONTROL_HARD_RESET_SERVER_V2, acks=(0,))) == 26
    assert len(s.packet(CLIENT, P_ACK_V1, acks=(0,))) == 22
    assert Session("sha1").packet(CLIENT, P_CONTROL_V1)[0] == 0x20


# -- robustness -----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.binary(min_size=1, max_size=120), st.integers(0, 2**32 - 1)), max_size=20),
    st.booleans(),
)
def test_never_raises_on_random_or_truncated_payloads(packets: list[tuple[int, bytes, int]], tcp: bool) -> None:
    s = Session("sha1", seed=71)
    real = [(d, p[: len(p) // 2]) for d, p in s.handshake()]  # truncated real packets mixed in
    d = OpenVPN()
    for i, (direction, payload, seq) in enumerate(packets + [(a, b, 0) for a, b in real], 1):
        d.feed(FlowPacket(i, direction, 0.0, payload, seq if tcp else 0, 0x18 if tcp else 0, 6 if tcp else 17))
    if d.state is State.CANDIDATE:
        d.on_end()
    assert d.state is not State.CANDIDATE


def test_one_way_acks_of_own_session_are_not_a_handshake() -> None:
    s = Session("plain", seed=73)
    s.sids = (s.sids[CLIENT], s.sids[CLIENT])  # a sender "acknowledging" itself is echoing, not OpenVPN
    mine = [p for d, p in s.handshake() if d == CLIENT]
    assert run(udp_packets([(0, p) for p in mine])).state is State.REJECTED


# -- short sessions through the flow table ---------------------------------------------------------------


@pytest.mark.parametrize("server_restart", [0, 0x0F000000, None], ids=["cookie", "cookie-early-neg", "stateful"])
def test_short_tls_crypt_v2_session_over_ipv6_is_decided_by_its_handshake(server_restart: int | None) -> None:
    """13 packets, no data: the handshake alone decides (the model's 20-packet minimum does not apply)."""
    from tests.flowbuild import P, table
    from tests.vpnbytes_openvpn import tls_crypt_v2_session
    from vpnid.features.dissectors.catalog import ALL
    from vpnid.features.flows import FlowTable, FlowTableConfig

    items = tls_crypt_v2_session(server_restart=server_restart)
    assert len(items) == 13
    client, server = "2001:db8::10", "2001:db8:1::1194"
    pkts = [P(1.0 + i / 50, *((client, server, 50123, 1194) if d == CLIENT else (server, client, 1194, 50123)),
              17, 0, b) for i, (d, b) in enumerate(items)]
    ft = FlowTable(list(ALL), FlowTableConfig())
    ft.add(table(pkts))
    (flow,) = ft.close()
    assert flow.total_packets == 13
    assert flow.verdict is not None and flow.verdict.family == "openvpn"
    assert flow.verdict.confidence == pytest.approx(0.99)
    assert flow.verdict.attributes["variant"] == "tls-crypt-v2"


# -- mid-flow tls-auth / tls-crypt data, and one direction only -----------------------------------------


def _interleave(a: list[bytes], b: list[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for i in range(max(len(a), len(b))):
        out += [(0, a[i])] if i < len(a) else []
        out += [(1, b[i])] if i < len(b) else []
    return out


@pytest.mark.parametrize("hmac, block", [(32, 16), (20, 16), (20, 8), (64, 16)], ids=["sha256", "sha1", "sha1-bf", "sha512"])
@pytest.mark.parametrize("peer", [None, 0x000005], ids=["v1", "v2"])
def test_mid_flow_tls_auth_cbc_data_both_ways(hmac: int, block: int, peer: int | None) -> None:
    """tls-auth era data channel (AES-256-CBC / BF-CBC + HMAC): the packet-id is encrypted, the layout fits."""
    from tests.vpnbytes_openvpn import data_cbc
    rng = random.Random(hmac + block)
    up = [data_cbc(rng.randrange(40, 1300), rng, hmac, block, peer) for _ in range(6)]
    down = [data_cbc(rng.randrange(40, 200), rng, hmac, block, peer) for _ in range(6)]
    d = run(udp_packets(_interleave(up, down)))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.8)
    assert d.attributes["cipher"] == "cbc" and d.attributes["mid_flow"] == "true"
    if hmac == 32 and block == 16:
        assert "SHA256" in d.evidence[1]  # MD5, SHA256 and SHA512 sizes all fit a 16-byte grid alike


def test_mid_flow_tls_crypt_aead_data_with_large_packet_ids() -> None:
    """A tls-crypt session long after its handshake: AEAD packet-ids far past 2^24, still rising."""
    rng = random.Random(3)
    up = [data_v2(7, 40_000_000 + i, rng.randrange(40, 1300), rng) for i in range(4)]
    down = [data_v2(7, 90_000_000 + i, 60, rng) for i in range(4)]
    d = run(udp_packets(_interleave(up, down)))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9)


def test_cbc_rule_needs_a_varied_encrypted_body() -> None:
    from tests.vpnbytes_openvpn import data_cbc
    rng = random.Random(9)
    same = [data_cbc(100, rng) for _ in range(6)]  # one size: fits any grid by luck
    assert run(udp_packets(_interleave(same, same))).state is not State.CONFIRMED
    clear = [b"\x30" + bytes(32 + 16 * rng.randrange(2, 20)) for _ in range(6)]  # zeros: cleartext
    assert run(udp_packets(_interleave(clear, clear[::-1]))).state is not State.CONFIRMED
    off_grid = [b"\x30" + rng.randbytes(rng.randrange(60, 1300)) for _ in range(12)]
    assert run(udp_packets(_interleave(off_grid[:6], off_grid[6:]))).state is not State.CONFIRMED


@pytest.mark.parametrize("side", [0, 1])
def test_one_direction_aead_data_confirms_at_lower_confidence(side: int) -> None:
    rng = random.Random(11)
    items = [(side, data_v2(0x12, 7000 + i, rng.randrange(40, 1300), rng)) for i in range(16)]
    d = run(udp_packets(items))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.7)
    assert d.attributes["one_way"] == "true" and "one direction only" in d.evidence[0]
    d = run(udp_packets(items[:9]))  # the flow ends after 9: decided at its end
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.7)
    assert run(udp_packets(items[:5])).state is State.REJECTED


def test_bulk_one_side_first_then_the_other_is_still_two_way() -> None:
    rng = random.Random(12)
    items = [(1, data_v2(0x12, 900 + i, 1300, rng)) for i in range(12)] + [(0, data_v2(0x12, 40 + i, 60, rng))
                                                                            for i in range(3)]
    d = run(udp_packets(items))
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9)


def test_one_way_look_alikes_are_not_openvpn() -> None:
    from tests.vpnbytes_wg_ipsec import quic_short, rtp, stun_binding
    rng = random.Random(13)
    dcid = rng.randbytes(8)
    assert run(udp_packets([(0, quic_short(dcid, rng.randrange(50, 1300))) for _ in range(16)])).state is State.REJECTED
    assert run(udp_packets([(0, rtp(100 + i, 160 * i, 0xABCDEF, 172)) for i in range(16)])).state is State.REJECTED
    assert run(udp_packets([(0, stun_binding()) for _ in range(16)])).state is State.REJECTED
    dns = [(0, _dns(4000 + i, False)) for i in range(16)]
    assert run(udp_packets(dns)).state is State.REJECTED
    # a counter at offset 1 stepping by one, but a cleartext body
    clear = [(0, b"\x30" + struct.pack(">I", 50 + i) + bytes(100)) for i in range(16)]
    assert run(udp_packets(clear)).state is State.REJECTED


def test_compiled_first_packet_check_agrees_with_the_reasons_it_stands_for() -> None:
    """`_fits` (first-byte tables, compiled: the prefilter and the mid-flow TCP resync) is the yes/no form of
    `_bad_start` + `_bad_size` (which say why), the STUN cookie aside: the two must never drift apart."""
    d = OpenVPN()
    d._tcp = False
    sizes = np.array([0, 1, 8, 9, 13, 14, 15, 16, 20, 24, 25, 28, 29, 40, 41, 60, 100, 1199, 1200, 1500, 9000])
    firsts = np.repeat(np.arange(256), len(sizes))
    tiled = np.tile(sizes, 256)
    expected = [d._bad_start(bytes([f]) + bytes(8)) is None and d._bad_size(int(s), f >> 3) is None
                for f, s in zip(firsts.tolist(), tiled.tolist())]
    assert _fits(firsts, tiled).tolist() == expected


def _through_table(packets: list[FlowPacket], prefilter: bool = True) -> tuple[object, int]:
    """Run TCP segments (client = direction 0) through a flow table with every dissector: the flow, and
    how many OpenVPN dissectors were built for it."""
    from tests.flowbuild import P, table
    from vpnid.features.dissectors.catalog import ALL
    from vpnid.features.flows import FlowTable, FlowTableConfig

    built = []
    original = OpenVPN.__init__

    def init(self: OpenVPN) -> None:
        built.append(self)
        original(self)

    a, b = "198.18.0.1", "198.18.0.2"
    pkts = [P(p.ts, *((a, b, 40000, 443) if p.direction == CLIENT else (b, a, 443, 40000)), 6, p.tcp_flags,
              p.payload, p.tcp_seq) for p in packets]
    OpenVPN.__init__ = init
    try:
        ft = FlowTable(list(ALL), FlowTableConfig(prefilter=prefilter))
        ft.add(table(pkts))
        (flow,) = ft.close()
    finally:
        OpenVPN.__init__ = original
    return flow, len(built)


@pytest.mark.parametrize("seed", range(3))
def test_a_mid_flow_first_segment_without_a_chain_defers_the_dissector_to_the_next(seed: int) -> None:
    """Joined mid-flow, a first segment in which no chain of packets starts does not build the OpenVPN
    dissector; the next segment does, fed both, and the resync that needs the two segments joined gives
    the same verdict, evidence and verdict packet as a run with every dissector built from the start."""
    packets = _bulk_mid_flow_segments(seed)
    assert _chain_start(packets[0].payload) is None  # the case under test: the first segment alone cannot sync
    fast, built = _through_table(packets)
    forced, _ = _through_table(packets, prefilter=False)
    assert built == 1 and fast.verdict is not None and fast.verdict.family == "openvpn"
    assert (fast.verdict.evidence, fast.verdict.packet) == (forced.verdict.evidence, forced.verdict.packet)


def test_a_lone_mid_flow_segment_gets_the_dissector_only_if_a_chain_starts_in_it() -> None:
    """A one-segment flow joined mid-flow: noise builds no OpenVPN dissector, a segment holding two packets
    of one sender does; a second segment after noise always builds it."""
    rng = random.Random(3)
    t = TcpStreams()
    noise = t.segment(CLIENT, rng.randbytes(900))
    assert _chain_start(noise.payload) is None
    two = b"\xff" * 5 + framed(data_v2(7, 10, 60, rng)) + framed(data_v2(7, 11, 90, rng))
    chained = TcpStreams().segment(CLIENT, two)
    assert [_through_table([p])[1] for p in (noise, chained)] == [0, 1]
    flow, built = _through_table([noise, t.segment(CLIENT, rng.randbytes(300))])
    assert built == 1 and flow.verdict is None  # the second segment always passes: joined, it may sync
