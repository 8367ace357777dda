"""Records as Arrow record batches: the columnar ids and writers give exactly what the per-record code
gives (flow ids, Community IDs, every base field; JSONL and CSV byte for byte)."""

from __future__ import annotations

import glob
import io
import os
from pathlib import Path

import numpy as np

from vpnid.classifier.running.community import community_id
from vpnid.classifier.running.output import write_csv, write_csv_batches, write_jsonl, write_jsonl_batches
from vpnid.classifier.running.pipeline import Options, classify_batches, classify_capture
from vpnid.classifier.running.records import community_ids, flow_ids, output_fields
from vpnid.features.capture import CaptureError
from vpnid.features.flows import Flow, flow_id

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = Path(os.environ.get("VPNID_EXTERNAL", ROOT.parent / "shared" / "corpus" / "external"))  # shared/ beside the checkout
PATHS = sorted(glob.glob(str(ROOT / "pcaps" / "corpus" / "*.pcap"))) + sorted(
    glob.glob(str(EXTERNAL / "ndpi" / "pcap" / "*")))[:60]


def test_ids_match_per_flow_functions() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    proto = rng.choice(np.array([1, 6, 17, 50, 51, 58, 132, 47]), n)
    src = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    dst = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    v4 = rng.random(n) < 0.6
    src[v4, :12] = dst[v4, :12] = np.frombuffer(b"\0" * 10 + b"\xff\xff", np.uint8)
    same = rng.random(n) < 0.1  # same host both ends: the ports decide the order
    dst[same] = src[same]
    src[:50, 12:] = dst[:50, 12:] = 0  # few distinct bytes: ties deep in the address
    sport, dport = rng.integers(0, 65536, n), rng.integers(0, 65536, n)
    tie = same & (rng.random(n) < 0.3)
    dport[tie] = sport[tie]  # the same endpoint twice
    first = rng.integers(0, 2**62, n)
    fids, cids = flow_ids(proto, src, sport, dst, dport, first), community_ids(proto, src, sport, dst, dport)
    for i in range(n):
        s, d = src[i].tobytes(), dst[i].tobytes()
        f = Flow(int(proto[i]), s, int(sport[i]), d, int(dport[i]), int(first[i]), int(first[i]), 0)
        assert fids[i] == flow_id(f)
        assert cids[i] == community_id(int(proto[i]), s, int(sport[i]), d, int(dport[i]))


def test_writers_from_batches_match_record_writers() -> None:
    fields = output_fields(False)
    for opts in (Options(), Options(drop_first=25)):
        records, batches = [], []
        for p in PATHS:
            try:
                records += classify_capture(p, opts)
                batches += classify_batches(p, opts)
            except CaptureError:
                continue
        assert records
        a, b, c, d = io.StringIO(), io.StringIO(), io.StringIO(), io.StringIO()
        write_jsonl(iter(records), a, fields)
        write_jsonl_batches(batches, b, fields)
        write_csv(iter(records), c, fields)
        write_csv_batches(batches, d, fields)
        assert a.getvalue() == b.getvalue()
        assert c.getvalue() == d.getvalue()
