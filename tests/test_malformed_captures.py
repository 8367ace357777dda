"""Broken and hostile captures as a user meets them: `vpnid classify` on the file, asserting the exact
message on stderr, the exit status and the flows written. (The reader's and decoder's own unit tests
cover the same damage one layer down; these pin what the user sees.)"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from scapy.all import GRE, IP, TCP, UDP, Ether, Raw, fragment, wrpcap
from scapy.contrib.gtp import GTP_U_Header

from tests import pcapbuild as pb
from tests import vpnbytes_wg_ipsec as vb
from tests.vpnbytes_openvpn import Session, framed
from vpnid.classifier.cli.main import main
from vpnid.classifier.running.pipeline import CaptureStats, classify_capture
from vpnid.features.decode import MAX_ENCAP

A, B = "198.18.0.1", "198.18.0.2"
T0 = 1_700_000_000
FRAME = bytes(Ether() / IP(src=A, dst=B) / UDP(sport=40000, dport=53) / Raw(b"x" * 20))  # 62 bytes
GOOD = pb.pcap_file([(FRAME, T0, 0), (FRAME, T0 + 1, 0)])


def classify(path: Path, capsys, *args: str) -> tuple[int, list[dict], str]:
    """Exit status, JSONL records and stderr of `vpnid classify --format jsonl PATH`."""
    rc = main(["classify", "--no-model", "--format", "jsonl", *args, str(path)])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def written(tmp_path: Path, data: bytes, name: str = "capture.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# (file bytes, message after "<path>: ", warning or error, packets per flow of the flows written)
DAMAGE = {
    "truncated_global_header": (
        GOOD[:10], "truncated pcap file header (10 of 24 bytes)", "error", None),
    "truncated_record": (
        GOOD[:-5], "truncated record at frame 2 (file ends 73 bytes into a 78-byte record); processed up to the cut",
        "warning", [2]),
    "caplen_larger_than_the_file": (
        pb.pcap_header() + pb.pcap_record(FRAME, T0, 0) + struct.pack("<IIII", T0 + 1, 0, 1000, 1000) + FRAME,
        "truncated record at frame 2 (file ends 78 bytes into a 1016-byte record); processed up to the cut",
        "warning", [2]),
    "absurd_caplen": (
        pb.pcap_header() + pb.pcap_record(FRAME, T0, 0) + struct.pack("<IIII", T0 + 1, 0, 0xFFFFFFFF, 62) + FRAME,
        "corrupt record header at frame 2 (captured length 4294967295 exceeds the limit of 262144 bytes); processed "
        + "up to it", "warning", [1]),
    "wrong_magic": (
        b"\x00\x01\x02\x03" + GOOD[4:], "not a capture file (unknown magic 0x00010203)", "error", None),
    "pcapng_block_length_not_a_multiple_of_4": (
        pb.shb() + pb.idb(1) + pb.epb(0, T0 * 10**6, FRAME) + struct.pack("<II", pb.EPB_TYPE, 13) + bytes(20),
        "corrupt block after frame 1 (block length 13); processed up to it", "warning", [1]),
    "pcapng_trailing_length_disagrees": (
        pb.shb() + pb.idb(1) + pb.epb(0, T0 * 10**6, FRAME) + pb.epb(0, T0 * 10**6, FRAME)[:-4] + b"\0\0\0\0",
        "corrupt block after frame 1 (trailing block length does not repeat 96); processed up to it", "warning",
        [1]),
    "pcapng_interface_timestamp_offset_overflows": (  # found by fuzzing: crashed with OverflowError
        pb.shb() + pb.idb(1, tsoffset=1 << 62) + pb.epb(0, 0, FRAME),
        "corrupt block after frame 0 (timestamp offset of 4611686018427387904 s); processed up to it",
        "warning", []),
    "unknown_link_type": (
        pb.pcap_file([(FRAME, T0, 0)], linktype=147), "1 frames with unsupported link type 147 skipped",
        "warning", []),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_capture_is_named_with_what_is_wrong_and_keeps_the_frames_before_it(case, tmp_path, capsys):
    data, message, level, flows = DAMAGE[case]
    path = written(tmp_path, data)
    rc, records, err = classify(path, capsys)
    assert err == f"vpnid: {level}: {path}: {message}\n"
    assert rc == (1 if level == "error" else 0)
    assert [r["src2dst_packets"] + r["dst2src_packets"] for r in records] == (flows or [])


def test_zero_length_records_are_frames_without_packets(tmp_path, capsys):
    data = pb.pcap_header() + pb.pcap_record(FRAME, T0, 0) + pb.pcap_record(b"", T0 + 1, 0) + pb.pcap_record(
        FRAME, T0 + 2, 0)
    path = written(tmp_path, data)
    rc, records, err = classify(path, capsys)
    assert (rc, err, [r["src2dst_packets"] for r in records]) == (0, "", [2])
    main(["classify", "--no-model", "--format", "table", "--all", str(path)])
    assert capsys.readouterr().out.splitlines()[-1] == "1 capture(s), 3 frames, 1 flows (none: 1)"


def test_file_names_are_printed_as_given_even_when_they_look_like_markup(tmp_path, capsys, monkeypatch):
    """Found while writing these tests: '[/i]' in a path crashed vpnid, '[bold]' vanished from it."""
    (tmp_path / "d[" / "i]").mkdir(parents=True)
    path = written(tmp_path / "d[" / "i]", GOOD[:10], "x[bold]y.pcap")  # the path reads .../d[/i]/x[bold]y.pcap
    rc, _, err = classify(path, capsys)
    assert (rc, err) == (1, f"vpnid: error: {path}: truncated pcap file header (10 of 24 bytes)\n")
    monkeypatch.chdir(path.parent)
    written(path.parent, GOOD, "x[bold]y.pcap")
    assert main(["classify", "--no-model", "--format", "table", "--all", "-o", "table.txt", "x[bold]y.pcap"]) == 0
    assert "│ x[bold]y.pcap │" in (path.parent / "table.txt").read_text()


# --- IP fragments ---------------------------------------------------------------------------------------


def fragments_pcap(path: Path, frames: list[bytes]) -> Path:
    path.write_bytes(pb.pcap_file([(f, T0, i) for i, f in enumerate(frames)], linktype=101))
    return path


def test_overlapping_fragments_with_different_bytes_drop_the_datagram_and_are_counted(tmp_path, capsys):
    """The teardrop-style overlap: the second fragment rewrites bytes the first already gave."""
    dgram = IP(src=A, dst=B, id=7) / UDP(sport=40000, dport=500) / bytes(range(200))
    first, second = fragment(dgram, 104)[:2]
    liar = IP(bytes(second))
    liar.frag -= 1  # starts 8 bytes early, over data the first fragment gave
    liar[Raw].load = b"\xee" * len(liar[Raw].load)
    del liar.chksum
    clean = IP(src=A, dst=B, id=8) / UDP(sport=40001, dport=500) / bytes(200)
    path = fragments_pcap(tmp_path / "overlap.pcap", [bytes(first), bytes(liar), *map(bytes, fragment(clean, 104))])
    rc, records, err = classify(path, capsys)
    assert (rc, err, [r["src_port"] for r in records]) == (0, "", [40001])
    stats = CaptureStats()
    list(classify_capture(str(path), stats=stats))
    c = stats.counters
    assert (c["fragments"], c["fragment_overlaps"], c["fragments_dropped"], c["reassembled"]) == (4, 1, 2, 1)


def test_endless_fragments_are_bounded_by_the_reassembler_limits_and_counted(tmp_path):
    """10,000 first fragments of datagrams that never complete, then one datagram growing by 8-byte
    fragments far past 65,535 bytes: the reassembler evicts beyond 4,096 datagrams in progress and
    gives the giant up at the IP length limit, and memory stays small."""
    never = [bytes(IP(src=A, dst=B, id=i, flags="MF", proto=17) / bytes(64)) for i in range(10_000)]
    giant = [bytes(IP(src=B, dst=A, id=1, flags="MF", frag=k, proto=17) / bytes(8)) for k in range(8200)]
    path = fragments_pcap(tmp_path / "endless.pcap", never + giant)
    stats = CaptureStats()
    assert list(classify_capture(str(path), stats=stats)) == []
    c = stats.counters
    assert (c["fragments"], c["fragment_evictions"], c["fragment_oversize"]) == (18_200, 10_000 - 4096 + 1, 1)
    assert c["fragments_dropped"] == 10_000 - 4096 + 1 + 8200


# --- protocol length fields that lie ------------------------------------------------------------------


def udp_flow(path: Path, payloads: list[tuple[int, bytes]], port: int) -> Path:
    pkts = []
    for i, (d, p) in enumerate(payloads):
        ip = IP(src=A, dst=B) if d == 0 else IP(src=B, dst=A)
        pkt = Ether() / ip / UDP(sport=port, dport=port) / Raw(p)
        pkt.time = T0 + i / 100
        pkts.append(pkt)
    wrpcap(str(path), pkts)
    return path


def tcp_flow(path: Path, payloads: list[tuple[int, bytes]]) -> Path:
    pkts, seq = [], [1000, 5000]
    for i, (d, p) in enumerate(payloads):
        ip, ports = (IP(src=A, dst=B), (40000, 1194)) if d == 0 else (IP(src=B, dst=A), (1194, 40000))
        pkt = Ether() / ip / TCP(sport=ports[0], dport=ports[1], flags="PA", seq=seq[d]) / Raw(p)
        seq[d] += len(p)
        pkt.time = T0 + i / 100
        pkts.append(pkt)
    wrpcap(str(path), pkts)
    return path


def lying_ike(message: bytes, delta: int) -> bytes:
    return message[:24] + struct.pack("!I", len(message) + delta) + message[28:]


@pytest.mark.parametrize("delta", [0, 1000, -100])
def test_ike_whose_length_field_lies_is_not_labelled_ipsec(delta, tmp_path, capsys):
    ispi = b"\x11" * 8
    exchange = [(0, vb.ikev2_sa_init_request(ispi)), (1, vb.ikev2_sa_init_response(ispi, b"\x22" * 8))]
    path = udp_flow(tmp_path / "ike.pcap", [(d, lying_ike(m, delta)) for d, m in exchange], 500)
    rc, records, err = classify(path, capsys)
    assert (rc, err, [(r["label"], r["src2dst_packets"], r["dst2src_packets"]) for r in records]) == (
        0, "", [("ipsec" if delta == 0 else "none", 1, 1)])


PREFIXES = {"true": framed, "0xffff": lambda p: b"\xff\xff" + p,
            "7 too many": lambda p: struct.pack(">H", len(p) + 7) + p}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_openvpn_tcp_whose_length_prefixes_lie_is_not_labelled_openvpn(prefix, tmp_path, capsys):
    path = tcp_flow(tmp_path / "ovpn.pcap", [(d, PREFIXES[prefix](p)) for d, p in Session().handshake()])
    rc, records, err = classify(path, capsys)
    assert (rc, err, [(r["transport"], r["label"], r["src2dst_packets"]) for r in records]) == (
        0, "", [("tcp", "openvpn" if prefix == "true" else "none", 5)])


# --- tunnel loops ------------------------------------------------------------------------------------


LAYERS = {"gre": lambda k: GRE(), "gtp": lambda k: UDP(sport=2152, dport=2152) / GTP_U_Header(teid=k)}


@pytest.mark.parametrize("kind", LAYERS)
def test_tunnels_nested_past_the_depth_limit_stay_a_flow_of_the_layer_where_decapsulation_stopped(
        kind, tmp_path, capsys):
    depth = 3 * MAX_ENCAP
    pkt = IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=1, dport=2) / Raw(b"inner")
    for k in range(depth):  # layer k + 1 from the inside sends from 192.0.2.(k + 1)
        pkt = IP(src=f"192.0.2.{k + 1}", dst="192.0.2.100") / LAYERS[kind](k) / pkt
    frame = Ether() / pkt
    frame.time = T0
    wrpcap(str(tmp_path / "loop.pcap"), [frame])
    rc, records, err = classify(tmp_path / "loop.pcap", capsys)
    assert (rc, err) == (0, "")
    assert [(r["transport"], r["src_ip"]) for r in records] == [
        ("gre" if kind == "gre" else "udp", f"192.0.2.{depth - MAX_ENCAP}")]
