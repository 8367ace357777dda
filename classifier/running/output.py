"""Record writers, one for every command that writes flows (classify, batch, live): JSONL, CSV, Arrow.

JSON lines keep non-ASCII text as it is (`ensure_ascii=False`); CSV joins the evidence and the risks with ' | '
and writes no cell a spreadsheet would run as a formula (`csv_cell`).
"""

from __future__ import annotations

import csv
import json
import typing
from collections.abc import Iterable
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
