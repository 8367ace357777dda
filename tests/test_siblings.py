"""A confirmed data channel labels its control channel: same client, server and port, open at the time."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from tests.flowbuild import P, table
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.dissectors.base import Dissector, FlowPacket
from vpnid.features.flows import FlowTable, FlowTableConfig
from vpnid.features.packets import IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_SYN, address_text
from vpnid.features.siblings import SiblingPlugin

ROOT = Path(__file__).resolve().parents[1]
CLIENT, SERVER, OTHER = "198.18.0.1", "198.18.0.2", "198.18.0.3"


class DataChannel(Dissector):
    """Stand-in data-channel dissector: confirms a UDP flow whose first payload is b'DATA'."""

    family: ClassVar[str] = "testvpn"
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_UDP})
    sibling_transport: ClassVar[int | None] = IPPROTO_TCP

    def on_packet(self, pkt: FlowPacket) -> None:
        if pkt.payload == b"DATA":
            self.confirm(pkt, 0.9, "data channel")
        else:
            self.reject("not data")


def tcp(t0: float, t1: float, sport: int, dport: int = 443, dst: str = SERVER) -> list[P]:
    return [P(t0, CLIENT, dst, sport, dport, 6, TCP_SYN), P(t0 + 0.1, CLIENT, dst, sport, dport, 6, TCP_ACK, b"hi"),
            P(t1, CLIENT, dst, sport, dport, 6, TCP_FIN | TCP_ACK)]


def udp(t: float, payload: bytes = b"DATA", dport: int = 443) -> list[P]:
    return [P(t, CLIENT, SERVER, 40000, dport, 17, 0, payload), P(t + 0.1, SERVER, CLIENT, dport, 40000, 17, 0, payload)]


def labels(packets: list[P]) -> dict[tuple[str, int, str, int], str | None]:
    ft = FlowTable([DataChannel], FlowTableConfig(), plugins=[SiblingPlugin([DataChannel])])
    ft.add(table(sorted(packets, key=lambda p: p.ts)))
    return {(address_text(f.dst), f.dport, "tcp" if f.proto == 6 else "udp", f.sport):
            f.verdict.family if f.verdict else None for f in ft.close()}


def test_control_channel_open_while_the_data_channel_runs_is_labelled():
    got = labels(tcp(0.0, 30.0, 50001) + udp(1.0))
    assert got[(SERVER, 443, "tcp", 50001)] == "testvpn" and got[(SERVER, 443, "udp", 40000)] == "testvpn"


def test_flows_that_do_not_share_client_server_and_port_or_ended_before_are_left_alone():
    got = labels(tcp(0.0, 0.5, 50001)  # closed before the data channel started (an earlier HTTPS visit)
                 + tcp(0.0, 30.0, 50002, dport=8443)  # another port on the same server
                 + tcp(0.0, 30.0, 50003, dst=OTHER)  # another server
                 + udp(1.0))
    assert got[(SERVER, 443, "tcp", 50001)] is None
    assert got[(SERVER, 8443, "tcp", 50002)] is None
    assert got[(OTHER, 443, "tcp", 50003)] is None


def test_data_channel_first_seen_from_the_server_still_names_its_control_channel():
    server_first = [P(1.0, SERVER, CLIENT, 443, 40000, 17, 0, b"DATA"),
                    P(1.1, CLIENT, SERVER, 40000, 443, 17, 0, b"DATA")]
    assert labels(tcp(0.0, 30.0, 50001) + server_first)[(SERVER, 443, "tcp", 50001)] == "testvpn"


def test_an_unconfirmed_udp_flow_names_no_control_channel():
    got = labels(tcp(0.0, 30.0, 50001) + udp(1.0, payload=b"QUIC"))
    assert got[(SERVER, 443, "tcp", 50001)] is None


def test_lab_openconnect_cstp_connection_is_labelled_through_its_dtls_channel():
    records = {r.transport: r for r in classify_capture(str(ROOT / "pcaps/corpus/openconnect-dtls-443.pcap"),
                                                         Options())}
    assert records["udp"].label == records["tcp"].label == "openconnect"
    assert records["tcp"].confidence == 0.8 and records["udp"].flow_id in records["tcp"].evidence[0]
