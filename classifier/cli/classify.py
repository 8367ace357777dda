"""`vpnid classify`: label the flows of capture files."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

import pyarrow as pa
from rich.text import Text

from vpnid.classifier.audit.files import OutputError, database_files, refuse_inputs
from vpnid.classifier.audit.registry import ENV
from vpnid.classifier.audit.text import printable, shown
from vpnid.classifier.cli.common import (
    COMMANDS,
    FORMATTER,
    add_flow_options,
    add_risk_option,
    console,
    err,
    error,
    options,
    registry_matcher,
    warn,
)
from vpnid.classifier.running.output import write_csv_batches, write_jsonl_batches
from vpnid.classifier.running.pipeline import (
    CaptureStats,
    Carry,
    Options,
    classify_batches,
    classify_capture,
    end_carry,
    end_carry_batch,
)
from vpnid.classifier.running.records import FlowRecord, output_fields, with_risks
from vpnid.features.families import NONE, TUNNEL_FAMILIES
from vpnid.features.packets import CaptureError

T = TypeVar("T")

CLASSIFY_HELP = f"""\
Read capture files, group packets into bidirectional flows, and label each flow as a tunnel
({", ".join(TUNNEL_FAMILIES)}) or none, with a confidence and the evidence that
decided it, plus the flow's risks (properties such as fully_encrypted that name no protocol).

Captures may be pcap (µs or ns), pcapng (several interfaces/link types) or gzip-compressed either;
'-' reads a capture stream from standard input. A file that is not a capture is reported and skipped;
the others still run (exit status 1 if any file failed).

Output formats:
  table   (default on a terminal) tunnel flows and a per-capture summary; --all lists every flow
  jsonl   (default when piped) one JSON object per flow, every flow, fields as in the README
  csv     the same fields as columns; evidence and risks joined with ' | '

examples:
  vpnid classify pcaps/corpus/*.pcap
  vpnid classify --format jsonl -o flows.jsonl capture.pcapng.gz
  tcpdump -w - -i eth0 | vpnid classify --format jsonl -
  vpnid classify --risk malformed_header --risk blocked_attempt capture.pcap
"""


def _each_capture(captures: list[str], stats: dict[str, CaptureStats], failed: list[str],
                  read: Callable[[str, CaptureStats], Iterator[T]]) -> Iterator[T]:
    """What `read` gives for each capture in turn, with a spinner on a terminal that counts the frames and
    ended flows so far (a multi-GB capture takes minutes); a capture error is reported and the capture
    named in `failed`, and the others still run."""
    for path in captures:
        st = stats.setdefault(path, CaptureStats())
        try:
            name, shown_counts = printable(path), (0, 0)
            spinner = err.status(Text(f"reading {name}"), spinner="dots") if err.is_terminal else None
            with spinner or contextlib.nullcontext():
                for item in read(path, st):
                    yield item
                    counts = (st.counters.get("frames", 0), st.flows)
                    if spinner is not None and counts != shown_counts:  # once per chunk, not per record
                        shown_counts = counts
                        spinner.update(Text(f"reading {name}: {counts[0]:,} frames, {counts[1]:,} flows ended"))
        except CaptureError as e:
            error(str(e))
            failed.append(path)


def _records(captures: list[str], opts: Options, stats: dict[str, CaptureStats],
             failed: list[str], join: bool = False, risks: frozenset[str] = frozenset()) -> Iterator[FlowRecord]:
    """The flows of the captures; with `risks`, only those carrying any of them."""
    carry = Carry() if join else None
    records = _each_capture(captures, stats, failed,
                            lambda p, st: classify_capture(p, opts, warn=warn, stats=st, carry=carry))
    if carry is not None:
        records = itertools.chain(records, end_carry(carry, opts))
    yield from (r for r in records if not risks or risks.intersection(r.risks))


def _batches(captures: list[str], opts: Options, stats: dict[str, CaptureStats],
             failed: list[str], join: bool = False, risks: frozenset[str] = frozenset()) -> Iterator[pa.RecordBatch]:
    """`_records` as Arrow record batches (for the JSONL and CSV writers)."""
    carry = Carry() if join else None
    batches = _each_capture(captures, stats, failed,
                            lambda p, st: classify_batches(p, opts, warn=warn, stats=st, carry=carry))
    for batch in batches:
        yield with_risks(batch, risks)
    if carry is not None and (last := end_carry_batch(carry, opts)) is not None:
        yield with_risks(last, risks)


def write_table(records: Iterator[FlowRecord], out: IO[str], show_all: bool, stats: dict[str, CaptureStats],
                with_registry: bool = False) -> None:
    from rich.table import Table  # only the table format needs it

    table_out = console(file=out, width=None if out is sys.stdout else 200)
    table = Table(title="flows" if show_all else "tunnel flows", show_lines=False)
    cols = ("capture", "transport", "initiator", "responder", "packets", "label", "conf", "registry", "evidence",
            "risks")
    for col in cols if with_registry else tuple(c for c in cols if c != "registry"):
        table.add_column(col, overflow="fold")
    labels: dict[str, int] = {}
    for r in records:
        labels[r.label] = labels.get(r.label, 0) + 1
        if show_all or r.label != NONE:
            verdict = [" ".join(filter(None, (r.registry, r.registration_id)))] if with_registry else []
            table.add_row(shown(r.pcap), r.transport, f"{r.src_ip}:{r.src_port}", f"{r.dst_ip}:{r.dst_port}",
                          f"{r.src2dst_packets}/{r.dst2src_packets}", r.label, f"{r.confidence:.2f}",
                          *verdict, shown("; ".join(r.evidence)), ", ".join(r.risks))
    table_out.print(table)
    frames = sum(s.frames for s in stats.values())
    mix = ", ".join(f"{k}: {v}" for k, v in sorted(labels.items()))
    table_out.print(f"{len(stats)} capture(s), {frames} frames, {sum(labels.values())} flows ({mix or 'none'})")


def cmd_classify(args: argparse.Namespace) -> int:
    fmt = args.format or ("table" if (args.output is None and sys.stdout.isatty()) else "jsonl")
    stats: dict[str, CaptureStats] = {}
    failed: list[str] = []
    opts = options(args)
    db: list[str] = []  # the registry's files: -o must not name one
    if args.db or os.environ.get(ENV):
        from vpnid.classifier.audit.registry.store import StoreError, db_location, sqlite_path  # SQLite: only here

        try:
            opts.matcher = registry_matcher(args.db)
        except StoreError as e:
            error(str(e))
            return 2
        db = database_files(str(sqlite_path(db_location(args.db))))
    if args.output:
        try:
            refuse_inputs(args.output, [*args.captures, *db])
        except OutputError as e:
            error(str(e))
            return 2
    fields = output_fields(opts.matcher is not None)
    risks = frozenset(args.risk)
    with (open(args.output, "w", encoding="utf-8", newline="") if args.output else contextlib.nullcontext(sys.stdout)) as out:
        if fmt == "jsonl":
            write_jsonl_batches(_batches(args.captures, opts, stats, failed, args.join, risks), out, fields)
        elif fmt == "csv":
            write_csv_batches(_batches(args.captures, opts, stats, failed, args.join, risks), out, fields)
        else:
            write_table(_records(args.captures, opts, stats, failed, args.join, risks), out,
                        args.all or bool(risks), stats, opts.matcher is not None)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help=COMMANDS["classify"].help, description=CLASSIFY_HELP,
                       formatter_class=FORMATTER)
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap/pcapng files (gzip ok), or - for stdin")
    p.add_argument("--format", choices=("table", "jsonl", "csv"),
                   help="output format (default: table on a terminal, else jsonl)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--all", action="store_true", help="table format: list every flow, not only tunnels")
    p.add_argument("--join", action="store_true",
                   help="the captures are consecutive rotated files of one capture, given in time order: "
                        "flows that span files are joined (a joined flow names the file it started in)")
    p.add_argument("--db", metavar="DB", help=f"cross-check tunnel flows against this registry database "
                                               f"(default: ${ENV} if set); adds registry, registration_id")
    add_risk_option(p)
    add_flow_options(p)
    p.set_defaults(func=cmd_classify)
