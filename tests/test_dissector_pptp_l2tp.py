"""PPTP (RFC 2637) and L2TP (RFC 2661 / RFC 3931) dissectors on RFC-built messages, and on the GRE and
UDP look-alikes that share their protocol numbers and ports (NVGRE, ERSPAN, plain GRE, DNS, QUIC, STUN)."""

from __future__ import annotations

import random
import struct
from collections import namedtuple

import numpy as np
import pytest
from scapy.layers.dns import DNS, DNSQR

from tests import vpnbytes_pptp_l2tp as v
from tests import vpnbytes_wg_ipsec as b
from vpnid.features.dissectors.base import State
from vpnid.features.dissectors.l2tp import L2TP
from vpnid.features.dissectors.pptp import PPTP
from vpnid.features.packets import IPPROTO_GRE, IPPROTO_TCP, IPPROTO_UDP

GRE = IPPROTO_GRE


def gre_run(packets: list[tuple[int, bytes]]) -> PPTP:
    d = PPTP()
    b.run(d, [(di, 0.01 * i, p) for i, (di, p) in enumerate(packets)], proto=GRE)
    return d


def tcp_run(packets: list[tuple[int, bytes]]) -> PPTP:
    d = PPTP()
    b.run(d, [(di, 0.01 * i, p) for i, (di, p) in enumerate(packets)], tcp=True)
    return d


def udp_run(packets: list[tuple[int, bytes]]) -> L2TP:
    d = L2TP()
    b.run(d, [(di, 0.01 * i, p) for i, (di, p) in enumerate(packets)])
    return d


# --- PPTP control connection ----------------------------------------------------------------------------


def test_pptp_control_handshake_confirms_at_099() -> None:
    d = tcp_run([(0, v.sccrq()), (1, v.sccrp()), (0, v.ocrq(0x4001)), (1, v.ocrp(0x0099, 0x4001))])
    assert d.state is State.CONFIRMED and d.family == "pptp"
    assert d.confidence == pytest.approx(0.99) and d.verdict_packet == 2 and d.attributes["handshake"] == "seen"


def test_pptp_unanswered_requests_are_pptp_with_blocked_attempt() -> None:
    d = tcp_run([(0, v.sccrq())])
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9) and not d.risks
    d = tcp_run([(0, v.sccrq()), (0, v.sccrq())])
    assert d.state is State.CONFIRMED and d.risks == {"blocked_attempt"}
    assert tcp_run([(0, v.sccrq()[:100])]).state is not State.CONFIRMED  # cut short


def test_pptp_request_split_over_segments_and_reply() -> None:
    from vpnid.features.dissectors.base import FlowPacket
    d = PPTP()
    req = v.sccrq()
    d.feed(FlowPacket(1, 0, 0.0, req[:100], 1000, 0x18, IPPROTO_TCP))
    assert d.state is State.CANDIDATE
    d.feed(FlowPacket(2, 0, 0.1, req[100:], 1100, 0x18, IPPROTO_TCP))
    d.feed(FlowPacket(3, 1, 0.2, v.sccrp(), 9000, 0x18, IPPROTO_TCP))
    assert d.state is State.CONFIRMED and d.verdict_packet == 3


def test_pptp_mid_flow_control_messages() -> None:
    d = tcp_run([(0, v.pptp_control(5, b"\0\0\0\1")), (1, v.pptp_control(6, b"\0\0\0\1\1"))])  # echo req/reply
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9)


@pytest.mark.parametrize("first", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa0" + bytes(160),
    struct.pack(">HHIHH", 156, 1, 0x1A2B3C4E, 1, 0) + bytes(144),  # wrong magic
    struct.pack(">HHIHH", 100, 1, 0x1A2B3C4D, 1, 0) + bytes(88),  # SCCRQ of the wrong length
])
def test_pptp_look_alikes_rejected(first: bytes) -> None:
    assert tcp_run([(0, first), (1, first)]).state is State.REJECTED


# --- PPTP enhanced GRE ----------------------------------------------------------------------------------


def pptp_gre_flow(n: int = 6) -> list[tuple[int, bytes]]:
    out, seq = [], [1, 1]
    for i in range(n):
        d = i % 2
        out.append((d, v.gre_v1((0x0099, 0x4001)[d], seq[d], seq[1 - d] - 1 if seq[1 - d] > 1 else None,
                                v.mppe_ppp(random.Random(i).randrange(40, 1400)))))
        seq[d] += 1
    out.append((0, v.gre_v1(0x0099, None, 3, b"")))  # ACK only
    return out


def test_pptp_gre_data_channel_confirms() -> None:
    d = gre_run(pptp_gre_flow())
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.9) and d.verdict_packet == 3
    assert d.attributes["transport"] == "gre" and d.attributes["call_id"] == "153/16385"


def test_pptp_gre_one_way_confirms_too() -> None:
    d = gre_run([p for p in pptp_gre_flow(10) if p[0] == 1])
    assert d.state is State.CONFIRMED


@pytest.mark.parametrize("packet, reason", [
    (v.gre_v0(0x6558, bytes(14) + b.rnd(100), key=0x00123400), "version 0"),  # NVGRE
    (v.gre_v0(0x88BE, b.rnd(120), seq=7), "version 0"),  # ERSPAN type II
    (v.gre_v0(0x0800, b"\x45" + b.rnd(60)), "version 0"),  # plain IP over GRE
    (struct.pack(">HHHH", 0x3001, 0x880B, 500, 7) + struct.pack(">I", 1) + b.rnd(80), "payload length"),
    (struct.pack(">HHHH", 0x3001, 0x0800, 80, 7) + struct.pack(">I", 1) + b.rnd(80), "protocol"),
])
def test_gre_look_alikes_rejected(packet: bytes, reason: str) -> None:
    d = gre_run([(0, packet), (1, packet), (0, packet)])
    assert d.state is State.REJECTED and reason.split()[0] in " ".join(d.evidence).lower().replace("gre v1 flags", "protocol")


def test_gre_call_id_change_rejected() -> None:
    flow = [(0, v.gre_v1(0x99, 1, None, v.mppe_ppp(100))), (0, v.gre_v1(0x98, 2, None, v.mppe_ppp(100)))]
    assert gre_run(flow).state is State.REJECTED


# --- L2TP ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_l2tp_control_handshake(version: int) -> None:
    d = udp_run([(0, v.l2tp_sccrq(0x1234, version)), (1, v.l2tp_sccrp(0x1234, 0x0777, version))])
    assert d.state is State.CONFIRMED and d.family == "l2tp"
    assert d.confidence == pytest.approx(0.99) and d.verdict_packet == 2 and d.attributes["handshake"] == "seen"
    assert d.attributes["version"] == str(version)


def test_l2tp_other_control_messages_and_unanswered_requests() -> None:
    d = udp_run([(0, v.l2tp_zlb(0, 0, 0)), (1, v.l2tp_sccrp(0x1234, 0x0777))])  # a reply without its request
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.95)
    d = udp_run([(0, v.l2tp_sccrq(0x1234))] * 3)
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.95) and d.risks == {"blocked_attempt"}
    assert udp_run([(0, v.l2tp_sccrq(0x1234)), (1, v.l2tp_sccrp(0x9999, 0x0777))]).confidence == pytest.approx(0.95)


def test_l2tp_data_messages_carrying_ppp() -> None:
    flow = [(i % 2, v.l2tp_data((0x0777, 0x1234)[i % 2], (5, 9)[i % 2], v.ppp_ip(random.Random(i).randrange(40, 1300)),
                                length=i % 3 == 0)) for i in range(6)]
    d = udp_run(flow)
    assert d.state is State.CONFIRMED and d.confidence == pytest.approx(0.85) and d.verdict_packet == 4


def _dns(txid: int) -> bytes:
    return bytes(DNS(id=txid, rd=1, qd=DNSQR(qname="example.com")))


@pytest.mark.parametrize("make", [
    lambda i: _dns(i),
    lambda i: _dns(0xC802),  # a DNS id equal to the control word
    lambda i: _dns(0x0002),  # ... or to a data-message word
    lambda i: b.quic_short(b"\x11" * 8, 1200),
    lambda i: b.stun_binding(),
    lambda i: b.rnd(random.Random(i).randrange(8, 1400)),
    lambda i: struct.pack(">HH", 0xC802, 40) + b.rnd(36),  # control word and right length, AVPs random
])
def test_udp_1701_look_alikes_rejected(make) -> None:
    d = udp_run([(i % 2, make(i)) for i in range(12)])
    assert d.state is not State.CONFIRMED


# --- prefilters (PacketHeads columns: proto, length, head, direction, tcp_flags, opened) ---------------

Heads = namedtuple("Heads", "proto length head direction tcp_flags opened")


def heads(rows: list[tuple[int, bytes]], k: int = 32) -> Heads:
    head = np.zeros((len(rows), k), np.uint8)
    for i, (_, p) in enumerate(rows):
        head[i, : min(k, len(p))] = np.frombuffer(p[:k], np.uint8)
    n = len(rows)
    return Heads(np.array([r[0] for r in rows], np.uint8), np.array([len(r[1]) for r in rows], np.int32), head,
                 np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, bool))


def test_prefilters_keep_every_packet_the_rules_confirm_on_and_drop_others() -> None:
    pptp_rows = [(IPPROTO_TCP, v.sccrq()), (IPPROTO_TCP, v.sccrp())] + [(GRE, p) for _, p in pptp_gre_flow()]
    other_gre = [(GRE, v.gre_v0(0x6558, b.rnd(60), key=5)), (GRE, v.gre_v0(0x88BE, b.rnd(60), seq=1))]
    mask = PPTP.prefilter(heads(pptp_rows + other_gre + [(IPPROTO_UDP, v.l2tp_sccrq(1))]))
    assert mask.tolist() == [True] * len(pptp_rows) + [False, False, False]
    l2tp_rows = [(IPPROTO_UDP, v.l2tp_sccrq(1)), (IPPROTO_UDP, v.l2tp_sccrq(1, 3)),
                 (IPPROTO_UDP, v.l2tp_data(1, 2, v.ppp_ip(60))), (IPPROTO_UDP, v.l2tp_zlb(1, 1, 1))]
    others = [(IPPROTO_UDP, b.stun_binding()), (IPPROTO_TCP, v.l2tp_sccrq(1)), (IPPROTO_UDP, b"\x80\x00")]
    assert L2TP.prefilter(heads(l2tp_rows + others)).tolist() == [True] * 4 + [False] * 3
