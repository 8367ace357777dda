"""`vpnid leases ...`: load IP-assignment logs (RADIUS accounting, DHCP leases, CGNAT port blocks) into
the registry's database, list what was loaded, and ask who held an address at a time."""

from __future__ import annotations

import argparse
import ipaddress
from datetime import UTC, datetime

from rich.table import Table

from vpnid.classifier.audit.leases.layouts import LAYOUTS, read_leases
from vpnid.classifier.audit.leases.store import LeaseStore
from vpnid.classifier.audit.registry.csvio import CsvError
from vpnid.classifier.audit.registry.store import ENV, StoreError, db_location, open_store
from vpnid.classifier.audit.text import printable, shown
from vpnid.classifier.cli.common import COMMANDS, FORMATTER, console, error

LEASES_HELP = f"""\
Lease logs say which subscriber held an address when, so that a trial can name who ran a tunnel and
check registrations by subscriber (`registry add --subscriber`). They are kept in the registry's
database (--db PATH or ${ENV}). Each kind is a CSV file with exactly these columns (any order):

  radius  event,time,session_id,subscriber_id,framed_ip
          RADIUS accounting, a row per Acct-Status-Type (start, interim-update, stop) of a session
          (Acct-Session-Id): subscriber_id held framed_ip from start to stop; no stop: still open
  dhcp    subscriber_id,address,start,end
  cgnat   subscriber_id,private_address,public_address,port_first,port_last,start,end
          a port block: the subscriber leaves as public_address on ports port_first..port_last

Times are ISO 8601 (2026-11-28T23:00:00Z; no zone: UTC). An interval holds from start up to, not
including, end; an empty end is open. Every row is checked first: if any is bad, each is reported with
its line and nothing is imported (the registry import's rules: UTF-8, no NUL, balanced quotes). The same
file (by sha256) is imported once.

A flow's client is attributed at its first packet: the subscriber holding its address (behind CGNAT:
the public address and the flow's port) then. Two subscribers holding it at once are reported as an
overlap, an address nobody held then as a gap; neither is guessed.

examples:
  vpnid leases import --kind radius accounting-2026-11-28.csv
  vpnid leases import --kind cgnat portblocks.csv
  vpnid leases list
  vpnid leases who 203.0.113.9 2026-11-28T23:15:00Z --port 40123
"""


def _store(args: argparse.Namespace, create: bool) -> LeaseStore:
    return LeaseStore(open_store(db_location(args.db), create=create))  # type: ignore[arg-type]


def cmd_import(args: argparse.Namespace) -> int:
    try:
        leases = read_leases(args.file, args.kind)
    except CsvError as e:
        for problem in e.problems:
            error(problem)
        error(f"nothing imported ({len(e.problems)} problem{'s' if len(e.problems) > 1 else ''})")
        return 1
    leases_store = _store(args, create=True)
    with leases_store.store:
        done = leases_store.add(args.kind, args.file, leases)
        total = leases_store.count()
    subscribers = len({x.subscriber_id for x in leases})
    print(f"imported {done.intervals} {args.kind} intervals of {subscribers} subscribers from "
          f"{printable(args.file)} into {printable(leases_store.store.location)} (import {done.id}; "
          f"{total} intervals in all)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    leases_store = _store(args, create=False)
    with leases_store.store:
        imports = leases_store.imports()
    table = Table(title=f"lease imports in {shown(leases_store.store.location)}")
    for col in ("id", "imported (UTC)", "kind", "intervals", "file", "sha256"):
        table.add_column(col, overflow="fold")
    for i in imports:
        table.add_row(str(i.id), i.at, i.kind, str(i.intervals), shown(i.source), i.sha256[:16])
    console().print(table)
    return 0


def _ms(t: int | None) -> str:
    return datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if t else "open"


def cmd_who(args: argparse.Namespace) -> int:
    from vpnid.classifier.audit.trials import TrialError, parse_time

    try:
        address = ipaddress.ip_address(args.address)
    except ValueError:
        raise StoreError(f"{args.address!r} is not an IPv4 or IPv6 address") from None
    try:
        t_ms = int(parse_time(args.time) * 1000)
    except TrialError as e:
        raise StoreError(str(e)) from None
    leases_store = _store(args, create=False)
    with leases_store.store:
        holders = leases_store.holders(address, t_ms, args.port)
    out = console()
    if not holders:
        out.print(f"nobody held {address} at {_ms(t_ms)} by the lease logs")
        return 0
    for h in holders:
        where = f" ports {h.port_first}-{h.port_last}" if h.port_first is not None and h.address == address else ""
        out.print(f"{shown(h.subscriber_id)}  {h.kind}  {h.address}{where}  {_ms(h.start_ms)} .. {_ms(h.end_ms)}  "
                  f"({shown(h.source)}:{h.line})")
    if len({h.subscriber_id for h in holders}) > 1:
        out.print("[yellow]overlap:[/] several subscribers held it at once; a trial attributes it to none")
    return 0


def _run(command):
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (StoreError, OSError) as e:
            error(getattr(e, "strerror", None) and f"{e.filename}: {e.strerror}" or str(e))
            return 1
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser("leases", help=COMMANDS["leases"].help,
                                description=LEASES_HELP, formatter_class=FORMATTER)
    sub = top.add_subparsers(dest="leases_command", required=True, metavar="ACTION")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="PATH", help=f"registry database file or sqlite:/// URL (default: ${ENV})")
    p = sub.add_parser("import", parents=[db], help="import a lease log (all or nothing)", description=LEASES_HELP,
                       formatter_class=FORMATTER)
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--kind", required=True, choices=sorted(LAYOUTS))
    p.set_defaults(func=_run(cmd_import))
    p = sub.add_parser("list", parents=[db], help="list the imported lease logs")
    p.set_defaults(func=_run(cmd_list))
    p = sub.add_parser("who", parents=[db], help="who held an address (and port) at a time")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("time", metavar="TIME", help="ISO 8601; no zone: UTC")
    p.add_argument("--port", type=int, help="the flow's port, for an address behind CGNAT")
    p.set_defaults(func=_run(cmd_who))
