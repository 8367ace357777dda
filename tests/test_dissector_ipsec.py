"""IKE, ESP and AH dissectors on messages built from RFC 2408/7296/7383/3948/8229/4303/4302 layouts, and on
the UDP look-alikes that share their ports or shapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR

from tests import vpnbytes_wg_ipsec as b
from vpnid.features.dissectors.base import State
from vpnid.features.dissectors.esp import AH, ESP
from vpnid.features.dissectors.ike import IKE
from vpnid.features.packets import IPPROTO_AH, IPPROTO_ESP, IPPROTO_UDP

I_SPI, R_SPI = bytes.fromhex("05ac0f4d122013f4"), bytes.fromhex("5f46ee70bc4c5d0d")
ESP_OUT, ESP_IN = 0xC27247B7, 0x0354AA4F


# --- IKE: positives -----------------------------------------------------------------------------------


def test_ikev2_sa_init_request_and_response_confirm_at_099() -> None:
    d = IKE()
    packets = [(0, 0.0, b.ikev2_sa_init_request(I_SPI)), (1, 0.03, b.ikev2_sa_init_response(I_SPI, R_SPI))]
    assert b.run(d, packets) is State.CONFIRMED and d.confidence >= 0.99 and d.verdict_packet == 2
    assert I_SPI.hex() in d.evidence[-1] and "IKE_SA_INIT request" in d.evidence[-1]
    assert d.attributes["version"] == "2" and "nat_t" not in d.attributes


def test_lone_ikev2_request_confirms_at_095_on_its_own_packet() -> None:
    d = IKE()
    assert b.run(d, [(0, 0.0, b.ikev2_sa_init_request(I_SPI))]) is State.CONFIRMED
    assert 0.9 <= d.confidence < 0.99 and d.verdict_packet == 1 and "5-payload chain" in d.evidence[-1]


def test_ike_auth_in_rfc7383_fragments_behind_the_non_esp_marker() -> None:
    d = IKE()
    packets = [(0, 0.1 * n, b.nat_t(b.ikev2_skf(I_SPI, R_SPI, 0x08, 1, n, 3, 500))) for n in (1, 2, 3)]
    packets.append((1, 0.5, b.nat_t(b.ikev2_skf(I_SPI, R_SPI, 0x20, 1, 1, 1, 300))))
    assert b.run(d, packets) is State.CONFIRMED and d.confidence >= 0.99 and d.verdict_packet == 4
    assert d.attributes["fragmentation"] == "RFC 7383 SKF" and d.attributes["nat_t"] == "non-ESP marker"
    assert "IKE_AUTH" in d.evidence[-1]


@pytest.mark.parametrize("exchange, name", [(36, "CREATE_CHILD_SA"), (37, "INFORMATIONAL"), (43, "IKE_INTERMEDIATE")])
def test_ikev2_encrypted_exchanges_pair_up(exchange: int, name: str) -> None:
    d = IKE()
    packets = [
        (1, 0.0, b.ikev2_encrypted(I_SPI, R_SPI, exchange, 0x00, 7, 80)),  # the responder may start these
        (0, 0.02, b.ikev2_encrypted(I_SPI, R_SPI, exchange, 0x28, 7, 80)),
    ]
    assert b.run(d, packets) is State.CONFIRMED and d.confidence >= 0.99 and name in d.evidence[-1]


def test_ikev1_main_mode_pair() -> None:
    d = IKE()
    packets = [(0, 0.0, b.ikev1_main_mode_1(I_SPI)), (1, 0.02, b.ikev1_main_mode_2(I_SPI, R_SPI))]
    assert b.run(d, packets) is State.CONFIRMED and d.confidence >= 0.99
    assert "IKEv1 Main Mode" in d.evidence[-1] and d.attributes["version"] == "1"


def test_ikev1_aggressive_mode_pair() -> None:
    d = IKE()
    packets = [(0, 0.0, b.ikev1_aggressive_1(I_SPI)), (1, 0.02, b.ikev1_aggressive_2(I_SPI, R_SPI))]
    assert b.run(d, packets) is State.CONFIRMED and "Aggressive Mode" in d.evidence[-1]


def test_ikev1_encrypted_quick_mode_pair() -> None:
    d = IKE()
    packets = [
        (0, 0.0, b.ikev1_encrypted(I_SPI, R_SPI, 32, 0x1234, 160)),
        (1, 0.02, b.ikev1_encrypted(I_SPI, R_SPI, 32, 0x1234, 144)),
    ]
    assert b.run(d, packets) is State.CONFIRMED and d.confidence >= 0.99 and "Quick Mode" in d.evidence[-1]


def test_nat_t_flow_skips_esp_and_keepalives_between_request_and_response() -> None:
    """A DPD exchange on an established NAT-T flow (any port pair): ESP and 0xFF keepalives interleave."""
    d = IKE()
    packets = [
        (0, 0.0, b.esp(ESP_IN, 900, 132)),
        (0, 0.1, b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 37, 0x08, 4, 48))),
        (1, 0.2, b.esp(ESP_OUT, 77, 1332)),
        (0, 0.3, b"\xff"),
        (1, 0.4, b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 37, 0x20, 4, 48))),
    ]
    assert b.run(d, packets) is State.CONFIRMED and d.confidence >= 0.99 and d.verdict_packet == 5


def test_malformed_but_identified_ike_is_neutral() -> None:
    bad = bytearray(b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 35, 0x08, 1, 700)))
    bad[4 + 16] = 127  # undefined next-payload type, length field still exact
    d = IKE()
    packets = [
        (0, 0.0, bytes(bad)),
        (1, 0.1, b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 35, 0x20, 1, 160))),
        (0, 0.2, b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 35, 0x08, 2, 80))),
        (1, 0.3, b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 35, 0x20, 2, 48))),
    ]
    assert b.run(d, packets) is State.CONFIRMED and d.verdict_packet == 4
    assert "127" in d.attributes["malformed"]


def test_ike_over_tcp_with_iketcp_prefix_and_split_segments() -> None:
    request = b"IKETCP" + b.tcp_frame(b.nat_t(b.ikev2_sa_init_request(I_SPI)))
    response = b.tcp_frame(b.nat_t(b.ikev2_sa_init_response(I_SPI, R_SPI)))
    packets = [(0, 0.0, request[:20]), (0, 0.01, request[20:]), (1, 0.05, response)]
    d = IKE()
    assert b.run(d, packets, tcp=True) is State.CONFIRMED and d.confidence >= 0.99 and d.verdict_packet == 3
    assert "IKETCP" in d.attributes["transport"]


def test_ike_over_tcp_skips_esp_frames() -> None:
    auth = b.tcp_frame(b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 35, 0x08, 1, 300)))
    answer = b.tcp_frame(b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 35, 0x20, 1, 200)))
    reply = b.tcp_frame(b.esp(ESP_OUT, 1, 200)) + answer
    d = IKE()
    assert b.run(d, [(0, 0.0, auth), (1, 0.1, reply)], tcp=True) is State.CONFIRMED and d.confidence >= 0.99


def test_unanswered_request_settles_at_095_after_a_few_packets() -> None:
    d = IKE()
    packets = [(0, 0.0, b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 37, 0x08, 4, 48)))]
    packets += [(i % 2, 0.1 * i, b.esp((ESP_IN, ESP_OUT)[i % 2], 50 + i, 132)) for i in range(1, 5)]
    assert b.run(d, packets, end=False) is State.CONFIRMED
    assert 0.9 <= d.confidence < 0.99 and d.verdict_packet == 1 and "INFORMATIONAL request" in d.evidence[-1]


def test_trailing_bytes_after_the_payload_chain_are_not_ike() -> None:
    msg = b.ikev2_sa_init_request(I_SPI) + b.rnd(8)
    msg = msg[:24] + len(msg).to_bytes(4, "big") + msg[28:]  # length field covers the junk
    d = IKE()
    assert b.run(d, [(0, 0.0, msg), (1, 0.1, msg)]) is not State.CONFIRMED
    assert "8 B before the message end" in d.attributes["malformed"]


def test_tls_over_tcp_is_rejected_on_its_first_segment() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b.rnd(500)
    d = IKE()
    assert b.run(d, [(0, 0.0, hello)], tcp=True) is State.REJECTED and d.seen == 1


# --- IKE: negatives -----------------------------------------------------------------------------------


def lying_length() -> bytes:
    return b.ike(0x20, 34, 0x08, [(33, b.rnd(44)), (34, b.rnd(136))], ispi=I_SPI, length_delta=4)


def overrunning_chain() -> bytes:
    msg = bytearray(b.ikev2_sa_init_request(I_SPI))
    msg[28 + 3] += 8  # first payload claims 8 more bytes: the chain no longer ends at the message end
    return bytes(msg)


def init_request_with_responder_spi() -> bytes:
    msg = b.ikev2_sa_init_request(I_SPI)
    return msg[:8] + R_SPI + msg[16:]


@pytest.mark.parametrize(
    "payload, reason",
    [(lying_length(), "length field"), (b"\x00" * 20, "too short"), (b"\x00" * 100, "version")],
)
def test_non_ike_behind_the_non_esp_marker_is_rejected_on_the_first_packet(payload: bytes, reason: str) -> None:
    d = IKE()
    assert b.run(d, [(0, 0.0, b.nat_t(payload))]) is State.REJECTED and d.seen == 1 and reason in d.evidence[-1]


@pytest.mark.parametrize("payload", [lying_length(), overrunning_chain(), init_request_with_responder_spi()])
def test_inconsistent_ike_is_never_confirmed(payload: bytes) -> None:
    """Without the marker, a message failing the checks may still be ESP sharing the flow (lying length)
    or a malformed IKE message (exact length, bad chain): neither is evidence, so the flow ends undecided."""
    d = IKE()
    assert b.run(d, [(0, 0.0, payload), (1, 0.1, payload)]) is not State.CONFIRMED


def dns_pair() -> list[tuple[int, float, bytes]]:
    query = DNS(id=0x1337, rd=1, qd=DNSQR(qname="vpn.example.net"))
    answer = DNS(id=0x1337, qr=1, rd=1, ra=1, qd=DNSQR(qname="vpn.example.net"), an=DNSRR(rrname="vpn.example.net"))
    return [(0, 0.0, bytes(query)), (1, 0.02, bytes(answer))]


def game_flow(n: int = 16) -> list[tuple[int, float, bytes]]:
    """Per-direction session prefixes, a counter stepping by one, 4-byte aligned sizes: ESP's shape
    except for the cleartext body."""
    return [(i % 2, 0.05 * i, b.game((0x5A17C0DE, 0x1EE7F00D)[i % 2], 300 + i // 2, 64 + 8 * (i % 5))) for i in range(n)]


def quic_flow() -> list[tuple[int, float, bytes]]:
    dcid_c, dcid_s = b.rnd(8), b.rnd(8)
    first = [(0, 0.0, b.quic_initial(dcid_c)), (1, 0.03, b.quic_initial(dcid_s))]
    return first + [(i % 2, 0.04 + 0.01 * i, b.quic_short((dcid_c, dcid_s)[i % 2], 64 + 4 * i)) for i in range(14)]


LOOKALIKES = {
    "quic": quic_flow(),
    "quic-short-only": quic_flow()[2:],
    "dtls": [(i % 2, 0.02 * i, b.dtls_record(23, 0xFEFD, 1, 5 + i // 2, 100 + 4 * i)) for i in range(12)],
    "stun": [(i % 2, 0.02 * i, b.stun_binding(response=bool(i % 2))) for i in range(8)],
    "dns": dns_pair(),
    "rtp": [(i % 2, 0.02 * i, b.rtp(4000 + i // 2, 160 * (i // 2), (0x1234, 0x9876)[i % 2], 172)) for i in range(20)],
    "game": game_flow(),
    "random": [(i % 2, 0.01 * i, b.rnd(n)) for i, n in enumerate([132, 1332, 900, 36, 64, 1200, 16, 28, 80, 96])],
}


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_lookalikes_are_not_ike(name: str) -> None:
    d = IKE()
    assert b.run(d, LOOKALIKES[name]) is State.REJECTED


@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_lookalikes_are_not_esp_in_udp(name: str) -> None:
    d = ESP()
    assert b.run(d, LOOKALIKES[name]) is not State.CONFIRMED


def test_lookalikes_fail_early() -> None:
    """Most flows are not tunnels: they should cost a packet or two, not the whole budget."""
    seen = []
    for packets in LOOKALIKES.values():
        for d in (IKE(), ESP()):
            b.run(d, packets)
            seen.append(d.seen)
    assert sum(seen) / len(seen) <= 4


# --- ESP ----------------------------------------------------------------------------------------------


def test_raw_esp_confirms_on_its_first_packet() -> None:
    d = ESP()
    assert b.run(d, [(0, 0.0, b.esp(0x2360B0E3, 1, 132)), (1, 0.01, b.esp(0xF0092CB5, 1, 132))], proto=IPPROTO_ESP) is State.CONFIRMED
    assert 0.9 <= d.confidence < 0.99 and d.verdict_packet == 1 and "0x2360b0e3" in d.evidence[-1]


@pytest.mark.parametrize("spi", [10, 123, 200, 255])
def test_raw_esp_with_reserved_spi_is_ipsec_at_lower_confidence_with_a_risk(spi: int) -> None:
    """Manually keyed SAs and test traces use SPIs RFC 4303 reserves: IP protocol 50 still says ESP."""
    d = ESP()
    assert b.run(d, [(0, 0.0, b.esp(spi, 1, 132))], proto=IPPROTO_ESP) is State.CONFIRMED
    assert d.confidence == pytest.approx(0.8) and d.risks == {"reserved_spi"} and "reserved" in d.evidence[-1]
    d = ESP()
    assert b.run(d, [(0, 0.0, b.esp(321, 1, 132))], proto=IPPROTO_ESP) is State.CONFIRMED
    assert d.confidence == pytest.approx(0.95) and not d.risks


def test_reserved_spi_in_udp_is_still_no_esp() -> None:
    """Inside UDP nothing vouches for ESP: a small 'SPI' there is just a small leading word (DNS, games)."""
    d = ESP()
    assert b.run(d, [(i % 2, 0.01 * i, b.esp(10 + i % 2, 1 + i // 2, 132)) for i in range(8)]) is State.REJECTED


def esp_in_udp_mid_flow(n: int) -> list[tuple[int, float, bytes]]:
    """An established NAT-T SA pair seen from the middle: large sequence numbers, sizes of a TCP
    download (1332 B one way, 132 B ACKs the other), with a keepalive and a DPD message mixed in."""
    packets: list[tuple[int, float, bytes]] = []
    seq = [5000, 7200]
    for i in range(n):
        direction = 0 if i % 3 else 1
        packets.append((direction, 0.01 * i, b.esp((ESP_IN, ESP_OUT)[direction], seq[direction], (1332, 132)[direction])))
        seq[direction] += 1
    packets.insert(4, (0, 0.035, b"\xff"))
    packets.insert(6, (1, 0.055, b.nat_t(b.ikev2_encrypted(I_SPI, R_SPI, 37, 0x08, 9, 48))))
    return packets


def test_esp_in_udp_mid_flow_both_ways_confirms_at_09() -> None:
    d = ESP()
    packets = esp_in_udp_mid_flow(12)
    assert b.run(d, packets) is State.CONFIRMED and 0.85 <= d.confidence < 0.99
    assert d.verdict_packet == 9  # third packet of the slower direction (keepalive and IKE do not count)
    assert f"0x{ESP_IN:08x}" in d.evidence[-1] and f"0x{ESP_OUT:08x}" in d.evidence[-1]
    assert d.attributes["encapsulation"] == "udp"


def test_esp_in_udp_survives_a_rekey_to_a_fresh_sa() -> None:
    d = ESP()
    packets = [(0, 0.0, b.esp(ESP_IN, 40, 200)), (0, 0.01, b.esp(ESP_IN, 41, 200)), (0, 0.02, b.esp(0xC0FFEE01, 1, 200))]
    packets += [(i % 2, 0.03 + 0.01 * i, b.esp((0xC0FFEE01, ESP_OUT)[i % 2], 2 + i // 2, 120)) for i in range(6)]
    assert b.run(d, packets) is State.CONFIRMED


def test_esp_in_udp_spi_change_without_sequence_restart_is_rejected() -> None:
    d = ESP()
    packets = [(0, 0.0, b.esp(ESP_IN, 40, 200)), (0, 0.01, b.esp(ESP_IN + 1, 41, 200))]
    assert b.run(d, packets) is State.REJECTED and "restart" in d.evidence[-1]


@pytest.mark.parametrize("n, end", [(40, False), (9, True)], ids=["budget", "flow-end"])
def test_one_way_esp_in_udp_confirms_at_lower_confidence(n: int, end: bool) -> None:
    """Asymmetric tap: SPI constant, sequence +1, encrypted body, the other side never seen."""
    d = ESP()
    packets = [(0, 0.01 * i, b.esp(ESP_IN, 100 + i, 1332)) for i in range(n)]
    assert b.run(d, packets, end=end) is State.CONFIRMED
    assert d.confidence == pytest.approx(0.7) and d.attributes["one_way"] == "true"
    assert "one direction only" in d.evidence[-1]


def test_one_way_esp_in_udp_needs_a_run_and_a_stepping_sequence() -> None:
    assert b.run(ESP(), [(0, 0.01 * i, b.esp(ESP_IN, 100 + i, 1332)) for i in range(5)]) is not State.CONFIRMED
    jumpy = [(0, 0.01 * i, b.esp(ESP_IN, 100 + 7 * i, 1332)) for i in range(40)]
    assert b.run(ESP(), jumpy) is not State.CONFIRMED


def test_one_way_look_alikes_are_not_esp() -> None:
    rtp = [(0, 0.02 * i, b.rtp(1000 + i, 160 * i, 0x1234ABCD, 172)) for i in range(40)]
    assert b.run(ESP(), rtp) is not State.CONFIRMED
    dcid = b.rnd(8)
    quic = [(0, 0.01 * i, b.quic_short(dcid, 1200)) for i in range(40)]
    assert b.run(ESP(), quic) is not State.CONFIRMED
    assert b.run(ESP(), [(0, 0.5 * i, b.stun_binding()) for i in range(12)]) is not State.CONFIRMED
    game = [(0, 0.05 * i, b.game(0x0A0B0C0D, 300 + i, 200)) for i in range(40)]  # cleartext body
    assert b.run(ESP(), game) is not State.CONFIRMED


def test_esp_in_udp_rejects_the_game_on_its_cleartext_body() -> None:
    d = ESP()
    assert b.run(d, game_flow()) is State.REJECTED and "zero" in d.evidence[-1]


# --- AH -----------------------------------------------------------------------------------------------


def test_ah_header_confirms() -> None:
    d = AH()
    assert b.run(d, [(0, 0.0, b.ah(0x1000A, 1, next_header=89))]) is State.CONFIRMED
    assert d.verdict_packet == 1 and "ICV 12 B" in d.evidence[-1] and d.attributes["next_header"] == "89"


@pytest.mark.parametrize(
    "payload, reason",
    [(b.ah(0x1000A, 1, reserved=7), "reserved field"), (b.ah(3, 1), "reserved AH SPI"), (b.ah(0x1000A, 1, icv=4), "ICV")],
)
def test_bad_ah_headers_are_rejected(payload: bytes, reason: str) -> None:
    d = AH()
    assert b.run(d, [(0, 0.0, payload)]) is State.REJECTED and reason in d.evidence[-1]


# --- robustness ---------------------------------------------------------------------------------------

VALID = [
    b.nat_t(b.ikev2_sa_init_request(I_SPI)),
    b.tcp_frame(b.nat_t(b.ikev2_skf(I_SPI, R_SPI, 0x08, 1, 1, 2, 90))),
    b"IKETCP" + b.tcp_frame(b.ikev1_main_mode_1(I_SPI)),
    b.ikev1_encrypted(I_SPI, R_SPI, 5, 3, 64),
    b.esp(ESP_IN, 3, 100),
    b.ah(0x1000A, 1),
]
DISSECTORS = [(IKE, IPPROTO_UDP), (ESP, IPPROTO_ESP), (ESP, IPPROTO_UDP), (AH, IPPROTO_AH)]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(range(len(DISSECTORS))),
    st.booleans(),
    st.lists(
        st.tuples(
            st.integers(0, 1),
            st.one_of(st.binary(min_size=1, max_size=300), st.tuples(st.sampled_from(VALID), st.integers(1, 400))),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_never_raises_on_random_or_truncated_payloads(which: int, tcp: bool, packets: list) -> None:
    cls, proto = DISSECTORS[which]
    flow = [(dirn, float(i), p if isinstance(p, bytes) else p[0][: p[1]]) for i, (dirn, p) in enumerate(packets)]
    d = cls()
    b.run(d, flow, tcp=tcp, proto=proto)
    assert d.state in (State.CANDIDATE, State.CONFIRMED, State.REJECTED)
