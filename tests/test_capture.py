"""vpnid.features.capture on capture files the tests write themselves (pcapbuild for exact bytes, scapy for a
third-party writer, tshark via pyshark as the reference reader)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from tests import pcapbuild as pb
from vpnid.features.capture import read_chunks
from vpnid.features.capture import sources as capture
from vpnid.features.packets import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW, CaptureError

FRAMES = [bytes(range(i, i + 20 + i)) for i in range(5)]  # five frames of different sizes and contents
T0 = 1_700_000_000


def write(tmp_path: Path, data: bytes, name: str = "cap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_all(path: Path | str, **kwargs) -> tuple[list[tuple], list[str]]:
    """Every frame as (bytes, ts_ns, wirelen, linktype, frame), and the warnings given."""
    warnings: list[str] = []
    chunks = list(read_chunks(path, warn=warnings.append, **kwargs))
    for c in chunks:  # every captured length lies within the chunk's buffer
        assert np.all(c.offset + c.caplen <= len(c.data)) and np.all(c.caplen >= 0)
    frames = [
        (c.data[c.offset[i] : c.offset[i] + c.caplen[i]].tobytes(), int(c.ts_ns[i]), int(c.wirelen[i]),
         int(c.linktype[i]), int(c.frame[i]))
        for c in chunks
        for i in range(len(c))
    ]
    return frames, warnings


def five_frame_pcap() -> bytes:
    return pb.pcap_file([(d, T0 + i, i * 1000) for i, d in enumerate(FRAMES)])


def two_interface_pcapng() -> bytes:
    """Interface 0: Ethernet, nanoseconds, offset +100 s; interface 1: raw IP (DLT 14), 2^-20 s ticks.
    An SPB, an obsolete PB and skippable blocks (NRB, ISB, custom) sit between the packets; Wireshark
    numbers the custom block as frame 4, so the PB is frame 5."""
    return b"".join([
        pb.shb(),
        pb.idb(LINKTYPE_ETHERNET, tsresol=9, tsoffset=100),
        pb.block(pb.NRB_TYPE, b"\x00\x00\x00\x00"),
        pb.idb(14, tsresol=0x80 | 20),
        pb.epb(0, T0 * 10**9 + 123_456_789, FRAMES[0]),
        pb.epb(1, (T0 << 20) + (1 << 19), FRAMES[1]),
        pb.block(pb.ISB_TYPE, bytes(12)),
        pb.spb(FRAMES[2]),
        pb.block(pb.CUSTOM_TYPE, b"vendor data"),
        pb.pb(1, (T0 + 1) << 20, FRAMES[3]),
    ])


TWO_INTERFACE_EXPECTED = [
    (FRAMES[0], (T0 + 100) * 10**9 + 123_456_789, len(FRAMES[0]), LINKTYPE_ETHERNET, 1),
    (FRAMES[1], T0 * 10**9 + 500_000_000, len(FRAMES[1]), LINKTYPE_RAW, 2),
    (FRAMES[2], 0, len(FRAMES[2]), LINKTYPE_ETHERNET, 3),  # SPB: interface 0, no timestamp (0, as in tshark)
    (FRAMES[3], (T0 + 1) * 10**9, len(FRAMES[3]), LINKTYPE_RAW, 5),
]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("magic, fraction, ts_ns", [
    (pb.PCAP_MAGIC_US, 123_456, T0 * 10**9 + 123_456_000),
    (pb.PCAP_MAGIC_NS, 123_456_789, T0 * 10**9 + 123_456_789),
])
def test_classic_pcap_magics(tmp_path, order, magic, fraction, ts_ns):
    record = pb.pcap_record(FRAMES[0], T0, fraction, order, wirelen=1500)
    data = pb.pcap_header(order, magic, LINKTYPE_LINUX_SLL) + record
    frames, warnings = read_all(write(tmp_path, data))
    assert frames == [(FRAMES[0], ts_ns, 1500, LINKTYPE_LINUX_SLL, 1)]
    assert warnings == []


@pytest.mark.parametrize("dlt", [12, 14, LINKTYPE_RAW])
def test_raw_ip_dlts_become_linktype_raw(tmp_path, dlt):
    frames, _ = read_all(write(tmp_path, pb.pcap_file([(FRAMES[0], T0, 0)], linktype=dlt)))
    assert frames[0][3] == LINKTYPE_RAW


def test_pcap_linktype_ignores_fcs_bits(tmp_path):
    data = pb.pcap_file([(FRAMES[0], T0, 0)], linktype=0x1000_0000 | LINKTYPE_ETHERNET)
    frames, _ = read_all(write(tmp_path, data))
    assert frames[0][3] == LINKTYPE_ETHERNET


def test_zero_length_record(tmp_path):
    frames, warnings = read_all(write(tmp_path, pb.pcap_file([(b"", T0, 0), (FRAMES[0], T0, 1)])))
    assert [f[0] for f in frames] == [b"", FRAMES[0]]
    assert warnings == []


def test_pcapng_interfaces_resolutions_and_block_kinds(tmp_path):
    frames, warnings = read_all(write(tmp_path, two_interface_pcapng()))
    assert frames == TWO_INTERFACE_EXPECTED
    assert warnings == []


@pytest.mark.parametrize("tsresol, raw, ts_ns", [
    (None, T0 * 10**6 + 1, T0 * 10**9 + 1_000),  # default: microseconds
    (0, T0, T0 * 10**9),
    # Ticks this fine only reach 1970-07 in 64 bits.
    (12, 10**7 * 10**12 + 123_456_789_999, 10**7 * 10**9 + 123_456_789),  # picoseconds, floored to ns
    (0x80 | 40, (10**7 << 40) + (1 << 39) + (1 << 38), 10**7 * 10**9 + 750_000_000),  # 2^-40 s ticks
])
def test_pcapng_timestamp_resolutions(tmp_path, tsresol, raw, ts_ns):
    frames, _ = read_all(write(tmp_path, pb.shb() + pb.idb(1, tsresol=tsresol) + pb.epb(0, raw, FRAMES[0])))
    assert frames[0][1] == ts_ns


@pytest.mark.parametrize("chunk_frames", [1, 2, 7, 262_144])
def test_pcapng_runs_of_packet_blocks_in_both_byte_orders_whatever_the_chunk_size(tmp_path, chunk_frames):
    """Long runs of EPB, SPB and PB (the compiled walk) between section headers and interfaces (the Python
    walk), in both byte orders, cut at every chunk size: each frame once, in order, numbered as Wireshark
    numbers them (the custom block takes a number), with its interface's link type and timestamp (PBs on
    the section's second interface)."""
    def section(order: str) -> tuple[bytes, list[tuple[bytes, int, int, int]]]:
        blocks, want = [pb.shb(order), pb.idb(LINKTYPE_ETHERNET, order), pb.idb(LINKTYPE_RAW, order)], []
        for i in range(12):
            data, ts = bytes([i]) * (20 + i), (T0 + i) * 10**6
            kind = i % 4
            if kind == 3:
                blocks.append(pb.block(pb.CUSTOM_TYPE, b"vendor", order))
                continue
            blocks.append([pb.epb(0, ts, data, order), pb.spb(data, order), pb.pb(1, ts, data, order)][kind])
            want.append((data, 0 if kind == 1 else ts * 1000, LINKTYPE_RAW if kind == 2 else LINKTYPE_ETHERNET, i))
        return b"".join(blocks), want

    (little, want_little), (big, want_big) = section("<"), section(">")
    frames, warnings = read_all(write(tmp_path, little + big + little), chunk_frames=chunk_frames)
    sections = ((0, want_little), (12, want_big), (24, want_little))
    expected = [(d, ts, len(d), lt, base + i + 1) for base, want in sections for d, ts, lt, i in want]
    assert frames == expected and warnings == []


def test_pcapng_sections_switch_byte_order_and_restart_interface_ids(tmp_path):
    second = pb.shb(">") + pb.idb(LINKTYPE_LINUX_SLL, ">") + pb.epb(0, T0 * 10**6, FRAMES[4], ">")
    data = two_interface_pcapng() + second
    frames, warnings = read_all(write(tmp_path, data))
    assert frames[4] == (FRAMES[4], T0 * 10**9, len(FRAMES[4]), LINKTYPE_LINUX_SLL, 6)
    assert warnings == []


@pytest.mark.parametrize("build", [five_frame_pcap, two_interface_pcapng])
def test_gzip_detected_by_magic_not_extension(tmp_path, build):
    plain, _ = read_all(write(tmp_path, build(), "plain.pcap"))
    frames, warnings = read_all(write(tmp_path, gzip.compress(build()), "no-gz-extension.pcap"))
    assert frames == plain and len(frames) >= 4
    assert warnings == []


def test_gzip_with_several_members(tmp_path):
    data = five_frame_pcap()
    frames, _ = read_all(write(tmp_path, gzip.compress(data[:70]) + gzip.compress(data[70:])))
    assert [f[0] for f in frames] == FRAMES


@pytest.mark.parametrize("read_bytes", [1, 7, 64])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("build", [five_frame_pcap, two_interface_pcapng])
def test_records_split_across_read_blocks(tmp_path, monkeypatch, read_bytes, compress, build):
    """Tiny read blocks force every record to be carried over from one block into the next."""
    data = build()
    expected, _ = read_all(write(tmp_path, data, "whole"))
    monkeypatch.setattr(capture, "READ_BYTES", read_bytes)
    path = write(tmp_path, gzip.compress(data) if compress else data, "split")
    frames, warnings = read_all(path, chunk_frames=3)
    assert frames == expected
    assert warnings == []


def test_chunking_keeps_frame_numbers_and_bytes(tmp_path):
    path = write(tmp_path, five_frame_pcap())
    chunks = list(read_chunks(path, chunk_frames=2))
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert np.concatenate([c.frame for c in chunks]).tolist() == [1, 2, 3, 4, 5]
    assert [c.data[o : o + n].tobytes() for c in chunks for o, n in zip(c.offset, c.caplen)] == FRAMES
    assert [(c.data.dtype, c.offset.dtype, c.caplen.dtype, c.ts_ns.dtype) for c in chunks[:1]] == [
        (np.uint8, np.int64, np.int32, np.int64)]


def test_truncated_pcap_record_yields_the_cut_frame(tmp_path):
    path = write(tmp_path, five_frame_pcap()[:-10])
    frames, warnings = read_all(path)
    assert [f[0] for f in frames] == FRAMES[:4] + [FRAMES[4][:-10]]
    assert frames[4][2] == len(FRAMES[4])  # the wire length is still the record's
    assert warnings == [f"{path}: truncated record at frame 5 (file ends 30 bytes into a 40-byte record); "
                        "processed up to the cut"]


def test_pcap_cut_inside_record_header(tmp_path):
    path = write(tmp_path, pb.pcap_file([(FRAMES[0], T0, 0)]) + b"\0" * 7)
    frames, warnings = read_all(path)
    assert len(frames) == 1
    assert warnings == [f"{path}: truncated record at frame 2 (file ends 7 bytes into its 16-byte header); "
                        "processed up to the cut"]


def test_pcap_caplen_beyond_snaplen_is_read_as_written(tmp_path):
    """Like Wireshark: the file header's snaplen is advisory (dpkt writes 1500 and longer records)."""
    data = pb.pcap_header(snaplen=100) + pb.pcap_record(FRAMES[0], T0, 0) + pb.pcap_record(bytes(101), T0, 0)
    frames, warnings = read_all(write(tmp_path, data))
    assert warnings == []
    assert [len(f[0]) for f in frames] == [len(FRAMES[0]), 101]


def test_pcap_absurd_caplen_with_no_snaplen(tmp_path):
    huge = (1 << 30).to_bytes(4, "little")
    data = pb.pcap_header(snaplen=0) + pb.pcap_record(FRAMES[0], T0, 0)[:8] + huge + huge
    frames, warnings = read_all(write(tmp_path, data))
    assert frames == []
    assert "captured length 1073741824 exceeds the limit of 262144 bytes" in warnings[0]


def test_pcapng_block_running_past_eof(tmp_path):
    path = write(tmp_path, two_interface_pcapng()[:-12])
    frames, warnings = read_all(path)
    assert frames[:3] == TWO_INTERFACE_EXPECTED[:3]
    # The last block: 28 fixed bytes, 23 data bytes padded to 24, 4 for the trailing length; cut 12 short.
    assert frames[3][0] == FRAMES[3][:16]
    assert warnings == [f"{path}: truncated record at frame 5 (file ends 44 bytes into a 56-byte block); "
                        "processed up to the cut"]


def test_pcapng_cut_inside_block_header(tmp_path):
    path = write(tmp_path, pb.shb() + pb.idb(1) + pb.epb(0, 0, FRAMES[0]) + b"\x06\0\0\0\x40")
    frames, warnings = read_all(path)
    assert len(frames) == 1
    assert warnings == [f"{path}: truncated block after frame 1 (file ends 5 bytes into a block header); "
                        "processed up to the cut"]


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b[:4] + (len(b) + 2).to_bytes(4, "little") + b[8:], "block length 58"),
    (lambda b: b[:4] + (8).to_bytes(4, "little") + b[8:], "block length 8"),
    (lambda b: b[:-4] + (60).to_bytes(4, "little"), "trailing block length does not repeat 56"),
    (lambda b: b[:8] + (7).to_bytes(4, "little") + b[12:], "packet on interface 7, which no interface "
                                                           "description block defines"),
    (lambda b: b[:20] + (29).to_bytes(4, "little") + b[24:], "captured length 29 in a 56-byte block"),
])
def test_pcapng_corrupt_block_stops_with_warning(tmp_path, damage, problem):
    good = pb.shb() + pb.idb(1) + pb.epb(0, 0, FRAMES[0])
    path = write(tmp_path, good + damage(pb.epb(0, 0, FRAMES[3])) + pb.epb(0, 0, FRAMES[1]))
    frames, warnings = read_all(path)
    assert [f[0] for f in frames] == [FRAMES[0]]
    assert warnings == [f"{path}: corrupt block after frame 1 ({problem}); processed up to it"]


def test_pcapng_corrupt_interface_block(tmp_path):
    short_idb = pb.block(pb.IDB_TYPE, b"\1\0\0\0")
    path = write(tmp_path, pb.shb() + pb.idb(1) + pb.epb(0, 0, FRAMES[0]) + short_idb)
    frames, warnings = read_all(path)
    assert len(frames) == 1
    assert warnings == [f"{path}: corrupt block after frame 1 (16-byte interface description block); "
                        "processed up to it"]


def test_pcapng_absurd_timestamp_resolution(tmp_path):
    path = write(tmp_path, pb.shb() + pb.idb(1, tsresol=20) + pb.epb(0, 0, FRAMES[0]))
    frames, warnings = read_all(path)
    assert frames == []
    assert warnings == [f"{path}: corrupt block after frame 0 (unsupported timestamp resolution 0x14); "
                        "processed up to it"]


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"<html><body>", "not a capture file (unknown magic 0x3c68746d)"),
    (b"\xd4\xc3", "not a capture file (only 2 bytes)"),
    (pb.pcap_header()[:10], "truncated pcap file header (10 of 24 bytes)"),
    (pb.shb()[:20], "truncated pcapng section header block (20 of 28 bytes)"),
    (pb.shb()[:8] + b"\0\0\0\0" + pb.shb()[12:],
     "not a capture file (bad pcapng byte-order magic 0x00000000)"),
    (gzip.compress(b"")[:10] + b"\xff" * 10, "corrupt gzip data (Error -3 while decompressing data: invalid "
                                             "block type)"),
    (gzip.compress(b"<html><body>"), "not a capture file (unknown magic 0x3c68746d)"),
])
def test_not_a_capture(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(CaptureError) as err:
        next(read_chunks(path))
    assert str(err.value) == f"{path}: {message}"


def test_directory(tmp_path):
    with pytest.raises(CaptureError) as err:
        next(read_chunks(tmp_path))
    assert str(err.value) == f"{tmp_path}: cannot open (Is a directory)"


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pcap"
    with pytest.raises(CaptureError, match=r"^.*absent\.pcap: cannot open \(No such file or directory\)$"):
        next(read_chunks(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, five_frame_pcap())
    path.chmod(0)
    with pytest.raises(CaptureError) as err:
        next(read_chunks(path))
    assert str(err.value) == f"{path}: cannot open (Permission denied)"


def test_gzip_cut_off(tmp_path):
    path = write(tmp_path, gzip.compress(five_frame_pcap())[:-20])
    frames, warnings = read_all(path)
    assert 0 < len(frames) < 5 and all(FRAMES[i].startswith(f[0]) for i, f in enumerate(frames))
    assert warnings[0] == f"{path}: gzip stream ends early (compressed data cut off)"
    assert warnings[1].startswith(f"{path}: truncated record at frame {len(frames) + 1} (file ends ")


def test_gzip_corrupt_after_the_header(tmp_path, monkeypatch):
    """Frames decompressed before the damage are kept; small read blocks put the damage in a later one."""
    monkeypatch.setattr(capture, "READ_BYTES", 64)
    compressed = gzip.compress(five_frame_pcap())
    path = write(tmp_path, compressed[:-8] + bytes(4) + compressed[-4:])  # wrong CRC-32 in the trailer
    frames, warnings = read_all(path)
    assert 0 < len(frames) < 5 and [f[0] for f in frames] == FRAMES[: len(frames)]  # whole frames only
    assert warnings == [f"{path}: corrupt gzip data (Error -3 while decompressing data: incorrect data "
                        "check); processed up to the error"]


def test_stdin_stream():
    """Through a real pipe: no seeking, data arriving in pieces."""
    code = ("from vpnid.features.capture import read_chunks; "
            "print(*[int(f) for c in read_chunks('-', chunk_frames=2) for f in c.frame])")
    out = subprocess.run([sys.executable, "-c", code], input=gzip.compress(five_frame_pcap()),
                         capture_output=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.split() == [b"1", b"2", b"3", b"4", b"5"]


def tshark_frames(path: str) -> list[tuple[int, int, int]]:
    """(frame number, epoch ns, length) of every frame tshark shows."""
    pyshark = pytest.importorskip("pyshark")
    reference = pyshark.FileCapture(path, keep_packets=False)
    try:
        return [(int(p.number), int(Decimal(p.sniff_timestamp) * 10**9), int(p.length)) for p in reference]
    finally:
        reference.close()


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


@needs_tshark
def test_frame_numbers_and_times_agree_with_tshark(tmp_path):
    path = write(tmp_path, two_interface_pcapng())
    frames, _ = read_all(path)
    reference = {number: (ts, length) for number, ts, length in tshark_frames(str(path))}
    assert len(reference) == 5  # tshark also shows the custom block
    for data, ts_ns, wirelen, _, frame in frames:
        ref_ts, ref_length = reference[frame]
        assert ref_length == wirelen
        assert ref_ts == ts_ns


@needs_tshark
def test_scapy_pcapng_agrees_with_tshark(tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgWriter

    path = str(tmp_path / "scapy.pcapng")
    writer = PcapNgWriter(path)
    for i in range(4):
        pkt = Ether() / IP(dst="192.0.2.1") / UDP(dport=1194) / bytes(i * 10)
        pkt.time = Decimal(T0) + Decimal(i) / 7
        writer.write(pkt)
    writer.close()

    frames, warnings = read_all(path)
    reference = tshark_frames(path)
    assert [(f[4], f[1], len(f[0])) for f in frames] == reference
    assert len(reference) == 4 and warnings == []
