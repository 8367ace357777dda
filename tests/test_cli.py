"""The `vpnid` command as a user runs it: formats, determinism, errors naming the bad file."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from scapy.all import DNS, DNSQR, IP, TCP, UDP, Ether, Raw, wrpcap

from tests import tunnelbytes as tb
from vpnid.classifier.running.output import write_csv_batches, write_jsonl_batches
from vpnid.classifier.running.records import FlowRecord, output_fields, records_schema

LAB_A, LAB_B, LAB_C = "198.18.0.1", "198.18.0.2", "198.18.0.3"


def vpnid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnid.classifier.cli.main", *args], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=120)


@pytest.fixture(scope="module")
def mixed_pcap(tmp_path_factory) -> Path:
    """WireGuard on UDP 53 and DNS on UDP 51820 (ports swapped on purpose), plus a TCP exchange."""
    pkts = []
    t = 1_700_000_000.0
    for i, (direction, payload) in enumerate(tb.wireguard_session(n_data=6)):
        src, dst = (LAB_A, LAB_B) if direction == 0 else (LAB_B, LAB_A)
        sport, dport = (40001, 53) if direction == 0 else (53, 40001)
        pkts.append((t + i * 0.01, Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)))
    for i in range(3):
        q = Ether() / IP(src=LAB_A, dst=LAB_C) / UDP(sport=51820, dport=51820) / DNS(id=i, qd=DNSQR(qname="a.lab"))
        r = Ether() / IP(src=LAB_C, dst=LAB_A) / UDP(sport=51820, dport=51820) / DNS(id=i, qr=1, qd=DNSQR(qname="a.lab"))
        pkts += [(t + 1 + i, q), (t + 1.1 + i, r)]
    for i, flags in enumerate(("S", "SA", "A", "PA", "FA", "FA", "A")):
        fwd = i % 2 == 0
        ip = IP(src=LAB_A, dst=LAB_C) if fwd else IP(src=LAB_C, dst=LAB_A)
        tcp = TCP(sport=45000, dport=8080, flags=flags) if fwd else TCP(sport=8080, dport=45000, flags=flags)
        pkts.append((t + 2 + i * 0.01, Ether() / ip / tcp / (Raw(b"GET / HTTP/1.1\r\n\r\n") if flags == "PA" else b"")))
    frames = []
    for ts, p in pkts:
        p.time = ts
        frames.append(p)
    path = tmp_path_factory.mktemp("cli") / "mixed.pcap"
    wrpcap(str(path), frames)
    return path


def test_jsonl_has_the_documented_fields_and_labels_by_structure_not_port(mixed_pcap):
    res = vpnid("classify", "--format", "jsonl", str(mixed_pcap))
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert list(recs[0]) == [
        "pcap", "flow_id", "community_id", "transport", "src_ip", "src_port", "dst_ip", "dst_port",
        "first_seen", "last_seen", "src2dst_packets", "dst2src_packets", "src2dst_bytes", "dst2src_bytes",
        "label", "confidence", "method", "evidence", "verdict_packet", "end_reason", "risks"]
    assert all(r["risks"] == [] for r in recs)
    by_port = {(r["transport"], r["dst_port"]): r for r in recs}
    wg = by_port[("udp", 53)]
    assert (wg["label"], wg["src_ip"], wg["src_port"]) == ("wireguard", LAB_A, 40001)
    assert wg["confidence"] >= 0.9 and wg["verdict_packet"] == 2
    assert by_port[("udp", 51820)]["label"] == "none"
    tcp = by_port[("tcp", 8080)]
    assert (tcp["label"], tcp["src2dst_packets"], tcp["dst2src_packets"], tcp["end_reason"]) == ("none", 4, 3, "fin")


def test_output_is_byte_identical_across_runs_and_csv_has_the_same_rows(mixed_pcap, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert vpnid("classify", "-o", str(a), str(mixed_pcap)).returncode == 0
    assert vpnid("classify", "--format", "jsonl", "-o", str(b), str(mixed_pcap)).returncode == 0
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 0
    res = vpnid("classify", "--format", "csv", str(mixed_pcap))
    lines = res.stdout.splitlines()
    assert lines[0].startswith("pcap,flow_id,community_id,transport,src_ip")
    assert len(lines) - 1 == len(a.read_text().splitlines())


def test_risks_are_a_list_in_jsonl_and_joined_like_evidence_in_csv():
    rec = FlowRecord("x.pcap", "F1", None, "tcp", LAB_A, 50000, LAB_B, 443, 0.0, 1.0, 9, 9, 900, 900, "none", 0.0,
                     "none", ["a", "b"], None, "fin", risks=["fully_encrypted", "other"])
    jsonl, table = io.StringIO(), io.StringIO()
    batch = pa.RecordBatch.from_pylist([rec.as_dict()], schema=records_schema(False))
    write_jsonl_batches([batch], jsonl, output_fields(False))
    write_csv_batches([batch], table, output_fields(False))
    assert json.loads(jsonl.getvalue())["risks"] == ["fully_encrypted", "other"]
    row = dict(zip(*csv.reader(io.StringIO(table.getvalue()))))
    assert (row["evidence"], row["risks"]) == ("a | b", "fully_encrypted | other")


def test_a_file_that_is_not_a_capture_is_named_and_the_others_still_run(mixed_pcap, tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("<html>not a capture</html>")
    res = vpnid("classify", "--format", "jsonl", str(bogus), str(mixed_pcap))
    assert res.returncode == 1
    assert f"vpnid: error: {bogus}: not a capture file (unknown magic 0x3c68746d)" in res.stderr
    assert any(json.loads(line)["label"] == "wireguard" for line in res.stdout.splitlines())


def test_table_lists_tunnels_and_a_summary(mixed_pcap):
    res = vpnid("classify", "--format", "table", str(mixed_pcap))
    assert res.returncode == 0
    assert "wireguard" in res.stdout and "1 capture(s)" in res.stdout and "none: 2" in res.stdout


def test_help_teaches_with_examples():
    res = vpnid("classify", "--help")
    assert res.returncode == 0 and "examples:" in res.stdout and "--idle-timeout" in res.stdout


def test_the_command_list_is_the_one_the_command_modules_register(monkeypatch):
    """`vpnid --help` and errors without a command list the commands from `main.COMMANDS`, importing none of
    their modules: the list must read exactly as in the parser every module registers into."""
    from vpnid.classifier.cli.main import build_parser

    monkeypatch.setenv("COLUMNS", "120")
    full, listing = build_parser(), build_parser(listing=True)
    assert listing.format_help() == full.format_help()
    assert listing.format_usage() == full.format_usage()
    commands = [next(a for a in p._actions if a.dest == "command").choices for p in (full, listing)]
    assert list(commands[0]) == list(commands[1])


@pytest.mark.parametrize(("args", "loaded"), [(["--help"], "[]"), ([], "[]"), (["bogus"], "[]"),
                                              (["registry", "--help"], "[]"), (["--version"], "['numpy']")])
def test_listing_commands_registry_help_and_version_load_no_flow_engine(args, loaded):
    code = ("import sys\nfrom vpnid.classifier.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nprint(sorted({'numba', 'pyarrow', 'numpy'} & sys.modules.keys()))")
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert res.stdout.splitlines()[-1] == loaded, res.stderr


def test_the_terminal_spinner_counts_frames_and_ended_flows_once_per_chunk(mixed_pcap, monkeypatch):
    """On a terminal, `classify` shows how far it got in a capture (frames read, flows ended), updated as each
    chunk's flows come out rather than once per record (flows that end mid-capture: a short idle timeout)."""
    from vpnid.classifier.cli import classify
    from vpnid.classifier.running.pipeline import Options

    shown: list[str] = []

    class Status:
        def __enter__(self) -> Status:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, text: object) -> None:
            shown.append(str(text))

    class Terminal:
        is_terminal = True

        def status(self, text: object, spinner: str) -> Status:
            shown.append(str(text))
            return Status()

    monkeypatch.setattr(classify, "err", Terminal())
    stats: dict = {}
    records = list(classify._records([str(mixed_pcap)], Options(idle_timeout=0.5, chunk_frames=8), stats, []))
    counts = [tuple(int(s.split(": ")[1].split()[i].replace(",", "")) for i in (0, 2)) for s in shown[1:]]
    assert shown[0] == f"reading {mixed_pcap}" and len({frames for frames, _ in counts}) >= 2
    assert counts == sorted(set(counts))  # one update per chunk or group of ended flows, none per record
    assert shown[-1] == f"reading {mixed_pcap}: {stats[str(mixed_pcap)].frames} frames, {len(records)} flows ended"
