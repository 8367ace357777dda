"""Registry verdicts on flows classified from a real capture file (WireGuard, IPv4 and IPv6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from scapy.all import DNS, DNSQR, IP, UDP, Ether, IPv6, Raw, wrpcap

from tests import tunnelbytes as tb
from tests.registry_helpers import GOOD
from vpnid.classifier.audit.registry.match import Matcher, RegistryVerdict
from vpnid.classifier.audit.registry.registration import parse_registration
from vpnid.classifier.running.pipeline import classify_capture

DAY = datetime(2025, 3, 1, 12, tzinfo=UTC)  # every session starts this day (UTC)
CLIENT, SERVER, OTHER_CLIENT = "198.18.0.1", "198.18.0.2", "198.18.5.7"
MAC = "02:00:00:00:00:01"  # explicit: scapy would otherwise try to resolve it
CLIENT6, SERVER6 = "2001:db8:1::10", "2001:db8:2::1"
# name: (initiator, initiator port, responder, responder port)
SESSIONS = {
    "v4": (CLIENT, 40001, SERVER, 51820),
    "v6": (CLIENT6, 40002, SERVER6, 51820),
    "server_initiated": (SERVER, 51820, CLIENT, 40003),  # WireGuard peers both initiate handshakes
    "port_443": (OTHER_CLIENT, 40004, SERVER, 443),
}


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, object]:
    frames, t = [], DAY.timestamp()
    for seed, (a, ap, b, bp) in enumerate(SESSIONS.values(), start=1):
        ip = IPv6 if ":" in a else IP
        for i, (direction, payload) in enumerate(tb.wireguard_session(n_data=4, seed=seed)):
            src, sport, dst, dport = (a, ap, b, bp) if direction == 0 else (b, bp, a, ap)
            p = Ether(src=MAC, dst=MAC) / ip(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)
            p.time = t + seed * 10 + i * 0.01
            frames.append(p)
    dns = Ether(src=MAC, dst=MAC) / IP(src=CLIENT, dst="198.18.0.3") / UDP(sport=5353, dport=53) / DNS(qd=DNSQR(qname="a.lab"))
    dns.time = t + 100
    path = tmp_path_factory.mktemp("registry") / "tunnels.pcap"
    wrpcap(str(path), frames + [dns])
    recs = list(classify_capture(str(path)))
    by_name = {}
    for name, (a, ap, b, bp) in SESSIONS.items():
        (r,) = [r for r in recs if (r.src_ip, r.src_port, r.dst_ip, r.dst_port) == (a, ap, b, bp)]
        assert r.label == "wireguard"
        by_name[name] = r
    (by_name["dns"],) = [r for r in recs if r.dst_port == 53]
    assert by_name["dns"].label == "none"
    return by_name


def matcher(*rows: dict[str, str]) -> Matcher:
    return Matcher.build([parse_registration(GOOD | {"protocol": "wireguard"} | r) for r in rows])


def verdict(m: Matcher, rec) -> tuple[str, str | None]:
    v = m.check_one(rec)
    return v.registry, v.registration_id


COVER = {"v4": {"client_networks": "198.18.0.1/32", "server_endpoints": "198.18.0.2/32:51820"},
         "v6": {"client_networks": "2001:db8:1::/48", "server_endpoints": "[2001:db8:2::/64]:51820"}}


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("changes, expected", [
    ({}, "registered"),
    ({"valid_until": "2025-03-01"}, "registered"),  # the last valid day counts
    ({"valid_until": "2025-02-28"}, "expired"),
    ({"valid_from": "2025-03-02"}, "expired"),  # not yet valid counts as expired
    ({"status": "suspended"}, "suspended"),
    ({"status": "revoked"}, "revoked"),
    ({"protocol": "openvpn"}, "protocol_mismatch"),
    ({"protocol": "any"}, "registered"),
])
def test_each_status_on_captured_flows(records, family, changes, expected):
    m = matcher({"registration_id": "R1"} | COVER[family] | changes)
    assert verdict(m, records[family]) == (expected, "R1")


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_a_flow_outside_every_registration_is_unregistered(records, family):
    other = "v6" if family == "v4" else "v4"
    m = matcher({"registration_id": "R1"} | COVER[other])
    assert m.check_one(records[family]) == RegistryVerdict("unregistered", None)


def test_non_tunnel_flows_get_no_verdict_and_order_is_kept(records):
    m = matcher({"registration_id": "R1"} | COVER["v4"])
    recs = [records["dns"], records["v4"], records["port_443"]]
    assert m.check(recs) == [None, RegistryVerdict("registered", "R1", attributed_by="network"),
                           RegistryVerdict("unregistered", None)]


def test_server_endpoint_ports_must_match_when_given(records):
    m = matcher({"registration_id": "P443", "client_networks": "198.18.0.0/16", "server_endpoints": "198.18.0.2/32:443"})
    assert verdict(m, records["port_443"]) == ("registered", "P443")
    assert m.check_one(records["v4"]).registry == "unregistered"  # same server, port 51820
    m = matcher({"registration_id": "ANYPORT", "client_networks": "198.18.0.0/16", "server_endpoints": "198.18.0.0/24"})
    assert verdict(m, records["port_443"]) == verdict(m, records["v4"]) == ("registered", "ANYPORT")
    m = matcher({"registration_id": "NOSERVER", "client_networks": "198.18.0.1/32", "server_endpoints": ""})
    assert verdict(m, records["v4"]) == ("registered", "NOSERVER")


def test_the_server_may_be_the_initiator(records):
    m = matcher({"registration_id": "R1"} | COVER["v4"])
    assert verdict(m, records["server_initiated"]) == ("registered", "R1")


def test_overlapping_networks_the_best_verdict_wins(records):
    m = matcher(
        {"registration_id": "WIDE", "client_networks": "198.18.0.0/15", "server_endpoints": "", "status": "revoked"},
        {"registration_id": "HOST", "client_networks": "10.0.0.0/8 198.18.0.1/32", "server_endpoints": ""},
        {"registration_id": "MID", "client_networks": "198.18.0.0/31", "server_endpoints": "",
         "valid_until": "2024-12-31"},
    )
    assert verdict(m, records["v4"]) == ("registered", "HOST")  # in all three networks
    assert verdict(m, records["port_443"]) == ("revoked", "WIDE")  # 198.18.5.7: only in the /15
    m = matcher({"registration_id": "B", "client_networks": "198.18.0.0/24", "protocol": "openvpn"},
                {"registration_id": "A", "client_networks": "198.18.0.0/24", "valid_until": "2020-12-31"},
                {"registration_id": "C", "client_networks": "198.18.0.0/16", "protocol": "openvpn"})
    assert verdict(m, records["v4"]) == ("protocol_mismatch", "B")  # beats expired; ties: smallest id


def test_families_never_mix(records):
    m = matcher({"registration_id": "MAPPED", "client_networks": "::ffff:0:0/96", "server_endpoints": ""},
                {"registration_id": "ALL6", "client_networks": "::/0", "server_endpoints": ""})
    assert m.check_one(records["v4"]).registry == "unregistered"
    assert verdict(m, records["v6"]) == ("registered", "ALL6")


def test_an_empty_registry_leaves_every_tunnel_unregistered(records):
    m = Matcher.build([])
    assert [v and v.registry for v in m.check(list(records.values()))] == ["unregistered"] * 4 + [None]
