"""Registry CSV files: the import format and the export format are the same.

The header names exactly the registration fields (any order); lists inside a cell are separated by
spaces. Reading validates every row and reports every bad one by its line number, so a whole file can be
fixed in one pass; export writes canonical values sorted by registration_id, which is why
export → import → export gives the same bytes. A cell a spreadsheet would run as a formula (starting with
= + - @, tab or CR) is written with a leading "'" (`csv_cell`), and reading removes exactly that "'"
(`csv_uncell`), so the round trip stays exact.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from vpnid.classifier.audit.registry.registration import FIELDS, Registration, RegistrationError, parse_registration
from vpnid.classifier.audit.text import csv_cell, csv_uncell


class CsvError(Exception):
    """The file is unusable; `problems` has one 'FILE:LINE: reason' message per bad row."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _check_header(header: list[str], where: str) -> None:
    missing = [c for c in FIELDS if c not in header]
    unknown = [c for c in header if c not in FIELDS]
    repeated = sorted({c for c in header if header.count(c) > 1})
    problems = [f"{what} column{'s' if len(cols) > 1 else ''} {', '.join(cols)}"
                for what, cols in (("missing", missing), ("unknown", unknown), ("repeated", repeated)) if cols]
    if problems:
        raise CsvError([f"{where}: not a registry CSV ({'; '.join(problems)}); the header must name exactly: "
                        + ",".join(FIELDS)])


def read_csv(path: str | Path) -> list[Registration]:
    """Every registration of the file, or CsvError naming every bad row (then nothing is returned)."""
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8-sig")  # -sig: spreadsheets like to add a BOM
    except OSError as e:
        raise CsvError([f"{path}: {e.strerror}"]) from None
    regs: list[Registration] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise CsvError([f"{path}: empty file (the header must name exactly: {','.join(FIELDS)})"])
        columns = [h.strip() for h in header]
        _check_header(columns, f"{path}:1")
        line = reader.line_num + 1
        for cells in reader:
            start, line = line, reader.line_num + 1  # a quoted cell may span lines: name the row's first
            if not cells:
                continue
            where = f"{path}:{start}"
            if len(cells) != len(columns):
                problems.append(f"{where}: {len(cells)} cells, but the header has {len(columns)}")
                continue
            try:
                reg = parse_registration(dict(zip(columns, map(csv_uncell, cells))))
            except RegistrationError as e:
                problems.append(f"{where}: {e}")
                continue
            if reg.registration_id in first_line:
                problems.append(f"{where}: registration_id {reg.registration_id} repeats line "
                                f"{first_line[reg.registration_id]}")
                continue
            first_line[reg.registration_id] = start
            regs.append(reg)
    if problems:
        raise CsvError(problems)
    return regs


def write_csv(regs: Iterable[Registration], out: IO[str]) -> int:
    """Write the header and one canonical row per registration, sorted by id; returns the row count."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FIELDS)
    rows = sorted(regs, key=lambda r: r.registration_id)
    w.writerows([csv_cell(reg.to_fields()[k]) for k in FIELDS] for reg in rows)
    return len(rows)
