"""Asymmetric taps on real lab bytes: each committed capture cut to the packets one end sends.

A tunnel whose one direction shows its structure is still named (at a lower confidence, `one_way`);
a negative, one side of ordinary traffic, never is.
"""

from __future__ import annotations

import csv
from pathlib import Path

import dpkt
import pytest

from vpnid.classifier.running.pipeline import Options, classify_capture

CORPUS = Path(__file__).resolve().parent.parent / "pcaps" / "corpus"
CLIENT, SERVER = "198.18.0.1", "198.18.0.2"  # the lab's two ends (pcaps/lab/netns.py)


def one_side(src: Path, sender: str, out: Path) -> Path:
    """`src` reduced to the IP packets `sender` sent."""
    with src.open("rb") as f, out.open("wb") as g:
        reader = dpkt.pcap.Reader(f)
        writer = dpkt.pcap.Writer(g, linktype=reader.datalink(), snaplen=65535)
        for ts, buf in reader:
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and dpkt.utils.inet_to_str(ip.src) == sender:
                writer.writepkt(buf, ts)
    return out


def rows() -> list[dict[str, str]]:
    with (CORPUS / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("pcap, sender, family", [
    ("openconnect-dtls-443.pcap", CLIENT, "openconnect"),  # DTLS: the client's pure ACKs, sequence steady
    ("openconnect-tls-8443.pcap", CLIENT, "openconnect"),  # CSTP: the client's records alone
    ("wireguard-default-51820.pcap", SERVER, "wireguard"),
    ("ipsec-ikev2-encap.pcap", CLIENT, "ipsec"),
    ("openvpn-udp-tlscrypt-53.pcap", SERVER, "openvpn"),
])
def test_one_direction_of_a_tunnel_is_named(pcap: str, sender: str, family: str, tmp_path: Path) -> None:
    records = list(classify_capture(str(one_side(CORPUS / pcap, sender, tmp_path / pcap)), Options()))
    tunnel = max(records, key=lambda r: r.src2dst_packets + r.dst2src_packets)
    assert tunnel.label == family and tunnel.confidence < 0.99  # below a handshake seen both ways


@pytest.mark.parametrize("pcap", [r["pcap"] for r in rows() if r["family"] == "none"])
@pytest.mark.parametrize("sender", [CLIENT, SERVER])
def test_one_direction_of_a_negative_is_not_a_tunnel(pcap: str, sender: str, tmp_path: Path) -> None:
    records = classify_capture(str(one_side(CORPUS / pcap, sender, tmp_path / pcap)), Options())
    assert [r.label for r in records if r.label != "none"] == []
