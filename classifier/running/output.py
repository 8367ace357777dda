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

import numpy as np
import pyarrow as pa
from numba import njit

from vpnid.classifier.audit.text import csv_cell
from vpnid.classifier.running.records import TEXT_FIELDS, FlowRecord, arrow_array

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
# JSON lines are laid out from each column's JSON texts, held as Arrow-like (offsets, bytes) buffers: one
# compiled pass per column and one for the lines, with no Python object per value where a column's bytes
# can be written as they are (numbers, and strings with nothing to escape).
_NULL = np.frombuffer(b"null", np.uint8)


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


def _valid(column: pa.Array) -> np.ndarray:
    """Which rows are not null, unpacked from the validity bitmap for the compiled loops."""
    n = len(column)
    if not column.null_count:
        return np.ones(n, bool)
    return np.unpackbits(np.frombuffer(column.buffers()[0], np.uint8), bitorder="little")[
        column.offset:column.offset + n].astype(bool)


def _offsets(column: pa.Array) -> np.ndarray:
    """The n + 1 offsets of a string or list array, read in place."""
    buffer = column.buffers()[1]
    if buffer is None:  # an empty array may come without buffers
        return np.zeros(len(column) + 1, np.int32)
    return np.frombuffer(buffer, np.int32)[column.offset:column.offset + len(column) + 1]


def _string_buffers(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, bytes) of a string array, read in place: row i is bytes[offsets[i]:offsets[i + 1]]."""
    data = column.buffers()[2]
    return _offsets(column), np.zeros(0, np.uint8) if data is None else np.frombuffer(data, np.uint8)


def _texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return _string_buffers(arrow_array(texts, pa.string()))


def _string_texts(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """JSON texts of a string array: its bytes between quotes when none is one JSON escapes, json.dumps
    per distinct value otherwise."""
    offsets, texts, plain = _quoted(*_string_buffers(column), _valid(column))
    return (offsets, texts) if plain else _texts(_escaped(column.to_pylist()))


def _column_texts(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each value's JSON text, exactly as `json.dumps(..., ensure_ascii=False)` writes it inside a record,
    as (offsets, bytes)."""
    type_ = column.type
    if pa.types.is_string(type_):
        return _string_texts(column)
    if pa.types.is_list(type_) and pa.types.is_string(type_.value_type):
        return _lists(_offsets(column), _valid(column), *_string_texts(column.values))
    if type_ in (pa.int64(), pa.float64()):
        values = np.frombuffer(column.buffers()[1], np.int64 if type_ == pa.int64() else np.float64)[
            column.offset:column.offset + len(column)]
        if type_ == pa.int64():
            return _ints(values, _valid(column))
        # a float's text is its repr (json's too), computed once per distinct value (bit pattern: -0.0
        # is not 0.0 here)
        distinct, index = np.unique(values.view(np.int64), return_inverse=True)
        floats = distinct.view(np.float64)
        fmt = float.__repr__ if np.isfinite(floats).all() else json.dumps
        texts = np.array(list(map(fmt, floats.tolist())), object)[index].tolist()
        if column.null_count:
            texts = [t if ok else "null" for t, ok in zip(texts, _valid(column).tolist())]
        return _texts(texts)
    return _texts([json.dumps(v, ensure_ascii=False) for v in column.to_pylist()])  # any other type


def jsonl_text(batch: pa.RecordBatch, fields: tuple[str, ...]) -> str:
    """One JSON line per row of `batch`, byte for byte what `json_line` writes for the same record: each
    column's JSON texts, then every line laid out from them and the keys (written once) in one pass."""
    if not batch.num_rows:
        return ""
    texts = [_column_texts(batch.column(k)) for k in fields]
    keys = [f"{'{' if i == 0 else ', '}{json.dumps(k)}: ".encode() for i, k in enumerate(fields)] + [b"}\n"]
    key_offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum([len(k) for k in keys], out=key_offsets[1:])
    bases = np.cumsum([0] + [len(data) for _, data in texts])
    starts = np.stack([offsets.astype(np.int64) + base for (offsets, _), base in zip(texts, bases)])
    lines = _lines(np.frombuffer(b"".join(keys), np.uint8), key_offsets, starts,
                   np.concatenate([data for _, data in texts]))
    return str(memoryview(lines), "utf-8")


@njit(cache=True, nogil=True)
def _quoted(offsets: np.ndarray, data: np.ndarray,
            valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:  # pragma: no cover - compiled
    """Each valid string's bytes between quotes, null for the others; and whether no string holds a byte
    JSON escapes (json.encoder's ESCAPE set: controls, quote, backslash), without which these are not the
    strings' JSON texts. In UTF-8 those characters are single bytes, and no byte of another is below 0x80."""
    n = len(valid)
    out_offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        out_offsets[i + 1] = out_offsets[i] + (offsets[i + 1] - offsets[i] + 2 if valid[i] else 4)
    out = np.empty(out_offsets[n], np.uint8)
    plain = True
    for i in range(n):
        p = out_offsets[i]
        if not valid[i]:
            out[p:p + 4] = _NULL
            continue
        out[p] = 34
        for k in range(offsets[i], offsets[i + 1]):
            c = data[k]
            plain &= c >= 0x20 and c != 34 and c != 92
            p += 1
            out[p] = c
        out[p + 1] = 34
    return out_offsets, out, plain


@njit(cache=True, nogil=True)
def _ints(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Each valid integer in decimal, null for the others."""
    n = len(values)
    ten = np.uint64(10)
    out_offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        width = 4
        if valid[i]:
            v = values[i]
            m = np.uint64(v) if v >= 0 else np.uint64(-(v + 1)) + np.uint64(1)  # -2**63 has a magnitude too
            width = 1 if v >= 0 else 2
            while m >= ten:
                width += 1
                m //= ten
        out_offsets[i + 1] = out_offsets[i] + width
    out = np.empty(out_offsets[n], np.uint8)
    for i in range(n):
        p, q = out_offsets[i], out_offsets[i + 1]
        if not valid[i]:
            out[p:q] = _NULL
            continue
        v = values[i]
        m = np.uint64(v) if v >= 0 else np.uint64(-(v + 1)) + np.uint64(1)
        if v < 0:
            out[p] = 45
        while True:
            q -= 1
            out[q] = np.uint64(48) + m % ten
            m //= ten
            if not m:
                break
    return out_offsets, out


@njit(cache=True, nogil=True)
def _lists(offsets: np.ndarray, valid: np.ndarray, item_offsets: np.ndarray,
           items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Each valid list as a JSON array of its items' texts (list i holds items offsets[i]..offsets[i + 1]),
    null for the others."""
    n = len(valid)
    out_offsets = np.zeros(n + 1, np.int64)
    for i in range(n):
        width = 4
        if valid[i]:
            a, b = offsets[i], offsets[i + 1]
            width = 2 + item_offsets[b] - item_offsets[a] + (2 * (b - a - 1) if b > a else 0)
        out_offsets[i + 1] = out_offsets[i] + width
    out = np.empty(out_offsets[n], np.uint8)
    for i in range(n):
        p = out_offsets[i]
        if not valid[i]:
            out[p:p + 4] = _NULL
            continue
        out[p] = 91
        p += 1
        for k in range(offsets[i], offsets[i + 1]):
            if k > offsets[i]:
                out[p] = 44
                out[p + 1] = 32
                p += 2
            p = _put(out, p, items, item_offsets[k], item_offsets[k + 1])
        out[p] = 93
    return out_offsets, out


@njit(cache=True, nogil=True)
def _lines(keys: np.ndarray, key_offsets: np.ndarray, starts: np.ndarray,
           data: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Every row's line: key j before column j's text (column j's row i is data[starts[j, i]:starts[j, i + 1]]),
    the last key after the last column."""
    columns, n = starts.shape[0], starts.shape[1] - 1
    size = n * (key_offsets[-1] - key_offsets[0])
    for j in range(columns):
        size += starts[j, n] - starts[j, 0]
    out = np.empty(size, np.uint8)
    p = 0
    for i in range(n):
        for j in range(columns + 1):
            p = _put(out, p, keys, key_offsets[j], key_offsets[j + 1])
            if j < columns:
                p = _put(out, p, data, starts[j, i], starts[j, i + 1])
    return out


@njit(cache=True, nogil=True, inline="always")
def _put(out: np.ndarray, p: int, src: np.ndarray, a: int, b: int) -> int:  # pragma: no cover - compiled
    """Copy src[a:b] to out at p, byte by byte (the pieces are short: a slice copy costs more); the end."""
    for k in range(a, b):
        out[p] = src[k]
        p += 1
    return p


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
