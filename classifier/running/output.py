"""Record writers, one for every command that writes flows (classify, batch, live): JSONL, CSV, Arrow.

JSON lines keep non-ASCII text as it is (`ensure_ascii=False`); CSV joins the evidence and the risks with ' | '
and writes no cell a spreadsheet would run as a formula (`csv_cell`).
"""

from __future__ import annotations

import csv
import json
import re
import typing
from collections.abc import Iterable
from dataclasses import fields
from typing import IO

import numpy as np
import pyarrow as pa

from vpnid.classifier.audit.text import csv_cell
from vpnid.classifier.running.records import TEXT_FIELDS, FlowRecord

_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "list[str]": pa.list_(pa.string())}


def json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


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
# What json.dumps(..., ensure_ascii=False) escapes in a string (json.encoder's ESCAPE set); nothing else.
_ESCAPED = re.compile(r'[\x00-\x1f\\"]')


def _plain(texts: list[str]) -> bool:
    """Whether none of `texts` holds a character JSON escapes, so each is written as it is between
    quotes (checked once per column, on all its values joined)."""
    return _ESCAPED.search("".join(texts)) is None


def _escaped(values: list) -> list[str]:
    """Each string's JSON text through json.dumps (null for None), for a column with text to escape."""
    cache: dict[str | None, str] = {None: "null"}  # most values repeat: captures, transports, labels
    out = []
    for v in values:
        s = cache.get(v)
        if s is None:
            s = cache[v] = json.dumps(v, ensure_ascii=False)
        out.append(s)
    return out


def _string_lists(values: list) -> list[str]:
    if _plain([s for v in values if v for s in v]):
        return ['["' + '", "'.join(v) + '"]' if v else "[]" for v in values]
    return ["[]" if not v else "null" if v is None else json.dumps(v, ensure_ascii=False) for v in values]


def _column_text(column: pa.Array) -> tuple[str, list]:
    """A column as (placeholder, values) such that `placeholder % value` is each value's JSON text, exactly
    as `json.dumps(..., ensure_ascii=False)` writes it inside a record. Numbers go in as they are (`%s` of an
    int or float is its `str`, and a float's `str` is its `repr`, as json writes it); so do the strings of a
    column with no null and nothing to escape, between quotes in the placeholder."""
    type_ = column.type
    if pa.types.is_string(type_):
        values = column.to_pylist()
        if not _plain([v for v in values if v is not None] if column.null_count else values):
            return "%s", _escaped(values)
        if not column.null_count:
            return '"%s"', values
        return "%s", ["null" if v is None else f'"{v}"' for v in values]
    if pa.types.is_integer(type_) or pa.types.is_floating(type_):
        if not column.null_count and type_ in (pa.int64(), pa.float64()):  # the values, read in place
            values = np.frombuffer(column.buffers()[1], np.int64 if type_ == pa.int64() else np.float64)
            return "%s", values[column.offset:column.offset + len(column)].tolist()
        return "%s", ["null" if v is None else v for v in column.to_pylist()]
    return "%s", _string_lists(column.to_pylist())


def jsonl_text(batch: pa.RecordBatch, fields: tuple[str, ...]) -> str:
    """One JSON line per row of `batch`, byte for byte what `json_line` writes for the same record: each
    column is read on its own, then every row is laid out by one %-template (keys written once, in C)."""
    if not batch.num_rows:
        return ""
    placeholders, columns = zip(*(_column_text(batch.column(k)) for k in fields))
    line = "{" + ", ".join(f"{json.dumps(k).replace('%', '%%')}: {p}" for k, p in zip(fields, placeholders)) + "}\n"
    return "".join([line % row for row in zip(*columns)])


def write_jsonl_batches(batches: Iterable[pa.RecordBatch], out: IO[str], fields: tuple[str, ...]) -> None:
    for batch in batches:
        out.write(jsonl_text(batch, fields))


def write_csv_batches(batches: Iterable[pa.RecordBatch], out: IO[str], fields: tuple[str, ...]) -> None:
    """Every column of the batches, column by column; evidence and risks joined with ' | '. The free-text
    columns (`TEXT_FIELDS`) go through `csv_cell`; the others hold vpnid's own vocabulary, numbers and
    addresses, which never start like a formula."""
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
