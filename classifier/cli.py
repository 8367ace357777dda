"""`vpnid` command line: classify captures, score against labels, run the lab."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich_argparse import RawDescriptionRichHelpFormatter

from classifier.evaluate import LabelsError, Report, read_labels, score
from classifier.labels import NONE
from classifier.pipeline import CaptureStats, Carry, Options, classify_capture, end_carry
from classifier.records import FlowRecord, output_fields
from classifier.registry.match import Matcher
from classifier.registry.store import ENV, StoreError, db_location, open_store
from classifier.runtime import tune_gc
from features.packets import CaptureError

if TYPE_CHECKING:
    from classifier.fastmodel import CompiledModel
    from classifier.model import FlowModel

err = Console(stderr=True, highlight=False)


def warn(msg: str) -> None:
    """Messages carry file names and capture contents: escaped, so '[' in them is text, not markup."""
    err.print(f"[yellow]vpnid: warning:[/] {escape(msg)}", soft_wrap=True)


def error(msg: str) -> None:
    err.print(f"[red]vpnid: error:[/] {escape(msg)}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------- classify
CLASSIFY_HELP = """\
Read capture files, group packets into bidirectional flows, and label each flow as a tunnel
(openvpn, wireguard, ipsec, openconnect, shadowsocks) or none, with a confidence and the evidence that
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
"""


def add_flow_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("flow options")
    g.add_argument("--idle-timeout", type=float, default=120.0, metavar="S",
                   help="end a flow after S seconds without packets (default: %(default)s)")
    g.add_argument("--active-timeout", type=float, default=1800.0, metavar="S",
                   help="split a flow after S seconds from its first packet (default: %(default)s)")
    g.add_argument("--max-flows", type=int, default=1_000_000, metavar="N",
                   help="open flows kept in memory; beyond that the least recently seen are ended early "
                        "and counted (default: %(default)s)")
    add_model_options(p)


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model options").add_mutually_exclusive_group()
    g.add_argument("--model", metavar="PATH", help="trained model for flows signatures leave undecided "
                                                    "(default: models/vpnid.skops when present)")
    g.add_argument("--no-model", action="store_true", help="signatures only")


class ModelUnusable(Exception):
    """The model named (or shipped) cannot be loaded; the reason was already printed."""


def load_model(args: argparse.Namespace) -> CompiledModel | FlowModel | None:
    """The model a command should use: --model, else the shipped one if present, else none."""
    if args.no_model:
        return None
    from classifier.fastmodel import DEFAULT_MODEL, ModelError, load

    if args.model is None and not DEFAULT_MODEL.exists():
        warn(f"no model at {DEFAULT_MODEL}; labelling by signatures only")
        return None
    try:
        return load(args.model or DEFAULT_MODEL)
    except ModelError as e:
        error(str(e))
        raise ModelUnusable from None


def options(args: argparse.Namespace) -> Options:
    """Pipeline options from the flow and model options every classifying command shares."""
    return Options(idle_timeout=args.idle_timeout, active_timeout=args.active_timeout, max_flows=args.max_flows,
                   drop_first=getattr(args, "drop_first", 0), model=load_model(args))


def _records(captures: list[str], opts: Options, stats: dict[str, CaptureStats],
             failed: list[str], join: bool = False) -> Iterator[FlowRecord]:
    carry = Carry() if join else None
    for path in captures:
        st = stats.setdefault(path, CaptureStats())
        try:
            with err.status(f"reading {path}", spinner="dots") if err.is_terminal else contextlib.nullcontext():
                yield from classify_capture(path, opts, warn=warn, stats=st, carry=carry)
        except CaptureError as e:
            error(str(e))
            failed.append(path)
    if carry is not None:
        yield from end_carry(carry, opts)


def write_jsonl(records: Iterator[FlowRecord], out: IO[str], fields: tuple[str, ...]) -> None:
    for r in records:
        d = r.as_dict()
        out.write(json.dumps({k: d[k] for k in fields}, ensure_ascii=False) + "\n")


def write_csv(records: Iterator[FlowRecord], out: IO[str], fields: tuple[str, ...]) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(fields)
    for r in records:
        d = r.as_dict()
        d["evidence"], d["risks"] = " | ".join(d["evidence"]), " | ".join(d["risks"])
        w.writerow(["" if d[k] is None else d[k] for k in fields])


def write_table(records: Iterator[FlowRecord], out: IO[str], show_all: bool, stats: dict[str, CaptureStats],
                with_registry: bool = False) -> None:
    console = Console(file=out, highlight=False, width=None if out is sys.stdout else 200)
    table = Table(title="flows" if show_all else "tunnel flows", show_lines=False)
    cols = ("capture", "transport", "initiator", "responder", "packets", "label", "conf", "registry", "evidence")
    for col in cols if with_registry else tuple(c for c in cols if c != "registry"):
        table.add_column(col, overflow="fold")
    labels: dict[str, int] = {}
    for r in records:
        labels[r.label] = labels.get(r.label, 0) + 1
        if show_all or r.label != NONE:
            verdict = [" ".join(filter(None, (r.registry, r.registration_id)))] if with_registry else []
            table.add_row(escape(r.pcap), r.transport, f"{r.src_ip}:{r.src_port}", f"{r.dst_ip}:{r.dst_port}",
                          f"{r.src2dst_packets}/{r.dst2src_packets}", r.label, f"{r.confidence:.2f}",
                          *verdict, escape("; ".join(r.evidence)))
    console.print(table)
    frames = sum(s.frames for s in stats.values())
    mix = ", ".join(f"{k}: {v}" for k, v in sorted(labels.items()))
    console.print(f"{len(stats)} capture(s), {frames} frames, {sum(labels.values())} flows ({mix or 'none'})")


def registry_matcher(db: str | None) -> Matcher:
    """The registry of `--db`/$VPNID_DB, indexed for the cross-check; StoreError if there is none."""
    with open_store(db_location(db), create=False) as store:
        return Matcher.build(store.select())


def cmd_classify(args: argparse.Namespace) -> int:
    fmt = args.format or ("table" if (args.output is None and sys.stdout.isatty()) else "jsonl")
    stats: dict[str, CaptureStats] = {}
    failed: list[str] = []
    opts = options(args)
    if args.db or os.environ.get(ENV):
        try:
            opts.matcher = registry_matcher(args.db)
        except StoreError as e:
            error(str(e))
            return 2
    fields = output_fields(opts.matcher is not None)
    records = _records(args.captures, opts, stats, failed, args.join)
    with (open(args.output, "w", encoding="utf-8", newline="") if args.output else contextlib.nullcontext(sys.stdout)) as out:
        if fmt == "jsonl":
            write_jsonl(records, out, fields)
        elif fmt == "csv":
            write_csv(records, out, fields)
        else:
            write_table(records, out, args.all, stats, opts.matcher is not None)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- eval
EVAL_HELP = """\
Classify every capture named in a labelled-flows CSV and score vpnid's labels against it.

The CSV needs columns pcap, transport, a_ip, a_port, b_ip, b_port, family (openvpn, wireguard, ipsec,
openconnect, shadowsocks, other_vpn, none, unknown) and may have confidence. Pcap paths are relative
to the CSV's folder; endpoints are in no particular order. A row whose transport and a_ip are '*' labels every flow of its
capture that no other row names. Rows whose confidence does not start with --trust are not scored;
neither are rows of family 'unknown'.

A row is correct when every flow record matching it carries its family; a tunnel label on a 'none' row
is a false positive.

examples:
  vpnid eval ../shared/corpus/external/truth.csv
  vpnid eval --json pcaps/corpus/manifest.csv > score.json
"""


def print_report(report: Report, console: Console) -> None:
    t = Table(title="per-family score")
    for col in ("family", "rows", "correct", "recall", "precision"):
        t.add_column(col, justify="right" if col != "family" else "left")
    fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    for fam, s in sorted(report.families.items()):
        t.add_row(fam, str(s.rows), str(s.correct), fmt(s.recall), fmt(s.precision))
    console.print(t)
    for title, items in (("false positives", report.false_positives), ("misses", report.misses),
                         ("rows with no matching flow", report.missing)):
        if items:
            console.print(f"[bold]{title}[/] ({len(items)}):")
            for it in items:
                ends = " <-> ".join(it["endpoints"])
                console.print(f"  line {it['line']}: {it['pcap']} {it['transport']} {ends}: "
                              f"truth {it['family']}, vpnid {it['predicted'] or '(no flow)'}")
    for e in report.errors:
        console.print(f"[red]capture error:[/] {e}")
    console.print(f"false positives: {len(report.false_positives)}, misses: {len(report.misses)}, "
                  f"missing: {len(report.missing)}, unscored rows: {report.unscored}, "
                  f"untrusted rows: {report.untrusted}")


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        rows, problems = read_labels(args.labels)
    except LabelsError as e:
        error(str(e))
        return 2
    for msg in problems:
        warn(f"{msg}; row not scored")
    opts = options(args)
    report = score(rows, lambda p: classify_capture(str(p), opts, warn=lambda _m: None), trust=args.trust)
    if args.json:
        json.dump(report.as_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(report, Console(highlight=False, soft_wrap=True))
    return 1 if args.strict and not report.perfect else 0


# ---------------------------------------------------------------------------------------------- main
CORE_COMMANDS = ("classify", "eval")  # defined here; the other commands' modules are imported to add theirs


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or, when `command` is one defined in this module, one that knows only the
    commands of this module (importing the other commands' modules to build the parser would cost a
    short `vpnid classify` a tenth of its run time)."""
    parser = argparse.ArgumentParser(
        prog="vpnid",
        description="Find VPN tunnels in packet captures, passively, and audit them.",
        formatter_class=RawDescriptionRichHelpFormatter,
        epilog="Run 'vpnid COMMAND --help' for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("classify", help="label the flows of capture files", description=CLASSIFY_HELP,
                       formatter_class=RawDescriptionRichHelpFormatter)
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
    add_flow_options(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="score labels against a labelled-flows CSV", description=EVAL_HELP,
                       formatter_class=RawDescriptionRichHelpFormatter)
    p.add_argument("labels", metavar="LABELS.csv")
    p.add_argument("--json", action="store_true", help="print the score as JSON")
    p.add_argument("--trust", default="DPI", metavar="PREFIX",
                   help="score only rows whose confidence starts with PREFIX ('' scores all; default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every scored row is correct")
    p.add_argument("--drop-first", type=int, default=0, metavar="N",
                   help="withhold each flow's first N packets from dissectors, features and counters, as if "
                        "the capture had started late (default: %(default)s)")
    add_flow_options(p)
    p.set_defaults(func=cmd_eval)
    if command in CORE_COMMANDS:
        return parser

    from classifier import train_cli

    train_cli.register(sub)

    from classifier import batch, explain, live, trial_cli
    from classifier.registry import cli as registry_cli
    from pcaps.lab import cli as lab_cli  # the lab stands apart: it only adds its own subcommand

    registry_cli.register(sub)
    trial_cli.register(sub)
    explain.register(sub)
    batch.register(sub)
    live.register(sub)
    lab_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    tune_gc()
    try:
        return args.func(args)
    except BrokenPipeError:
        return 0
    except ModelUnusable:
        return 2
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
