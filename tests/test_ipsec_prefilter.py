"""The IPsec cheap stage on UDP: IKE's prefilter passes IKE headers (and, after a flow's first packet, what
its dissector rejects on) and keeps ESP-shaped datagrams and keepalives in a window of ESP_BEFORE_IKE
packets; ESP-in-UDP waits for a flow's second packet. Checked on real bytes, packet by packet, against
every dissector forced on: same verdicts, evidence, risks and, after every packet, the same `sig_ipsec`
state (a class in its window counts as undecided); and ordinary UDP no longer builds the dissectors."""

from __future__ import annotations

import struct

import pytest

from tests import vpnbytes_wg_ipsec as v
from tests.flowbuild import P, table
from vpnid.features.dissectors import catalog
from vpnid.features.dissectors.esp import ESP
from vpnid.features.dissectors.ike import ESP_BEFORE_IKE, IKE
from vpnid.features.families import IPSEC
from vpnid.features.flows import FlowTable, FlowTableConfig

A, B = "198.18.0.1", "198.18.0.2"
I_SPI, R_SPI = b"\x5a" * 8, b"\xa5" * 8
SPI_OUT, SPI_IN = 0xC0FFEE01, 0xC0FFEE02


def dns_query(size: int) -> bytes:
    """A DNS query of `size` bytes: ID, RD flag, one question (an ESP-shaped datagram where size % 4 == 0)."""
    name = b"".join(bytes([len(x)]) + x for x in (b"a" * (size - 12 - 4 - 2 - 2), b"org")) + b"\x00"
    return struct.pack("!HHHHHH", 0x9B3D, 0x0100, 1, 0, 0, 0) + name[: size - 16] + b"\x00\x01\x00\x01"


def esp_both_ways(n: int, seq: int = 500) -> list[tuple[int, bytes]]:
    return [(i % 2, v.esp(SPI_OUT if i % 2 == 0 else SPI_IN, seq + i // 2, 132)) for i in range(2 * n)]


REKEY = [(0, v.nat_t(v.ikev2_encrypted(I_SPI, R_SPI, 36, 0x08, 7, 180))),  # CREATE_CHILD_SA request
         (1, v.nat_t(v.ikev2_encrypted(I_SPI, R_SPI, 36, 0x20, 7, 180)))]  # ... and its response
QUIC = [(0, v.quic_initial(b"\x01" * 8)), (1, v.quic_short(b"\x02" * 8, 1199)), (0, v.quic_short(b"\x03" * 8, 41))]

# (name, [(direction, payload)]): flows an IPsec dissector may see, and ordinary UDP.
FLOWS = [
    ("nat-t esp, then an ike rekey", esp_both_ways(1) + REKEY + esp_both_ways(4, 900)),
    ("esp, keepalive, then an ike rekey", esp_both_ways(1)[:1] + [(0, b"\xff")] + REKEY),
    ("four esp packets, then ike", esp_both_ways(2) + REKEY),
    ("ike first", REKEY + esp_both_ways(4)),
    ("esp in udp both ways", esp_both_ways(5)),
    ("esp, then the marker without ike", esp_both_ways(1) + [(1, bytes(4) + b"\x01" * 60)]),
    ("the marker without ike", [(0, bytes(4) + b"\x01" * 60)] + esp_both_ways(3)),
    ("ike with trailing bytes after esp", esp_both_ways(1) + [(0, REKEY[0][1] + bytes(4))]),
    ("quic", QUIC),
    ("quic initial alone", QUIC[:1]),
    ("dns query alone", [(0, dns_query(40))]),
    ("dns query and answer", [(0, dns_query(40)), (1, dns_query(40) + b"\xc0\x0c" + bytes(14))]),
    ("odd-sized dns query, then esp", [(0, dns_query(41))] + esp_both_ways(2)),
    ("rtp one way", [(0, v.rtp(7 + i, 160 * i, 0x1234ABCD, 172)) for i in range(3)]),
    ("rtp both ways", [(i % 2, v.rtp(7 + i, 160 * i, 0x1234ABCD + i % 2, 172)) for i in range(12)]),
    ("stun then rtp", [(0, v.stun_binding()), (1, v.stun_binding(True))]
     + [(i % 2, v.rtp(i, 160 * i, 0x55AA0000 + i % 2, 92)) for i in range(6)]),
]


def packets(flow: list[tuple[int, bytes]]) -> list[P]:
    return [P(1.0 + i / 100, A if d == 0 else B, B if d == 0 else A, 4500, 4500, 17, 0, b)
            for i, (d, b) in enumerate(flow)]


def run(flow: list[tuple[int, bytes]], prefilter: bool) -> tuple[list[bool], tuple]:
    """Feed the flow one packet per chunk; returns whether IPsec is undecided after each packet (the
    `sig_ipsec` state) and the verdict and risks at the end."""
    ft = FlowTable(catalog.ALL, FlowTableConfig(prefilter=prefilter))
    undecided = []
    for i, p in enumerate(packets(flow)):
        ft.add(table([p], first_frame=i + 1))
        (f,) = ft.open.values()
        undecided.append(IPSEC in {c.family for c in f.undecided})
    (f,) = ft.close()
    verdict = f.verdict and (f.verdict.family, f.verdict.confidence, tuple(f.verdict.evidence), f.verdict.packet,
                             tuple(sorted(f.verdict.attributes.items())))
    return undecided, (verdict, sorted(f.risks))


@pytest.mark.parametrize("name,flow", FLOWS, ids=[n for n, _ in FLOWS])
def test_same_verdict_risks_and_ipsec_state_after_every_packet(name: str, flow: list) -> None:
    assert run(flow, True) == run(flow, False), name


def built(monkeypatch, flow: list[tuple[int, bytes]]) -> dict[str, list[int]]:
    """Per class: the packet numbers its dissectors were fed (through `on_packet`)."""
    fed: dict[str, list[int]] = {"IKE": [], "ESP": []}
    for cls in (IKE, ESP):
        original = cls.on_packet
        monkeypatch.setattr(cls, "on_packet", lambda self, pkt, _o=original, _n=cls.__name__:
                            (fed[_n].append(pkt.index), _o(self, pkt))[1])
    ft = FlowTable(catalog.ALL)
    ft.add(table(packets(flow)))
    ft.close()
    return fed


def test_an_ike_rekey_later_in_a_nat_t_flow_is_still_found(monkeypatch) -> None:
    """ESP first, then a CREATE_CHILD_SA exchange behind the non-ESP marker: the IKE dissector is built on
    the first IKE message and fed the flow from its first payload packet (the window's replay)."""
    flow = esp_both_ways(1) + REKEY + esp_both_ways(4, 900)
    assert built(monkeypatch, flow)["IKE"] == [1, 2, 3, 4]
    ft = FlowTable(catalog.ALL)
    ft.add(table(packets(flow)))
    (f,) = ft.close()
    assert f.verdict.family == IPSEC and f.verdict.packet == 4 and "CREATE_CHILD_SA" in f.verdict.evidence[0]


def test_ike_after_the_window_is_left_to_nothing(monkeypatch) -> None:
    """ESP_BEFORE_IKE ESP packets reject IKE; the window of that length ends there, so a later IKE message
    builds no dissector."""
    assert ESP_BEFORE_IKE == IKE.prefilter_window == 4
    assert built(monkeypatch, esp_both_ways(2) + REKEY)["IKE"] == []


@pytest.mark.parametrize("name", ["quic initial alone", "dns query alone", "rtp one way", "rtp both ways"])
def test_ordinary_udp_builds_no_ike_dissector(monkeypatch, name: str) -> None:
    """Datagrams that are only ESP-shaped (aligned, a large first word) no longer build IKE (nor, alone
    in their flow, ESP)."""
    flow = dict(FLOWS)[name]
    fed = built(monkeypatch, flow)
    assert fed["IKE"] == [], name
    if len(flow) == 1:
        assert fed["ESP"] == [], name


def test_a_non_neutral_packet_after_the_first_still_builds_ike_to_reject(monkeypatch) -> None:
    """QUIC's aligned Initial waits in the window; its odd-sized next packet makes IKE reject, so the class
    leaves the flow on it, as the dissector would have."""
    assert built(monkeypatch, QUIC)["IKE"] == [1, 2]
