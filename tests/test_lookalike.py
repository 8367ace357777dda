"""Look-alike negatives (`vpnid lookalike`, issue #14): ordinary flows moved onto VPN ports stay `none`;
the rewrite keeps checksums right and the bytes as they were, so a real tunnel moved the same way keeps
its label (and `vpnid eval` counts it as the false positive it would be on a `none` row)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, IPv6, Raw

from vpnid.classifier.cli.main import main
from vpnid.classifier.labelling.evaluate import read_labels, score
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.families import NONE
from vpnid.pcaps.lookalike import VPN_PORTS, build, rewrite_port

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "pcaps" / "corpus"
EXTERNAL = Path(os.environ.get("VPNID_EXTERNAL", ROOT.parent / "shared" / "corpus" / "external"))  # shared/ beside the checkout


def evaluate(labels: Path):
    rows, problems = read_labels(labels)
    assert not problems
    opts = Options()
    return score(rows, lambda p: classify_capture(str(p), opts, warn=lambda _m: None))


@pytest.mark.parametrize("ip", [IP(src="192.0.2.1", dst="192.0.2.2"), IPv6(src="2001:db8::1", dst="2001:db8::2")],
                         ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("l4", [TCP(sport=40000, dport=80, flags="PA"), UDP(sport=40000, dport=5353)],
                         ids=["tcp", "udp"])
@pytest.mark.parametrize("which", [0, 1])
def test_the_rewritten_port_carries_the_checksum_a_stack_would_compute(ip, l4, which):
    raw = bytes(ip / l4 / Raw(b"look-alike payload"))
    header = 20 if ip.version == 4 else 40
    out = rewrite_port(raw, 6 if l4.name == "TCP" else 17, header, which, 51820)
    pkt = (IP if ip.version == 4 else IPv6)(out)
    layer = pkt[TCP] if TCP in pkt else pkt[UDP]
    assert (layer.sport, layer.dport) == ((51820, l4.dport) if which == 0 else (40000, 51820))
    fresh = (IP if ip.version == 4 else IPv6)(out)
    del fresh[type(layer)].chksum
    assert layer.chksum == (IP if ip.version == 4 else IPv6)(bytes(fresh))[type(layer)].chksum
    assert out[:header] == raw[:header] and out[header + 8 + 12 * (l4.name == "TCP"):] == raw[header + 8 + 12 * (l4.name == "TCP"):]


def test_a_udp_datagram_without_checksum_stays_without_one():
    raw = bytearray(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=40000, dport=53) / Raw(b"q")))
    raw[26:28] = b"\0\0"
    assert rewrite_port(bytes(raw), 17, 20, 1, 500)[26:28] == b"\0\0"


def test_lab_negatives_on_vpn_ports_get_no_tunnel_label(tmp_path):
    """Every TCP/UDP flow of the committed lab negatives (HTTP, TLS 1.2/1.3, DNS, SSH, QUIC, DTLS) on each
    VPN port."""
    summary = build([CORPUS / "manifest.csv"], tmp_path)
    assert set(summary.flows) == set(VPN_PORTS) and len(set(summary.flows.values())) == 1
    assert summary.flows[1194] >= 7 and not summary.rows_without_packets
    report = evaluate(tmp_path / "labels.csv")
    assert not report.errors and not report.missing
    assert report.false_positives == [] and report.families[NONE].rows == sum(summary.flows.values())


def test_a_tunnel_moved_onto_other_ports_keeps_its_label_and_counts_as_a_false_positive(tmp_path):
    """The check that the two above can fail: tunnels named `none` in a labels file are moved like
    ordinary flows, and every look-alike of them is a false positive of its family."""
    (tmp_path / "src").mkdir()
    for name in ("wireguard-default-51820.pcap", "openvpn-udp-plain-1194.pcap"):
        (tmp_path / "src" / name).symlink_to(CORPUS / name)
    labels = tmp_path / "src" / "labels.csv"
    labels.write_text("pcap,transport,a_ip,a_port,b_ip,b_port,family\n"
                      "wireguard-default-51820.pcap,*,*,,,,none\nopenvpn-udp-plain-1194.pcap,*,*,,,,none\n")
    build([labels], tmp_path / "out", ports=(53, 443, 4500))
    report = evaluate(tmp_path / "out" / "labels.csv")
    fps = Counter((fp["predicted"], fp["endpoints"][1].rsplit(":", 1)[1]) for fp in report.false_positives)
    assert fps == {(family, port): 1 for family in ("wireguard", "openvpn") for port in ("53", "443", "4500")}


def test_the_command_writes_captures_and_labels(tmp_path, capsys):
    assert main(["lookalike", "-o", str(tmp_path), "--ports", "1701,1723", str(CORPUS / "manifest.csv")]) == 0
    out = capsys.readouterr().out
    assert "flows per port: 1701: " in out and sorted(p.name for p in tmp_path.iterdir()) == ["1701", "1723", "labels.csv"]


@pytest.mark.slow
@pytest.mark.skipif(not (EXTERNAL / "truth.csv").exists(), reason="dev set not present beside the checkout")
def test_dev_set_negatives_on_vpn_ports_get_no_tunnel_label(tmp_path):
    """The dev set's trusted `none` TCP/UDP flows (web, messengers, games, P2P, DNS...) on each VPN port."""
    summary = build([EXTERNAL / "truth.csv"], tmp_path)
    assert min(summary.flows.values()) > 1800
    report = evaluate(tmp_path / "labels.csv")
    assert not report.errors and not report.missing
    assert report.false_positives == [], report.false_positives[:20]


def test_captures_whose_names_differ_only_in_replaced_characters_get_their_own_files(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    for name in ("a/b.pcap", "a_b.pcap"):
        (tmp_path / "src" / name).symlink_to(CORPUS / "neg-dns-53.pcap")
    labels = tmp_path / "src" / "labels.csv"
    labels.write_text("pcap,transport,a_ip,a_port,b_ip,b_port,family\na/b.pcap,*,*,,,,none\na_b.pcap,*,*,,,,none\n")
    summary = build([labels], tmp_path / "out", ports=(1194,))
    assert sorted(p.name for p in (tmp_path / "out" / "1194").iterdir()) == ["a_b-2.pcap", "a_b.pcap"]
    report = evaluate(tmp_path / "out" / "labels.csv")
    assert report.families[NONE].rows == report.families[NONE].correct == summary.flows[1194] > 2
