"""Registry CSV files: the import format and the export format are the same.

The header names exactly the registration fields (any order; the subscriber columns may be left out, as
files from before them do); lists inside a cell are separated by
spaces. The file must be UTF-8 CSV: undecodable bytes, a NUL, an unbalanced quote or a cell over
MAX_CELL refuse the whole file at that line. Reading validates every row and reports every bad one by
its line number, so a whole file can be fixed in one pass; export writes canonical values sorted by
registration_id, which is why export → import → export gives the same bytes. A cell a spreadsheet
would run as a formula (starting with = + - @, tab or CR) is written with a leading "'" (`csv_cell`),
and reading removes exactly that "'" (`csv_uncell`), so the round trip stays exact. `read_table` is
the strict reader itself, shared with the lease logs (`vpnid.classifier.audit.leases`).
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from vpnid.classifier.audit.registry.registration import (
    FIELDS,
    REQUIRED_FIELDS,
    SUBSCRIBER_FIELDS,
    Registration,
    check_breadth,
    parse_registration,
)
from vpnid.classifier.audit.text import csv_cell, csv_uncell

MAX_CELL = csv.field_size_limit()  # characters in one cell (the csv module's limit, 128 Ki)


class CsvError(Exception):
    """The file is unusable; `problems` has one 'FILE:LINE: reason' message per bad row."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _check_header(header: list[str], where: str, what: str, required: Sequence[str],
                  optional: Sequence[str]) -> None:
    known = (*required, *optional)
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in known]
    repeated = sorted({c for c in header if header.count(c) > 1})
    problems = [f"{kind} column{'s' if len(cols) > 1 else ''} {', '.join(cols)}"
                for kind, cols in (("missing", missing), ("unknown", unknown), ("repeated", repeated)) if cols]
    if problems:
        raise CsvError([f"{where}: not {what} ({'; '.join(problems)}); {_columns_rule(required, optional)}"])


def _columns_rule(required: Sequence[str], optional: Sequence[str]) -> str:
    rule = "the header must name exactly: " + ",".join(required)
    return rule + (f" (and may add: {','.join(optional)})" if optional else "")


def _text(path: Path) -> str:
    """The file as text, or CsvError naming the line of the first byte that is not UTF-8 or a NUL."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CsvError([f"{path}: {e.strerror}"]) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CsvError([f"{path}:1: the file is UTF-16; save it as UTF-8"])
    try:
        text = data.decode("utf-8-sig")  # -sig: spreadsheets like to add a BOM
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CsvError([f"{path}:{line}: byte 0x{data[e.start]:02x} is not UTF-8 (a latin-1 or UTF-16 file?); "
                        "save the file as UTF-8"]) from None
    if (nul := text.find("\0")) >= 0:
        raise CsvError([f"{path}:{text.count(chr(10), 0, nul) + 1}: NUL character (a binary or UTF-16 file?)"])
    return text


def _malformed(e: csv.Error) -> str:
    """What a csv.Error means for the person who has to fix the file."""
    if "end of data" in str(e):
        return 'a quoted cell opens in this row and never closes (an unbalanced ")'
    if "field larger" in str(e):
        return f"a cell is longer than {MAX_CELL} characters"
    return f"not valid CSV ({e})"


def read_table(path: str | Path, what: str, required: Sequence[str], optional: Sequence[str],
               row: Callable[[int, dict[str, str]], None]) -> None:
    """Read a strict CSV file whose header names the `required` columns and any of the `optional` ones
    (any order), calling `row(line, cells)` for each row (optional columns it lacks are ''; cells are
    as `csv_uncell` leaves them). `row` raises ValueError (a RegistrationError too) for a bad row; every
    such problem is collected as 'FILE:LINE: message' and raised together as CsvError once the file
    has been read. A file that is not clean CSV text (see `_text`, `_malformed`) is refused at its first
    problem, since the rows after it cannot be told apart reliably. `what` names the kind of file in
    messages ('a registry CSV'). The registry's and the lease logs' readers are this one."""
    path = Path(path)
    reader = csv.reader(io.StringIO(_text(path), newline=""), strict=True)
    problems: list[str] = []
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise CsvError([f"{path}:1: {_malformed(e)}"]) from None
    if header is None:
        raise CsvError([f"{path}: empty file ({_columns_rule(required, optional)})"])
    columns = [h.strip() for h in header]
    _check_header(columns, f"{path}:1", what, required, optional)
    absent = dict.fromkeys((c for c in optional if c not in columns), "")
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as e:
            problems.append(f"{path}:{line}: {_malformed(e)}")
            break
        if cells is None:
            break
        start, line = line, reader.line_num + 1  # a quoted cell may span lines: name the row's first
        if not cells:
            continue
        where = f"{path}:{start}"
        # a swallowed row first: it also makes the cell count wrong, which would hide the cause
        if swallowed := next((c for c in cells if _holds_a_row(c, len(required))), None):
            problems.append(f"{where}: a quoted cell runs over into a line that reads like a row "
                            f"({swallowed.splitlines()[1][:40]!r}...): an unbalanced \"?")
            continue
        if len(cells) != len(columns):
            problems.append(f"{where}: {len(cells)} cells, but the header has {len(columns)}")
            continue
        try:
            row(start, dict(zip(columns, map(csv_uncell, cells))) | absent)
        except ValueError as e:
            problems.append(f"{where}: {e}")
    if problems:
        raise CsvError(problems)


def read_csv(path: str | Path, allow_broad: bool = False) -> list[Registration]:
    """Every registration of the file, or CsvError naming every bad row (then nothing is returned).
    Files from before the subscriber columns (SUBSCRIBER_FIELDS) read as registrations without one.
    `allow_broad`: accept client networks broader than `BROADEST`."""
    regs: list[Registration] = []
    first_line: dict[str, int] = {}

    def row(line: int, fields: dict[str, str]) -> None:
        reg = parse_registration(fields)
        if not allow_broad:
            check_breadth(reg)
        if reg.registration_id in first_line:
            raise ValueError(f"registration_id {reg.registration_id} repeats line {first_line[reg.registration_id]}")
        first_line[reg.registration_id] = line
        regs.append(reg)

    read_table(path, "a registry CSV", REQUIRED_FIELDS, SUBSCRIBER_FIELDS, row)
    return regs


def _holds_a_row(cell: str, width: int) -> bool:
    """A multi-line cell one of whose later lines has a row's worth of commas: what a quote left open
    in one row and closed in a later one makes of the rows between (which would otherwise vanish)."""
    return "\n" in cell and any(ln.count(",") >= width - 1 for ln in cell.splitlines()[1:])


def write_csv(regs: Iterable[Registration], out: IO[str]) -> int:
    """Write the header and one canonical row per registration, sorted by id; returns the row count."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FIELDS)
    rows = sorted(regs, key=lambda r: r.registration_id)
    w.writerows([csv_cell(reg.to_fields()[k]) for k in FIELDS] for reg in rows)
    return len(rows)
