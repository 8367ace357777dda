"""The fast paths agree with the slow ones they replaced: the memory-mapped, compiled-walk reader with
the streamed reader, the hashed flow-key grouping with sorting the keys, and the packed-buffer Community
ID with the `communityid` package (the oracle)."""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import random
from pathlib import Path

import communityid
import numpy as np
import pytest

from vpnid.classifier.running.community import community_id
from vpnid.classifier.running.pipeline import classify_capture
from vpnid.features import flows
from vpnid.features.capture import read_chunks
from vpnid.features.capture import sources as capture
from vpnid.features.flows import KEY_BYTES, _group_rows, _stable_order, _unique_keys
from vpnid.features.packets import CaptureError, ipv4_mapped

EXTERNAL = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "external" / "ndpi" / "pcap"
CAPTURES = sorted(p for p in EXTERNAL.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))


def frames(chunks) -> list[tuple]:
    return [(c.data[o : o + n].tobytes(), t, w, lt, f) for c in chunks
            for o, n, t, w, lt, f in zip(c.offset.tolist(), c.caplen.tolist(), c.ts_ns.tolist(),
                                         c.wirelen.tolist(), c.linktype.tolist(), c.frame.tolist())]


@pytest.mark.skipif(not CAPTURES, reason=f"no external corpus at {EXTERNAL}")
def test_mapped_reader_equals_streamed_reader(tmp_path, monkeypatch):
    """Every external capture, read in place (mapped) and through the block stream (gzip forces it, and
    small blocks make records straddle them), gives the same frames, warnings and chunk sizes."""
    monkeypatch.setattr(capture, "READ_BYTES", 4096)
    for path in CAPTURES:
        streamed = tmp_path / (path.name + ".gz")
        streamed.write_bytes(gzip.compress(path.read_bytes()))
        for chunk_frames in (7, 100_000):
            got, want = [], []
            mapped = list(read_chunks(path, chunk_frames=chunk_frames, warn=got.append))
            stream = list(read_chunks(streamed, chunk_frames=chunk_frames, warn=want.append))
            assert frames(mapped) == frames(stream), path.name
            assert [len(c) for c in mapped] == [len(c) for c in stream], path.name
            assert [w.replace(str(path), "X") for w in got] == [w.replace(str(streamed), "X") for w in want]


def test_mapped_chunks_are_views_of_the_file(tmp_path):
    """A mapped file's chunks of exactly `chunk_frames` frames are not copied: they are read-only."""
    rec = b"".join(np.array([1, 0, 60, 60], "<u4").tobytes() + bytes(60) for _ in range(10))
    path = tmp_path / "c.pcap"
    path.write_bytes(np.array([0xA1B2C3D4, 0x00040002, 0, 0, 65535, 1], "<u4").tobytes()[:24] + rec)
    chunks = list(read_chunks(path, chunk_frames=5))
    assert [len(c) for c in chunks] == [5, 5]
    assert not any(c.data.flags.writeable for c in chunks)


def _addr(rng: random.Random, v6: bool) -> bytes:
    if v6:
        return rng.randbytes(16)
    return ipv4_mapped(rng.choice([rng.randbytes(4), b"\xc6\x12\x00\x01"]))


@pytest.mark.parametrize("proto", [6, 17, 132, 50, 51, 47, 1, 58])
@pytest.mark.parametrize("v6", [False, True])
def test_community_id_matches_the_reference_package(proto, v6):
    rng = random.Random(proto * 2 + v6)
    oracle = communityid.CommunityID()
    for _ in range(200):
        src, dst = _addr(rng, v6), _addr(rng, v6)
        if rng.random() < 0.2:
            dst = src  # equal addresses: ports decide the order
        sport, dport = rng.choice([0, 53, 1194, 65535, rng.randrange(65536)]), rng.randrange(65536)
        text = [str(ipaddress.ip_address(a[12:] if not v6 else a)) for a in (src, dst)]
        if proto in (1, 58):
            want = None  # flows keep no ICMP type/code
        else:
            ports = (sport, dport) if proto in communityid.PORT_PROTOS else (None, None)
            want = oracle.calc(communityid.FlowTuple(proto, text[0], text[1], *ports))
        assert community_id(proto, src, sport, dst, dport) == want
        assert community_id(proto, dst, dport, src, sport) == want  # direction-free


def test_hashed_key_grouping_equals_sorting_the_keys():
    rng = np.random.default_rng(7)
    for n, distinct in ((1, 1), (50, 3), (70_000, 500), (70_000, 60_000)):
        base = rng.integers(0, 256, (distinct, KEY_BYTES), dtype=np.uint8)
        base[: distinct // 2, 1:17] = base[0, 1:17]  # shared prefixes, as many flows of one host have
        keys = np.ascontiguousarray(base[rng.integers(0, distinct, n)]).view(f"V{KEY_BYTES}").ravel()
        want_keys, want_inv = np.unique(keys, return_inverse=True)
        got_keys, got_inv = _unique_keys(keys)
        assert np.array_equal(got_keys, want_keys) and np.array_equal(got_inv, want_inv.ravel())


def test_key_grouping_tells_colliding_hashes_apart_by_their_bytes():
    """Every hash equal (the worst collision there is) or taking two values: the groups still follow the keys'
    bytes, numbered in order of first appearance."""
    rng = np.random.default_rng(11)
    buf = rng.integers(0, 3, (2_000, KEY_BYTES), dtype=np.uint8)
    buf[:, 2:-1] = 0  # keys differ only in their first two and last byte: 27 distinct keys
    for hashes in (np.zeros(len(buf), np.uint64), (buf[:, 0] % 2).astype(np.uint64)):
        first, group = _group_rows(buf, hashes)
        seen: dict[bytes, int] = {}
        want = np.array([seen.setdefault(row.tobytes(), len(seen)) for row in buf])
        assert np.array_equal(group, want)
        assert np.array_equal(first, [int(np.flatnonzero(want == g)[0]) for g in range(len(seen))])


def test_counting_sort_orders_packets_as_a_stable_argsort():
    rng = np.random.default_rng(5)
    for n, groups in ((0, 1), (1, 1), (5_000, 3), (50_000, 40_000)):
        inv = rng.integers(0, groups, n)
        assert np.array_equal(_stable_order(inv, groups), np.argsort(inv, kind="stable"))


@pytest.mark.skipif(not CAPTURES, reason=f"no external corpus at {EXTERNAL}")
def test_flow_records_unchanged_by_hashed_grouping(monkeypatch):
    """The whole pipeline on every external capture, with the hashed grouping and with the plain sort."""
    def run() -> list[dict]:
        out = []
        for path in CAPTURES:
            with contextlib.suppress(CaptureError):
                out += [r.as_dict() for r in classify_capture(str(path))]
        return out

    new = run()
    monkeypatch.setattr(flows, "_unique_keys", lambda keys: np.unique(keys, return_inverse=True))
    assert run() == new and len(new) > 1000
