"""`vpnid trial ...` (run, list, report, compare) and `vpnid demo`, the bundled end-to-end trial."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vpnid.classifier.audit.files import OutputError, private_dir, staged
from vpnid.classifier.audit.leases import sample as sample_leases
from vpnid.classifier.audit.leases.layouts import read_leases
from vpnid.classifier.audit.leases.store import LeaseStore
from vpnid.classifier.audit.registry.csvio import read_csv
from vpnid.classifier.audit.registry.sample import PATH as SAMPLE_REGISTRY
from vpnid.classifier.audit.registry.store import ENV, StoreError, db_location, open_store
from vpnid.classifier.audit.text import csv_cell, printable, shown
from vpnid.classifier.audit.trials import (
    SubscriberView,
    Trial,
    TrialError,
    TrialStore,
    Window,
    compare,
    parse_time,
    subscriber_view,
)
from vpnid.classifier.cli.common import (
    COMMANDS,
    FORMATTER,
    add_flow_options,
    console,
    err,
    error,
    load_model,
    options,
    warn,
)
from vpnid.features.packets import CaptureError
from vpnid.pcaps import CORPUS

DEMO_TRIAL = "demo"

TRIAL_HELP = f"""\
A trial run classifies captures, cross-checks every tunnel against the registry, and stores the result
in the registry's database (--db PATH or ${ENV}): the parameters, the registry's state time, the model
version, every flow, and the flagged tunnels - tunnel flows whose registry verdict is not `registered`
(unregistered, expired, suspended, revoked, protocol_mismatch). Running a trial again under the same
name replaces it in one step: readers see the old trial or the new one, never a mix.

examples:
  export {ENV}=registry.db
  vpnid trial run week12 --from 2025-03-17 --to 2025-03-24 /data/captures/*.pcap
  vpnid trial list
  vpnid trial report week12 -o reports/week12      # report.html, flagged.csv, summary.json, flagged.pcap
  vpnid trial compare week11 week12                 # new, persisting and gone unregistered tunnels
  vpnid trial subscribers week12 --csv subs.csv     # who used flagged tunnels (needs `vpnid leases`)
"""

SUBSCRIBERS_HELP = """The flagged tunnels of a trial by subscriber: the subscriber the lease logs (`vpnid leases import`) gave
the client end at each flow's first packet, and per subscriber and tunnel (label, server end) the
verdict, flows, summed duration, bytes, first and last seen, and the registration that came closest (the
one that decided an expired, suspended, revoked or protocol_mismatch verdict; for an unregistered one, a
registration matching the client by subscriber or network for another server or protocol). Flagged flows
no subscriber could be found for are counted, with the gaps and overlaps among them.

examples:
  vpnid trial subscribers week12
  vpnid trial subscribers week12 --csv week12-subscribers.csv
"""
SUBSCRIBER_COLUMNS = ("subscriber_id", "attributed_by", "label", "server", "verdict", "flows", "duration_s", "bytes",
                      "first_seen", "last_seen", "closest_registration")

DEMO_HELP = """\
Run a complete trial on the bundled lab captures (pcaps/corpus) against the bundled sample registry and
lease log (the lab client changes hands from subscriber lab-alice to lab-bob mid-capture), and write its
report. DIR gets demo.db (the registry database, created afresh) and report/; open
report/report.html in a browser.

example:
  vpnid demo -o vpnid-demo
"""


@contextmanager
def _trials(db: str | None) -> Iterator[TrialStore]:
    """The trials of an existing registry database (a trial against no registry would flag everything)."""
    with open_store(db_location(db), create=False) as store:
        yield TrialStore(store)  # type: ignore[arg-type]


def _progress_bar(total: int) -> tuple[Progress, Callable[[str, int], None]]:
    """A progress display on stderr (only on a terminal) and the callback a run reports to."""
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[flows]} flows"), TimeElapsedColumn(), console=err,
                   transient=True, disable=not err.is_terminal)
    task = bar.add_task("captures", total=total, flows=0)
    done: set[str] = set()

    def progress(path: str, flows: int) -> None:
        done.add(path)
        bar.update(task, completed=len(done) - 1, flows=flows, description=printable(Path(path).name))

    return bar, progress


def run(trials: TrialStore, name: str, captures: list[str], args: argparse.Namespace, window: Window) -> Trial:
    """Run and store the trial with the flow and model options of `args`, recording which model it was."""
    chosen = load_model(args)
    bar, progress = _progress_bar(len(captures))
    with bar:
        trial = trials.run(name, captures, options(args, chosen), window, chosen.identity, progress=progress,
                           warn=warn)
    err.print(f"trial {shown(name)}: {trial.flows} flows, {trial.tunnels} tunnels, {trial.flagged} flagged "
                        f"(registry as of {trial.registry_snapshot or 'empty'})", soft_wrap=True)
    return trial


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report the errors a trial command can meet as one line and exit status 2."""
    def run_command(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (StoreError, TrialError, CaptureError, OutputError) as e:
            error(str(e))
            return 2
    return run_command


@_guarded
def cmd_run(args: argparse.Namespace) -> int:
    if "-" in args.captures:
        raise TrialError("a trial re-reads its captures for its report: give files, not '-'")
    window = Window(parse_time(args.start) if args.start else None, parse_time(args.end) if args.end else None)
    with _trials(args.db) as trials:
        run(trials, args.name, args.captures, args, window)
    return 0


@_guarded
def cmd_list(args: argparse.Namespace) -> int:
    with _trials(args.db) as trials:
        found = trials.list()
    if args.json:
        json.dump([asdict(t) for t in found], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    table = Table(title=f"trials in {shown(trials.store.location)}")
    for col in ("name", "finished (UTC)", "captures", "flows", "tunnels", "flagged", "registry as of", "model"):
        table.add_column(col)
    for t in found:
        table.add_row(shown(t.name), t.finished_at, str(len(t.parameters["captures"])), str(t.flows),
                      str(t.tunnels), str(t.flagged), t.registry_snapshot or "(empty)", shown(t.model_version or "-"))
    console().print(table)
    return 0


@_guarded
def cmd_report(args: argparse.Namespace) -> int:
    from vpnid.classifier.audit.report.trial_report import write_report  # matplotlib: loaded only for reports

    with _trials(args.db) as trials:
        written = write_report(trials, args.name, Path(args.output), warn=warn)
    print(f"wrote {', '.join(printable(p) for p in written.files)}")
    pcap = f"{written.pcap_frames} frames in flagged.pcap" if written.pcap_files else "no flagged.pcap"
    print(f"open {printable(written.files[0])} in a browser ({written.flagged_flows} flagged flows, {pcap})")
    return 0


@_guarded
def cmd_compare(args: argparse.Namespace) -> int:
    with _trials(args.db) as trials:
        result = compare(trials, args.a, args.b)
    if args.json:
        json.dump(result.as_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = console()
    out.print(f"unregistered tunnels (client -> server), trial {shown(args.a)} -> trial {shown(args.b)}:")
    for title, items in (("new", result.new), ("persisting", result.persisting), ("gone", result.gone)):
        out.print(f"[bold]{title}[/] ({len(items)}):")
        for e in items:
            out.print(f"  {shown(e)}")
    out.print("subscribers with flagged tunnels (by the lease logs):")
    for title, subs in (("new", result.new_subscribers), ("persisting", result.persisting_subscribers),
                        ("gone", result.gone_subscribers)):
        out.print(f"[bold]{title}[/] ({len(subs)}): {shown(' '.join(subs)) or '-'}")
    return 0


def _utc(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_subscribers_csv(view: SubscriberView, out) -> None:
    import csv

    w = csv.writer(out, lineterminator="\n")
    w.writerow(SUBSCRIBER_COLUMNS)
    for u in view.uses:
        w.writerow([csv_cell(v) for v in (u.subscriber_id, u.attributed_by, u.label, u.server, u.verdict, u.flows,
                                           f"{u.duration_s:.3f}", u.bytes, _utc(u.first_seen), _utc(u.last_seen),
                                           u.closest_registration or "")])


@_guarded
def cmd_subscribers(args: argparse.Namespace) -> int:
    with _trials(args.db) as trials:
        with trials.reading():
            trials.require(args.name)
            view = subscriber_view(trials.results(args.name, flagged_only=True))
    if args.csv:
        path = Path(args.csv)
        with staged(path.parent, protect=[args.db or ""] if args.db else []) as tmp:
            with open(tmp / path.name, "w", encoding="utf-8", newline="") as f:
                write_subscribers_csv(view, f)
    table = Table(title=f"subscribers with flagged tunnels in trial {shown(args.name)}")
    for col in ("subscriber", "by", "tunnel", "verdict", "flows", "duration", "bytes", "first seen (UTC)",
                "last seen (UTC)", "closest registration"):
        table.add_column(col, overflow="fold")
    for u in view.uses:
        table.add_row(shown(u.subscriber_id), u.attributed_by, f"{u.label} {shown(u.server)}", u.verdict,
                      str(u.flows), f"{u.duration_s:.1f} s", str(u.bytes), _utc(u.first_seen), _utc(u.last_seen),
                      shown(u.closest_registration or "-"))
    out = console(width=max(console().width, 160))
    out.print(table)
    out.print(f"{len({u.subscriber_id for u in view.uses})} subscribers; {view.unattributed} flagged flows not "
              f"attributed ({view.gaps} in a lease gap, {view.overlaps} where leases overlap)")
    if args.csv:
        out.print(f"wrote {shown(args.csv)}")
    return 0


@_guarded
def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.output)
    captures = sorted(str(p) for p in CORPUS.glob("*.pcap"))
    if not captures:
        raise TrialError(f"no bundled captures in {CORPUS}")
    from vpnid.classifier.audit.report.trial_report import write_report  # matplotlib: loaded only for reports

    private_dir(out)
    db = out / "demo.db"
    for stale in (db, db.with_name("demo.db-wal"), db.with_name("demo.db-shm")):
        stale.unlink(missing_ok=True)
    with open_store(str(db)) as store:
        store.upsert(read_csv(SAMPLE_REGISTRY))
        LeaseStore(store).add(sample_leases.KIND, sample_leases.PATH, read_leases(sample_leases.PATH,  # type: ignore[arg-type]
                                                                                  sample_leases.KIND))
        trials = TrialStore(store)  # type: ignore[arg-type]
        run(trials, DEMO_TRIAL, captures, args, Window())
        written = write_report(trials, DEMO_TRIAL, out / "report", warn=warn)
    print(f"demo registry: {printable(db)} (sample registry and lease log, {len(captures)} bundled captures)")
    print(f"report: {printable(written.files[0])}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    db_help = f"registry database (default: ${ENV})"
    trial = sub.add_parser("trial", help=COMMANDS["trial"].help, description=TRIAL_HELP,
                           formatter_class=FORMATTER)
    tsub = trial.add_subparsers(dest="trial_command", required=True, metavar="ACTION")

    p = tsub.add_parser("run", help="classify captures, cross-check tunnels and store the trial",
                        description=TRIAL_HELP, formatter_class=FORMATTER)
    p.add_argument("name", metavar="NAME")
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap/pcapng files (gzip ok)")
    p.add_argument("--db", help=db_help)
    p.add_argument("--from", dest="start", metavar="TIME", help="keep flows first seen at or after TIME (ISO, UTC "
                                                                "unless it has a zone)")
    p.add_argument("--to", dest="end", metavar="TIME", help="keep flows first seen before TIME")
    add_flow_options(p)
    p.set_defaults(func=cmd_run)

    p = tsub.add_parser("list", help="list stored trials")
    p.add_argument("--db", help=db_help)
    p.add_argument("--json", action="store_true", help="print the trials as JSON")
    p.set_defaults(func=cmd_list)

    p = tsub.add_parser("report", help="write a trial's HTML report, flagged.csv, summary.json, flagged.pcap")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the report files")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=cmd_report)

    p = tsub.add_parser("compare", help="new, persisting and gone unregistered tunnels between two trials")
    p.add_argument("a", metavar="A", help="the earlier trial")
    p.add_argument("b", metavar="B", help="the later trial")
    p.add_argument("--db", help=db_help)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=cmd_compare)

    p = tsub.add_parser("subscribers", help="a trial's flagged tunnels by subscriber (through the lease logs)",
                        description=SUBSCRIBERS_HELP, formatter_class=FORMATTER)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--db", help=db_help)
    p.set_defaults(func=cmd_subscribers)

    p = sub.add_parser("demo", help=COMMANDS["demo"].help,
                       description=DEMO_HELP, formatter_class=FORMATTER)
    p.add_argument("-o", "--output", default="vpnid-demo", metavar="DIR", help="(default: %(default)s)")
    add_flow_options(p)
    p.set_defaults(func=cmd_demo)
