"""Records as Arrow record batches: the columnar ids and writers give exactly what the per-record code
gives (flow ids, Community IDs, every base field; JSONL and CSV byte for byte)."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from vpnid.classifier.audit.text import csv_cell
from vpnid.classifier.labelling.loading import DEFAULT_MODEL, load
from vpnid.classifier.running import pipeline
from vpnid.classifier.running.community import community_id
from vpnid.classifier.running.output import jsonl_text, write_csv_batches, write_jsonl_batches
from vpnid.classifier.running.pipeline import Options, classify_batches, classify_capture
from vpnid.classifier.running.records import (
    TEXT_FIELDS,
    FlowRecord,
    arrow_array,
    community_ids,
    flow_ids,
    output_fields,
    records_schema,
)
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
    fids = flow_ids(proto, src, sport, dst, dport, first).to_pylist()
    cids = community_ids(proto, src, sport, dst, dport).to_pylist()
    for i in range(n):
        s, d = src[i].tobytes(), dst[i].tobytes()
        f = Flow(int(proto[i]), s, int(sport[i]), d, int(dport[i]), int(first[i]), int(first[i]), 0)
        assert fids[i] == flow_id(f)
        assert cids[i] == community_id(int(proto[i]), s, int(sport[i]), d, int(dport[i]))


def _csv_row(record: FlowRecord, fields: tuple[str, ...]) -> list[str]:
    """The CSV cells a record's row must have: lists joined with ' | ', free text neutralised, None empty."""
    d = record.as_dict()
    d["evidence"], d["risks"] = " | ".join(d["evidence"]), " | ".join(d["risks"])
    cells = ["" if d[k] is None else d[k] for k in fields]
    return [str(csv_cell(v) if k in TEXT_FIELDS else v) for k, v in zip(fields, cells)]


def test_writers_from_batches_write_each_record_as_json_dumps_and_csv_would() -> None:
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
        jsonl, table = io.StringIO(), io.StringIO()
        write_jsonl_batches(batches, jsonl, fields)
        write_csv_batches(batches, table, fields)
        d = [r.as_dict() for r in records]
        assert jsonl.getvalue() == "".join(json.dumps({k: r[k] for k in fields}, ensure_ascii=False) + "\n"
                                           for r in d)
        rows = list(csv.reader(io.StringIO(table.getvalue())))
        assert rows[0] == list(fields)
        assert rows[1:] == [_csv_row(r, fields) for r in records]


def test_jsonl_escapes_exactly_what_json_dumps_escapes() -> None:
    """Hostile text (a capture name, evidence quoting a packet) in a column beside plain columns: the
    column's fast path must not be taken, and every value comes out as json.dumps writes it."""
    fields = output_fields(False)
    texts = ['plain.pcap', 'quote".pcap', "back\\slash", "nl\n", "ctl\x01\x1f", "del\x7f", "\u2028 ≥ é", ""]
    records = [FlowRecord(t, "F1", None if i % 2 else "1:x", "tcp", "10.0.0.1", 1, "10.0.0.2", 2, 0.5, 1e-05, 1, 2,
                          3, 4, "none", 0.0, "none", [t, "ok"] if i % 3 else [], None, "fin", risks=[t] if i % 2 else [])
               for i, t in enumerate(texts)]
    batch = pa.RecordBatch.from_pylist([r.as_dict() for r in records], schema=records_schema(False))
    out = io.StringIO()
    write_jsonl_batches([batch], out, fields)
    assert out.getvalue() == "".join(json.dumps({k: r.as_dict()[k] for k in fields}, ensure_ascii=False) + "\n"
                                     for r in records)
    plain = [r for r in records if r.pcap in ("plain.pcap", "")]
    out = io.StringIO()
    write_jsonl_batches([pa.RecordBatch.from_pylist([r.as_dict() for r in plain], schema=records_schema(False))],
                        out, fields)
    assert out.getvalue() == "".join(json.dumps({k: r.as_dict()[k] for k in fields}, ensure_ascii=False) + "\n"
                                     for r in plain)


def test_arrow_columns_from_buffers_equal_pa_array() -> None:
    cases = [([], pa.string()), (["a", None, "é≥", ""], pa.string()), (["a", "b"], pa.string()), ([None] * 9, pa.string()),
             ([[], ["a", "b"], ["c"]], pa.list_(pa.string())), ([["é"], ["x", None]], pa.list_(pa.string())),
             ([[], None], pa.list_(pa.string())), ([1, None, 3], pa.int64()), (np.arange(5, dtype=np.uint16), pa.int64()),
             ([0.1, 1e-05, None], pa.float64()), ([], pa.int64()), ([None] * 20, pa.int64())]
    for values, type_ in cases:
        built = arrow_array(values, type_)
        built.validate(full=True)
        assert built.type == type_ and built.equals(pa.array(values, type_)), values


def test_classify_does_not_import_pandas(tmp_path: Path) -> None:
    """pandas costs ~47 MB resident; only feature extraction, training and a model's first load (its audit
    through scikit-learn, before the compiled model is cached) need it."""
    code = ("import sys; from vpnid.classifier.cli.main import main; "
            f"main(['classify', '--format', 'jsonl', '-o', {str(tmp_path / 'o.jsonl')!r}, {PATHS[0]!r}]); "
            "print('pandas' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=ROOT.parent).stdout.strip() for _ in range(2)]  # the first fills the model cache
    assert runs[1] == "False" and (tmp_path / "o.jsonl").stat().st_size > 0


def test_batches_built_beside_the_flow_table_leave_in_drain_order() -> None:
    """`classify_batches` builds a group's batch on a second thread while the table reads on: with the
    model scoring, small chunks and a short idle timeout (many groups per capture), the batches hold what
    the record path (one thread) gives, in the same order."""
    fields = output_fields(False)
    opts = Options(model=load(DEFAULT_MODEL), chunk_frames=256, idle_timeout=0.5)
    groups, records, batches = 0, [], []
    for p in PATHS:
        try:
            records += classify_capture(p, opts)
            got = list(classify_batches(p, opts))
        except CaptureError:
            continue
        groups += len(got)
        batches += got
    assert groups > 2 * len(PATHS)  # many captures end flows in more than one group
    jsonl = io.StringIO()
    write_jsonl_batches(batches, jsonl, fields)
    assert jsonl.getvalue() == "".join(json.dumps({k: r.as_dict()[k] for k in fields}, ensure_ascii=False) + "\n"
                                       for r in records)


def test_a_failing_batch_build_reaches_the_caller(monkeypatch) -> None:
    """An error on the batch thread is raised from `classify_batches`, not lost with the thread."""
    built = []

    def batch(path: str, flows: list, opts: Options) -> pa.RecordBatch:
        built.append(len(flows))
        if len(built) == 2:
            raise RuntimeError("batch failed")
        return real(path, flows, opts)

    real = pipeline._batch
    monkeypatch.setattr(pipeline, "_batch", batch)
    path = str(ROOT / "pcaps" / "corpus" / "neg-srtp-video-call-5004.pcap")
    out = classify_batches(path, Options(chunk_frames=256, idle_timeout=0.5))
    with pytest.raises(RuntimeError, match="batch failed"):
        list(out)
    assert len(built) >= 2


def test_jsonl_text_of_any_column_is_json_dumps() -> None:
    """Numbers at their edges (negative, -0.0, non-finite, nulls), lists with nulls and text to escape, a
    sliced batch and a column of another type: each line as json.dumps writes the row."""
    rows = [{"i": -2**63, "f": -0.0, "s": None, "l": ["a", None], "b": True},
            {"i": None, "f": float("inf"), "s": "x\"y", "l": None, "b": None},
            {"i": 2**63 - 1, "f": float("nan"), "s": "é", "l": [], "b": False},
            {"i": 0, "f": None, "s": "", "l": ["\n", "≥"], "b": True},
            {"i": -7, "f": 1e16, "s": "z", "l": ["q"], "b": False}]
    schema = pa.schema([("i", pa.int64()), ("f", pa.float64()), ("s", pa.string()), ("l", pa.list_(pa.string())),
                        ("b", pa.bool_())])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    fields = tuple(schema.names)
    for start in range(len(rows)):
        part = batch.slice(start)
        assert jsonl_text(part, fields) == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[start:])
