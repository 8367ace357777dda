"""The negatives suite (issue #14): ordinary protocols that look like tunnels (compressed payloads behind
binary headers, TLS resumption, SSH, games, obfuscated messenger transports, RLPx, BitTorrent MSE; built
in tests/negbytes.py) as captures, one flow on each VPN port, through the whole pipeline: every dissector,
with the prefilters and without, and the shipped model. None may get a tunnel label; the only risk they
may carry is `fully_encrypted`, which they are.

Real tunnels written the same way are labelled on every port: the captures reach the dissectors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from tests.negbytes import TCP_NEGATIVES, UDP_NEGATIVES, Packets
from tests.test_dissector_shadowsocks import POSITIVES as SHADOWSOCKS
from tests.tunnelbytes import wireguard_session
from vpnid.classifier.labelling.loading import DEFAULT_MODEL
from vpnid.classifier.labelling.model import FlowModel, load
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.risks import FULLY_ENCRYPTED
from vpnid.pcaps.lookalike import VPN_PORTS

PORTS = (*VPN_PORTS, 40404)
CLIENT, SERVER = "198.18.0.1", "198.18.0.2"
T0 = 1_764_370_000.0


def tcp_connection(packets: Packets, port: int, cport: int, t0: float) -> list:
    """One TCP connection to `port`: handshake, one segment per payload (acknowledged by the next), FIN."""
    seq, out = [1000, 9000], []
    ends = {0: (CLIENT, SERVER, cport, port), 1: (SERVER, CLIENT, port, cport)}

    def segment(d: int, flags: str, payload: bytes = b"") -> None:
        src, dst, sport, dport = ends[d]
        pkt = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq[d],
                                                    ack=seq[1 - d] if "A" in flags else 0)
        if payload:
            pkt = pkt / Raw(payload)
        pkt.time = t0 + len(out) * 0.02
        out.append(pkt)
        seq[d] += len(payload) + ("S" in flags or "F" in flags)

    segment(0, "S")
    segment(1, "SA")
    segment(0, "A")
    for d, payload in packets:
        segment(d, "PA", payload)
    segment(0, "FA")
    segment(1, "FA")
    return out


def udp_exchange(packets: Packets, port: int, cport: int, t0: float) -> list:
    out = []
    for i, (d, payload) in enumerate(packets):
        src, dst, sport, dport = (CLIENT, SERVER, cport, port) if d == 0 else (SERVER, CLIENT, port, cport)
        pkt = Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)
        pkt.time = t0 + i * 0.02
        out.append(pkt)
    return out


def on_every_port(path: Path, build: Callable[[], Packets], transport: Callable) -> Path:
    """A capture of the same exchange once per port of PORTS (each its own client port, a second apart)."""
    frames = []
    for i, port in enumerate(PORTS):
        frames += transport(build(), port, 50_000 + i, T0 + i)
    wrpcap(str(path), frames)
    return path


@pytest.fixture(scope="module")
def model() -> FlowModel:
    return load(DEFAULT_MODEL)


def runs(model: FlowModel) -> dict[str, Options]:
    return {"prefilters and model": Options(model=model), "every dissector on every flow": Options(prefilter=False)}


CASES = {**{f"tcp {k}": (v, tcp_connection) for k, v in TCP_NEGATIVES.items()},
         **{f"udp {k}": (v, udp_exchange) for k, v in UDP_NEGATIVES.items()}}


@pytest.mark.parametrize("name", CASES)
def test_ordinary_protocols_get_no_tunnel_label_on_any_port(name, tmp_path, model):
    build, transport = CASES[name]
    path = on_every_port(tmp_path / "neg.pcap", build, transport)
    for how, opts in runs(model).items():
        records = list(classify_capture(str(path), opts))
        assert len(records) == len(PORTS), how
        assert {r.label for r in records} == {"none"}, (how, [(r.dst_port, r.label, r.evidence) for r in records])
        assert {risk for r in records for risk in r.risks} <= {FULLY_ENCRYPTED}, how


POSITIVE_CONTROLS = {
    "wireguard": (lambda: wireguard_session(12), udp_exchange),
    "shadowsocks": (SHADOWSOCKS["chacha20-poly1305"], tcp_connection),
}


@pytest.mark.parametrize("family", POSITIVE_CONTROLS)
def test_real_tunnels_written_the_same_way_are_labelled_on_every_port(family, tmp_path, model):
    build, transport = POSITIVE_CONTROLS[family]
    path = on_every_port(tmp_path / "pos.pcap", build, transport)
    for how, opts in runs(model).items():
        assert [r.label for r in classify_capture(str(path), opts)] == [family] * len(PORTS), how


@pytest.mark.parametrize("name", [k for k in CASES if k.startswith("tcp ")])
def test_ordinary_protocols_joined_mid_flow_get_no_tunnel_label(name, tmp_path):
    """The same connections with their opening (SYN, SYN-ACK, ACK and the first payloads) cut off, as a
    capture started late: the mid-flow readings (CSTP, wrapped OpenVPN) see only their random-looking or
    TLS-framed middles."""
    build, transport = CASES[name]
    path = on_every_port(tmp_path / "neg.pcap", build, transport)
    for drop in (3, 5):
        for opts in (Options(model=None, drop_first=drop), Options(model=None, drop_first=drop, prefilter=False)):
            records = list(classify_capture(str(path), opts))
            assert records and {r.label for r in records} == {"none"}, [(r.dst_port, r.label, r.evidence) for r in records]
