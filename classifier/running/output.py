"""Record writers, one for every command that writes flows (classify, batch, live): JSONL, CSV, Arrow.

JSON lines keep non-ASCII text as it is (`ensure_ascii=False`); CSV joins the evidence and the risks with ' | '
and writes no cell a spreadsheet would run as a formula (`csv_cell`).
"""

from __future__ import annotations

import csv
import json
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import IO

import pyarrow as pa

from vpnid.classifier.audit.text import csv_cell
from vpnid.classifier.running.records import TEXT_FIELDS, FlowRecord

_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "list[str]": pa.list_(pa.string())}


def json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(records: Iterable[FlowRecord], out: IO[str], fields: tuple[str, ...]) -> None:
    for r in records:
        d = r.as_dict()
        out.write(json_line({k: d[k] for k in fields}))


def write_csv(records: Iterable[FlowRecord], out: IO[str], fields: tuple[str, ...]) -> None:
    """Every column of the records; the free-text ones (`TEXT_FIELDS`) go through `csv_cell`, the others
    hold vpnid's own vocabulary, numbers and addresses, which never start like a formula."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(fields)
    text = [i for i, k in enumerate(fields) if k in TEXT_FIELDS]
    for r in records:
        d = r.as_dict()
        d["evidence"], d["risks"] = " | ".join(d["evidence"]), " | ".join(d["risks"])
        row = ["" if d[k] is None else d[k] for k in fields]
        for i in text:
            row[i] = csv_cell(row[i])
        w.writerow(row)


def arrow_schema() -> pa.Schema:
    """FlowRecord's fields as Arrow columns (annotations are strings: `from __future__ import annotations`)."""
    cols = []
    for f in fields(FlowRecord):
        base = typing.cast(str, f.type).removesuffix(" | None")
        cols.append(pa.field(f.name, _ARROW_TYPES[base], nullable=True))
    return pa.schema(cols)


def to_arrow(records: list[FlowRecord]) -> pa.Table:
    schema = arrow_schema()
    return pa.Table.from_pydict({name: [getattr(r, name) for r in records] for name in schema.names}, schema)


# ---------------------------------------------------------------------------------------------- batches
def _encoder(type_: pa.DataType) -> Callable[[list], list[str]]:
    """Column values -> their JSON text, exactly as `json.dumps(..., ensure_ascii=False)` writes them inside
    a record (floats through `float.__repr__`, as json does; strings through a per-batch cache, as most
    repeat: captures, transports, addresses, labels)."""
    if pa.types.is_string(type_):
        def strings(values: list) -> list[str]:
            cache: dict[str | None, str] = {None: "null"}
            out = []
            for v in values:
                s = cache.get(v)
                if s is None:
                    s = cache[v] = json.dumps(v, ensure_ascii=False)
                out.append(s)
            return out
        return strings
    if pa.types.is_integer(type_):
        return lambda values: ["null" if v is None else str(v) for v in values]
    if pa.types.is_floating(type_):
        return lambda values: ["null" if v is None else float.__repr__(v) for v in values]
    return lambda values: ["[]" if not v else "null" if v is None else json.dumps(v, ensure_ascii=False)
                           for v in values]


def jsonl_lines(batch: pa.RecordBatch, fields: tuple[str, ...]) -> list[str]:
    """One JSON line per row of `batch`, byte for byte what `json_line` writes for the same record."""
    if not batch.num_rows:
        return []
    fmt = "{" + ", ".join(f"{json.dumps(k)}: %s" for k in fields) + "}\n"
    cols = [_encoder(batch.schema.field(k).type)(batch.column(k).to_pylist()) for k in fields]
    return [fmt % row for row in zip(*cols)]


def write_jsonl_batches(batches: Iterable[pa.RecordBatch], out: IO[str], fields: tuple[str, ...]) -> None:
    for batch in batches:
        out.write("".join(jsonl_lines(batch, fields)))


def write_csv_batches(batches: Iterable[pa.RecordBatch], out: IO[str], fields: tuple[str, ...]) -> None:
    """`write_csv` from record batches: the same rows, column by column (free text through `csv_cell`)."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(fields)
    for batch in batches:
        cols = []
        for k in fields:
            values = batch.column(k).to_pylist()
            if k in ("evidence", "risks"):
                values = [" | ".join(v) for v in values]
            cols.append([csv_cell("" if v is None else v) for v in values] if k in TEXT_FIELDS
                        else ["" if v is None else v for v in values])
        w.writerows(zip(*cols))


def batches_to_arrow(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(batches, schema)
