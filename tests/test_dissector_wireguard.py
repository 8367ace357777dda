"""WireGuard dissector on handshakes, cookie replies, mid-flow transport data, blocked tunnels and
look-alikes, all built from the message layout of the whitepaper (§5.4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR

from tests import vpnbytes_wg_ipsec as b
from vpnid.features.dissectors.base import HEAD_BYTES, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.wireguard import WireGuard

INIT, RESP = 0x30D037D8, 0xAB7DF406


def test_handshake_response_echoing_the_sender_index_confirms_at_the_response() -> None:
    d = WireGuard()
    state = b.run(d, [(0, 0.0, b.wg_initiation(INIT)), (1, 0.01, b.wg_response(RESP, INIT))])
    assert state is State.CONFIRMED and d.confidence >= 0.99
    assert d.verdict_packet == 2
    assert f"{INIT:08x}" in d.evidence[-1] and "148 B" in d.evidence[-1] and "92 B" in d.evidence[-1]


def test_cookie_reply_to_an_initiation_confirms() -> None:
    d = WireGuard()
    assert b.run(d, [(0, 0.0, b.wg_initiation(INIT)), (1, 0.01, b.wg_cookie(INIT))]) is State.CONFIRMED
    assert d.verdict_packet == 2 and "cookie reply 64 B" in d.evidence[-1]


def test_tunnelbear_handshake_sizes_are_a_variant() -> None:
    d = WireGuard()
    state = b.run(d, [(0, 0.0, b.wg_initiation(INIT, 204)), (1, 0.01, b.wg_response(RESP, INIT, 100))])
    assert state is State.CONFIRMED and d.attributes["variant"] == "tunnelbear"


def test_response_that_echoes_no_initiation_is_rejected() -> None:
    d = WireGuard()
    state = b.run(d, [(0, 0.0, b.wg_initiation(INIT)), (1, 0.01, b.wg_response(RESP, INIT ^ 1))])
    assert state is State.REJECTED and "matches no initiation" in d.evidence[-1]


def test_capture_starting_at_the_response_confirms_on_the_first_data_packet() -> None:
    d = WireGuard()
    packets = [(0, 0.0, b.wg_response(RESP, INIT)), (1, 0.01, b.wg_data(RESP, 0, 80))]
    assert b.run(d, packets) is State.CONFIRMED and d.confidence >= 0.99 and d.verdict_packet == 2


def mid_flow(start: tuple[int, int], n: int) -> list[tuple[int, float, bytes]]:
    """Transport data both ways from counters already in use; sizes vary, some are keepalives."""
    sizes = [1380, 52, 600, 0, 1380, 40, 0, 300]
    packets, counters = [], list(start)
    for i in range(n):
        direction = i % 2 if i > 1 else 0
        packets.append((direction, i * 0.02, b.wg_data((RESP, INIT)[direction], counters[direction], sizes[i % 8])))
        counters[direction] += 1
    return packets


def test_mid_flow_transport_data_both_ways_confirms_at_0_9() -> None:
    d = WireGuard()
    packets = mid_flow((107, 112), 12)
    assert b.run(d, packets) is State.CONFIRMED
    assert 0.85 <= d.confidence < 0.99 and d.attributes["mid_flow"] == "true"
    assert d.verdict_packet == 8  # third packet of the direction that started later (packets 4, 6, 8)
    assert f"{RESP:08x}" in d.evidence[-1] and f"{INIT:08x}" in d.evidence[-1]


def test_full_size_packets_padded_only_up_to_the_mtu_are_transport_data() -> None:
    """1420-byte inner packets at MTU 1420 are not padded to 1424: 1452-byte datagrams."""
    packets = [(i % 2, i * 0.01, b.wg_data((RESP, INIT)[i % 2], 50 + i // 2, (1420, 52, 1420, 600)[i % 4]))
               for i in range(10)]
    assert {len(p) for _, _, p in packets} >= {1452}
    assert b.run(WireGuard(), packets) is State.CONFIRMED


def test_two_sizes_off_the_padding_grid_in_one_direction_are_rejected() -> None:
    sizes = (1415, 600, 1417, 600)  # the initiator's side: two different "MTU-sized" packets
    packets = [(i % 2, i * 0.01, b.wg_data((RESP, INIT)[i % 2], 50 + i // 2, sizes[i], mtu=sizes[i]))
               for i in range(4)]
    d = WireGuard()
    assert b.run(d, packets) is State.REJECTED and "off the 32 + 16n grid" in d.evidence[-1]


def test_keepalives_alone_both_ways_confirm() -> None:
    d = WireGuard()
    packets = [(i % 2, 25.0 * i, b.wg_data((RESP, INIT)[i % 2], 40 + i // 2, 0)) for i in range(6)]
    assert all(len(p) == 32 for _, _, p in packets)
    assert b.run(d, packets) is State.CONFIRMED and d.verdict_packet == 6


def test_one_way_transport_data_confirms_at_lower_confidence() -> None:
    """Asymmetric tap: one side's transport data under one receiver index, counter stepping by one."""
    d = WireGuard()
    packets = [(0, 0.02 * i, b.wg_data(RESP, 500 + i, 200)) for i in range(40)]
    assert b.run(d, packets) is State.CONFIRMED and d.confidence == pytest.approx(0.7)
    assert d.attributes["one_way"] == "true" and d.verdict_packet == WireGuard.budget
    d = WireGuard()
    assert b.run(d, packets[:9]) is State.CONFIRMED  # decided when the flow ends
    assert b.run(WireGuard(), packets[:5]) is not State.CONFIRMED  # too short
    jumpy = [(0, 0.02 * i, b.wg_data(RESP, 500 + 3 * i, 200)) for i in range(40)]
    assert b.run(WireGuard(), jumpy) is not State.CONFIRMED


def test_counters_that_do_not_step_by_one_are_rejected() -> None:
    d = WireGuard()
    packets = [(i % 2, 0.01 * i, b.wg_data((RESP, INIT)[i % 2], b.RNG.randrange(1 << 20), 64)) for i in range(8)]
    assert b.run(d, packets) is State.REJECTED and "step by one" in d.evidence[-1]


def test_same_receiver_index_both_ways_is_rejected() -> None:
    d = WireGuard()
    packets = [(i % 2, 0.01 * i, b.wg_data(RESP, i // 2, 64)) for i in range(6)]
    assert b.run(d, packets) is State.REJECTED


def test_huge_counter_is_rejected() -> None:
    d = WireGuard()
    assert b.run(d, [(0, 0.0, b.wg_data(RESP, 1 << 40, 64))]) is State.REJECTED


def blocked(n: int, spacing: float, same_index: bool = False) -> list[tuple[int, float, bytes]]:
    return [(0, i * spacing, b.wg_initiation(INIT if same_index else INIT + i)) for i in range(n)]


def test_unanswered_initiations_on_the_rekey_timer_confirm_at_flow_end() -> None:
    d = WireGuard()
    assert b.run(d, blocked(4, 5.12)) is State.CONFIRMED
    assert 0.7 <= d.confidence < 0.9 and d.verdict_packet == 4 and "4 WireGuard initiations" in d.evidence[-1]


def test_many_unanswered_initiations_confirm_without_waiting_for_the_end() -> None:
    d = WireGuard()
    assert b.run(d, blocked(6, 5.2), end=False) is State.CONFIRMED and d.verdict_packet == 6


@pytest.mark.parametrize("packets", [blocked(5, 1.0), blocked(5, 5.1, same_index=True), blocked(2, 5.1)])
def test_initiations_without_the_retry_pattern_stay_unconfirmed(packets: list) -> None:
    d = WireGuard()
    assert b.run(d, packets) is not State.CONFIRMED


def dns_pair() -> list[tuple[int, float, bytes]]:
    query = DNS(id=0x0401, rd=1, qd=DNSQR(qname="example.org"))
    record = DNSRR(rrname="example.org", rdata="93.184.216.34")
    answer = DNS(id=0x0401, qr=1, rd=1, ra=1, qd=DNSQR(qname="example.org"), an=record)
    return [(0, 0.0, bytes(query)), (1, 0.02, bytes(answer))]


LOOKALIKES = {
    "quic": [(0, 0.0, b.quic_initial(b.rnd(8))), (1, 0.05, b.quic_short(b.rnd(8), 300))],
    "dtls": [(0, 0.0, b.dtls_record(22, 0xFEFD, 0, 0, 180)), (1, 0.03, b.dtls_record(22, 0xFEFD, 0, 0, 90))],
    "stun": [(0, 0.0, b.stun_binding()), (1, 0.03, b.stun_binding(response=True))],
    "dns": dns_pair(),
    "rtp": [(0, 0.02 * i, b.rtp(4000 + i, 160 * i, 0x04000000, 172)) for i in range(10)],
    "game": [(i % 2, 0.05 * i, b.game(0x04000000 + i % 2, i // 2, 48)) for i in range(10)],
    "random": [(i % 2, 0.01 * i, b.rnd(n)) for i, n in enumerate([148, 92, 64, 32, 48, 1200, 17, 3])],
}


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_lookalikes_are_rejected_on_their_first_packet(name: str) -> None:
    d = WireGuard()
    assert b.run(d, LOOKALIKES[name]) is State.REJECTED and d.seen == 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.binary(min_size=1, max_size=220)), min_size=1, max_size=40))
def test_never_raises_on_random_payloads(packets: list[tuple[int, bytes]]) -> None:
    d = WireGuard()
    b.run(d, [(direction, float(i), p) for i, (direction, p) in enumerate(packets)])
    assert d.state in (State.CANDIDATE, State.CONFIRMED, State.REJECTED)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3), st.integers(1, 160)), min_size=1, max_size=20))
def test_never_raises_on_truncated_messages(cuts: list[tuple[int, int, int]]) -> None:
    whole = [b.wg_initiation(INIT), b.wg_response(RESP, INIT), b.wg_cookie(INIT), b.wg_data(RESP, 3, 40)]
    d = WireGuard()
    b.run(d, [(direction, 5.0 * i, whole[kind][:cut]) for i, (direction, kind, cut) in enumerate(cuts)])
    assert d.state in (State.CANDIDATE, State.CONFIRMED, State.REJECTED)


def test_budget_bounds_the_work() -> None:
    d = WireGuard()
    for i in range(WireGuard.budget + 5):  # initiations 1 s apart: neither answered nor on the 5 s timer
        d.feed(FlowPacket(i + 1, 0, float(i), b.wg_initiation(1000 + i)))
    assert d.state is State.REJECTED and d.seen == WireGuard.budget


# --- Tailscale: disco datagrams interleaved with WireGuard transport data ------------------------------

DISCO_KEYS = (bytes(range(32)), bytes(range(100, 132)))


def disco(direction: int, kind: int = 1) -> bytes:
    """Disco ping/pong (tailscale.com/disco): magic, sender disco key, 24-byte nonce, NaCl box of
    type + version + 12-byte transaction ID (+ 16-byte Poly1305 tag)."""
    return b"TS\xf0\x9f\x92\xac" + DISCO_KEYS[direction] + b.rnd(24) + b.rnd(16 + 2 + 12 + (18 if kind == 2 else 0))


def tailscale_mid_flow(n: int = 12) -> list[tuple[int, float, bytes]]:
    out = []
    for i in range(n):
        d = i % 2
        if i % 4 == 1:
            out.append((d, 0.01 * i, disco(d, 1 + d)))
        out.append((d, 0.01 * i + 0.001, b.wg_data((RESP, INIT)[d], 7000 + i // 2, 120)))
    return out


def test_tailscale_disco_interleaved_with_transport_data_is_wireguard_variant_tailscale() -> None:
    d = WireGuard()
    assert b.run(d, tailscale_mid_flow()) is State.CONFIRMED
    assert d.confidence == pytest.approx(0.9) and d.attributes["variant"] == "tailscale"
    assert "Tailscale disco" in d.evidence[-1]


def test_disco_alone_or_malformed_is_not_wireguard() -> None:
    assert b.run(WireGuard(), [(i % 2, 0.5 * i, disco(i % 2)) for i in range(10)]) is not State.CONFIRMED
    assert b.run(WireGuard(), [(0, 0.0, b"TS\xf0\x9f\x92\xac" + b.rnd(20))]) is State.REJECTED
    changed = [(0, 0.0, disco(0)), (0, 0.1, disco(1))]
    assert b.run(WireGuard(), changed) is State.REJECTED


def test_one_way_look_alikes_are_not_wireguard() -> None:
    dcid = b.rnd(8)
    flows = [
        [(0, 0.01 * i, b.quic_short(dcid, 1200)) for i in range(40)],
        [(0, 0.02 * i, b.rtp(1000 + i, 160 * i, 0x1234ABCD, 172)) for i in range(40)],
        [(0, 0.5 * i, b.stun_binding()) for i in range(12)],
        [(0, 0.02 * i, b"\x04\x00\x00\x00" + bytes(28 + 16 * (i % 3))) for i in range(40)],  # counter stuck at 0
    ]
    for packets in flows:
        assert b.run(WireGuard(), packets) is not State.CONFIRMED


# -- Cloudflare WARP: types 0xC1-0xC4, a client id in the reserved bytes (nDPI cloudflare_warp.c) ----------------
CLIENT_ID = b"\x5a\x17\x03"


def warp(message: bytes, client_id: bytes = CLIENT_ID) -> bytes:
    """`message` (a standard WireGuard message) as WARP sends it: type + 0xC0, the client id in the reserved
    bytes except in the initiation."""
    kind = message[0]
    return bytes([0xC0 + kind]) + (message[1:4] if kind == 1 else client_id) + message[4:]


def test_warp_handshake_echo_confirms_as_the_warp_variant() -> None:
    d = WireGuard()
    packets = [(0, 0.0, warp(b.wg_initiation(INIT, 180))), (1, 0.01, warp(b.wg_response(RESP, INIT, 120)))]
    assert b.run(d, packets) is State.CONFIRMED and d.verdict_packet == 2
    assert d.attributes["variant"] == "cloudflare-warp" and d.confidence == 0.95
    assert "Cloudflare WARP" in d.evidence[-1]


def test_warp_transport_data_mid_flow_confirms() -> None:
    d = WireGuard()
    packets = [(direction, ts, warp(payload)) for direction, ts, payload in mid_flow((7000, 9000), 12)]
    assert b.run(d, packets) is State.CONFIRMED and d.attributes["variant"] == "cloudflare-warp"
    assert d.attributes["mid_flow"] == "true"


def test_warp_types_with_zero_reserved_bytes_or_a_quic_version_are_not_warp() -> None:
    # 0xC4 with zero reserved bytes is a QUIC v1 long header's start (version 00 00 00 01), not WARP data
    d = WireGuard()
    assert b.run(d, [(0, 0.0, b"\xc4\x00\x00\x00" + b.wg_data(RESP, 1, 80)[4:])]) is State.REJECTED
    # 0xC1 00 00 00 01: a QUIC v1 Initial, however its next bytes look
    d = WireGuard()
    assert b.run(d, [(0, 0.0, b"\xc1\x00\x00\x00\x01" + b.rnd(143))]) is State.REJECTED


def test_quic_initials_with_warp_like_first_bytes_are_never_wireguard() -> None:
    """QUIC long headers start 0xC0-0xCF (header protection randomises the low bits): each of 0xC1-0xC4 both
    ways, then short-header data, as a QUIC handshake on WARP's port would look."""
    for first in (0xC1, 0xC2, 0xC3, 0xC4):
        client, server = b.quic_initial(b.rnd(8)), b.quic_initial(b.rnd(8))
        packets = [(0, 0.0, bytes([first]) + client[1:]), (1, 0.02, bytes([first]) + server[1:])]
        packets += [(i % 2, 0.05 + 0.01 * i, b.quic_short(b.rnd(8), 1200)) for i in range(20)]
        d = WireGuard()
        assert b.run(d, packets) is not State.CONFIRMED


def test_warp_lookalike_with_random_counters_is_rejected() -> None:
    d = WireGuard()
    packets = [(i % 2, 0.01 * i, b"\xc4" + CLIENT_ID + b.rnd(4) + b.rnd(8) + b.rnd(96)) for i in range(20)]
    assert b.run(d, packets) is not State.CONFIRMED


def test_prefilter_passes_warp_and_refuses_quic_v1_starts() -> None:
    payloads = [warp(b.wg_initiation(INIT, 180)), warp(b.wg_response(RESP, INIT, 120)), warp(b.wg_data(RESP, 3, 80)),
                b"\xc3\x00\x00\x00\x01" + b.rnd(1195), b"\xc4\x00\x00\x00\x01" + b.rnd(1195),
                warp(b.wg_response(RESP, INIT, 60))]
    n = len(payloads)
    head = np.zeros((n, HEAD_BYTES), np.uint8)
    for i, payload in enumerate(payloads):
        head[i, : min(len(payload), HEAD_BYTES)] = np.frombuffer(payload[:HEAD_BYTES], np.uint8)
    heads = PacketHeads(np.full(n, 17, np.uint8), np.array([len(x) for x in payloads], np.int64), head,
                        np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, bool))
    assert np.asarray(WireGuard.prefilter(heads)).tolist() == [True, True, True, False, False, False]
