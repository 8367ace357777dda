"""`vpnid explain`: the deciding packets of a flow, with and without Wireshark's dissection."""

from __future__ import annotations

import re
import shutil

import pytest

from tests import trialdata as td
from vpnid.classifier.audit import explain
from vpnid.classifier.cli import explain as explain_cli
from vpnid.classifier.cli.main import main
from vpnid.classifier.running.pipeline import classify_capture


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    path = td.write_capture(tmp_path_factory.mktemp("explain") / "v6.pcap", 6)
    wg = next(r for r in classify_capture(str(path)) if r.dst_port == td.VERDICT_PORTS["unregistered"])
    return path, wg


def _explain(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _packet_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if re.match(r"\s+#\d+\s+frame", ln)]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_explain_shows_wiresharks_dissection_of_the_deciding_packets(capsys, capture):
    path, wg = capture
    code, out, err = _explain(capsys, str(path), "--flow", wg.flow_id)
    assert code == 0, err
    packets = _packet_lines(out)
    assert len(packets) == wg.verdict_packet + explain.CONTEXT  # from the first to two past the decision
    assert "decided the label" in packets[wg.verdict_packet - 1]
    assert "Wireshark: eth:ethertype:ipv6:udp:wg" in out
    assert "Type: Handshake Initiation (1)" in out and "Type: Handshake Response (2)" in out
    assert f"udp.port=={td.VERDICT_PORTS['unregistered']} as wg" in out  # not WireGuard's own port
    assert all(e.split()[0] in out for e in wg.evidence)
    frames = [re.search(r"frame (\d+)", ln).group(1) for ln in packets]
    assert frames == [str(61 + i) for i in range(len(frames))]  # the sixth session of 12 packets
    assert f"frame.number in {{{' '.join(frames)}}}" in out


def test_explain_without_tshark_says_so_and_still_lists_the_packets(capsys, capture, monkeypatch):
    path, wg = capture
    monkeypatch.setattr(explain_cli, "tshark_path", lambda: None)
    code, out, err = _explain(capsys, str(path), "--flow", wg.flow_id)
    assert code == 0, err
    assert "tshark is not installed" in out and not re.search(r"^\s+Wireshark: ", out, re.M)
    assert len(_packet_lines(out)) == wg.verdict_packet + explain.CONTEXT
    assert f"vpnid: wireguard (confidence {wg.confidence:.2f}), decided at packet {wg.verdict_packet}" in out


def test_explain_names_an_unknown_flow(capsys, capture):
    code, _out, err = _explain(capsys, str(capture[0]), "--flow", "Fnosuchflow")
    assert code == 1 and "no flow Fnosuchflow" in err


def test_long_flows_show_their_start_and_the_packets_around_the_decision():
    assert explain.shown_packets(100, 30) == [1, 2, 3, 28, 29, 30, 31, 32]
    assert explain.shown_packets(100, 5) == [1, 2, 3, 4, 5, 6, 7]
    assert explain.shown_packets(4, 4) == [1, 2, 3, 4]
    assert explain.shown_packets(9, None) == [1, 2, 3, 4, 5]
