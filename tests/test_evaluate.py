"""`vpnid eval` scoring rules on hand-made label files and records (no captures needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from vpnid.classifier.labelling.evaluate import LabelsError, print_report, read_labels, score
from vpnid.classifier.running.records import FlowRecord
from vpnid.features.families import TUNNEL_FAMILIES

HEADER = "pcap,transport,a_ip,a_port,b_ip,b_port,family,confidence\n"


def rec(src: str, sport: int, dst: str, dport: int, label: str, transport: str = "udp", fid: str = "F1") -> FlowRecord:
    return FlowRecord("x.pcap", fid, None, transport, src, sport, dst, dport, 0.0, 1.0, 1, 1, 100, 100,
                      label, 0.9, "signature", [], 1, "idle")


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text(HEADER + body)
    return p


def test_endpoints_match_in_either_order_and_paths_resolve_against_the_csv(tmp_path):
    rows, _ = read_labels(write(tmp_path, "caps/x.pcap,udp,10.0.0.2,1194,10.0.0.1,5000,openvpn,DPI\n"))
    assert rows[0].path == tmp_path / "caps" / "x.pcap"
    seen = []

    def records_of(path):
        seen.append(path)
        return [rec("10.0.0.1", 5000, "10.0.0.2", 1194, "openvpn")]

    report = score(rows, records_of)
    assert seen == [tmp_path / "caps" / "x.pcap"]
    assert report.families["openvpn"].recall == 1.0 and report.perfect


def test_tunnel_label_on_a_none_row_is_a_false_positive(tmp_path):
    rows, _ = read_labels(write(tmp_path, "x.pcap,udp,10.0.0.1,53,10.0.0.2,5353,none,DPI\n"))
    report = score(rows, lambda p: [rec("10.0.0.2", 5353, "10.0.0.1", 53, "wireguard")])
    assert [fp["predicted"] for fp in report.false_positives] == ["wireguard"]
    assert report.families["wireguard"].precision == 0.0
    assert not report.perfect


@pytest.mark.parametrize("family", TUNNEL_FAMILIES)
def test_every_tunnel_family_on_a_none_row_is_a_false_positive_and_printed(family, tmp_path):
    """Every family vpnid knows, the newer ones too (pptp, l2tp, openconnect, shadowsocks), alone or on one
    of several records of the row's flow."""
    rows, _ = read_labels(write(tmp_path, "x.pcap,tcp,10.0.0.1,1723,10.0.0.2,40000,none,DPI\n"
                                          "y.pcap,tcp,10.0.0.1,443,10.0.0.2,40001,none,DPI\n"))
    records = {tmp_path / "x.pcap": [rec("10.0.0.2", 40000, "10.0.0.1", 1723, family, "tcp")],
               tmp_path / "y.pcap": [rec("10.0.0.2", 40001, "10.0.0.1", 443, "none", "tcp", "a"),
                                     rec("10.0.0.2", 40001, "10.0.0.1", 443, family, "tcp", "b")]}
    report = score(rows, records.__getitem__)
    assert [(fp["line"], fp["predicted"]) for fp in report.false_positives] == [
        (2, family), (3, "+".join(sorted(("none", family))))]
    assert report.families["none"].correct == 0 and report.families[family].precision == 0.0
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert f"truth none, vpnid {family}" in text and "false positives: 2," in text


def test_a_row_is_correct_only_if_every_matching_record_carries_its_family(tmp_path):
    rows, _ = read_labels(write(tmp_path, "x.pcap,udp,10.0.0.1,1,10.0.0.2,2,ipsec,DPI\n"))
    report = score(rows, lambda p: [rec("10.0.0.1", 1, "10.0.0.2", 2, "ipsec", fid="a"),
                                    rec("10.0.0.1", 1, "10.0.0.2", 2, "none", fid="b")])
    assert report.misses[0]["predicted"] == "ipsec+none"
    assert report.misses[0]["flow_ids"] == ["a", "b"]


def test_untrusted_unknown_and_missing_rows(tmp_path):
    rows, _ = read_labels(write(tmp_path, "x.pcap,udp,10.0.0.1,1,10.0.0.2,2,openvpn,Match by port\n"
                                       "x.pcap,udp,10.0.0.1,3,10.0.0.2,4,unknown,\n"
                                       "x.pcap,tcp,10.0.0.1,5,10.0.0.2,6,none,DPI\n"))
    report = score(rows, lambda p: [])
    assert (report.untrusted, report.unscored, len(report.missing)) == (1, 1, 1)
    assert report.missing[0]["line"] == 4


def test_whole_capture_row_labels_every_flow_no_other_row_names(tmp_path):
    rows, _ = read_labels(write(tmp_path, "x.pcap,*,*,,,,wireguard,\nx.pcap,udp,10.0.0.1,53,10.0.0.9,53,none,\n"))
    recs = [rec("10.0.0.1", 1, "10.0.0.2", 51820, "wireguard", fid="a"),
            rec("10.0.0.1", 2, "10.0.0.2", 51820, "wireguard", fid="b"),
            rec("10.0.0.1", 53, "10.0.0.9", 53, "none", fid="c")]
    report = score(rows, lambda p: recs)
    assert report.families["wireguard"].rows == 2 and report.families["none"].rows == 1
    assert report.perfect


def test_other_vpn_truth_accepts_any_further_tunnel_family(tmp_path):
    rows, _ = read_labels(write(tmp_path, "x.pcap,tcp,10.0.0.1,1,10.0.0.2,443,other_vpn,DPI\n"))
    assert score(rows, lambda p: [rec("10.0.0.1", 1, "10.0.0.2", 443, "openconnect", "tcp")]).perfect
    assert not score(rows, lambda p: [rec("10.0.0.1", 1, "10.0.0.2", 443, "openvpn", "tcp")]).perfect


def test_a_capture_that_fails_is_reported_and_others_still_score(tmp_path):
    rows, _ = read_labels(write(tmp_path, "bad.pcap,udp,10.0.0.1,1,10.0.0.2,2,none,\n"
                                       "x.pcap,udp,10.0.0.1,1,10.0.0.2,2,none,\n"))

    def records_of(path):
        if path.name == "bad.pcap":
            raise ValueError("bad.pcap: not a capture file")
        return [rec("10.0.0.1", 1, "10.0.0.2", 2, "none")]

    report = score(rows, records_of)
    assert report.errors == [f"{tmp_path / 'bad.pcap'}: bad.pcap: not a capture file"]
    assert report.families["none"].correct == 1


def test_bad_label_files_name_the_file_and_line(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("pcap,family\nx,none\n")
    with pytest.raises(LabelsError, match=r"l\.csv: not a labelled-flows CSV \(missing column transport, a_ip"):
        read_labels(p)
    p.write_text(HEADER + "x.pcap,udp,10.0.0.300,1,10.0.0.2,2,none,\nx.pcap,udp,10.0.0.3,1,10.0.0.2,2,none,\n")
    rows, problems = read_labels(p)
    assert [r.line for r in rows] == [3]
    assert problems == [f"{p}:2: bad endpoint '10.0.0.300':'1' ('10.0.0.300' does not appear to be an IPv4 or IPv6 address)"]
    with pytest.raises(LabelsError, match=r"nope\.csv: No such file or directory"):
        read_labels(tmp_path / "nope.csv")


def test_truth_transport_keywords_match_record_protocol_numbers(tmp_path):
    rows, _ = read_labels(write(tmp_path, "x.pcap,vrrp,10.0.0.1,0,224.0.0.18,0,none,DPI\n"))
    assert rows[0].transport == "112"
    assert score(rows, lambda p: [rec("10.0.0.1", 0, "224.0.0.18", 0, "none", "112")]).perfect
