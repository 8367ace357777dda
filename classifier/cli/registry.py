"""`vpnid registry ...`: keep the registry of sanctioned tunnels (import, add, list, show, revoke, export)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from vpnid.classifier.audit.files import OutputError, database_files, staged
from vpnid.classifier.audit.registry.csvio import CsvError, read_csv, write_csv
from vpnid.classifier.audit.registry.overlap import overlaps
from vpnid.classifier.audit.registry.registration import (
    BROADEST,
    CATEGORIES,
    PROTOCOLS,
    STATUSES,
    VERDICTS,
    Registration,
    RegistrationError,
    check_breadth,
    parse_registration,
)
from vpnid.classifier.audit.registry.store import ENV, RegistryStore, StoreError, db_location, open_store
from vpnid.classifier.audit.text import printable, shown
from vpnid.classifier.cli.common import COMMANDS, FORMATTER, console, error, warn
from vpnid.features.families import TUNNEL_FAMILIES

REGISTRY_HELP = f"""\
The registry lists the tunnels organisations have declared: who (registration_id, organization,
category), which tunnel (protocol: {", ".join(TUNNEL_FAMILIES)} or any), from
where (client_networks: one or more CIDRs) to where (server_endpoints: CIDR, CIDR:port or
[IPv6-CIDR]:port; none means anywhere), when (valid_from, valid_until; an empty until is open-ended)
and its status (active, suspended, revoked).

The database is a SQLite file named by --db PATH (or a sqlite:/// URL), or by ${ENV} when --db is not
given. Readers never block an import and see all of it or none of it.

How a tunnel flow is judged (as a trial does): a registration covers the flow when one end is in its
client networks, or the subscriber the lease logs give that end at the flow's first packet is the one
it names (subscriber_id, phone or account_id), and, if it lists server endpoints, the other end is in one of them (on
that port, when one is given). Either end may be the client, so a capture that starts mid-flow still
matches. The best covering registration gives the verdict, in this order: registered, protocol_mismatch,
expired (flow date outside valid_from..valid_until, UTC), suspended, revoked; no cover: unregistered.

examples:
  export {ENV}=registry.db
  vpnid registry import classifier/registry/sample_registry.csv
  vpnid registry list --status revoked --protocol wireguard
  vpnid registry show BANK-0042
  vpnid registry revoke BANK-0042 --reason "contract ended"
  vpnid registry export backup.csv
"""

BROAD_HELP = (f"accept client networks broader than /{BROADEST[4]} (IPv4) or /{BROADEST[6]} (IPv6); without it "
              "such a registration is refused")

IMPORT_HELP = """\
Import registrations from a CSV file whose header names exactly these columns (any order):
  registration_id,organization,category,protocol,client_networks,server_endpoints,
  valid_from,valid_until,status,notes
and, optionally (files from before them import unchanged), the subscriber columns
  subscriber_id,phone,account_id
Lists inside a cell are separated by spaces; dates are YYYY-MM-DD. A registration names client networks,
a subscriber (subscriber_id, phone in E.164 such as +15550100008, or account_id), or both: either then
identifies the client.

The file must be UTF-8. Every row is checked first. If any row is bad, each bad row is reported with its
line number and the reason, and nothing is imported; so is a file that is not clean CSV (undecodable
bytes, a NUL, an unbalanced quote, a cell over 128 Ki characters), at the first such line. Otherwise
the whole file is imported in one transaction. A client network broader than /8 (IPv4) or /32 (IPv6)
is refused unless --allow-broad is given, and a new or changed registration that covers flows another
one covers too is named in a warning: the better verdict decides those flows.

A cell that starts with = + - @, a tab or CR is exported with a leading ' so that no spreadsheet runs
it as a formula; import removes exactly that ' again (a cell of ' + such a cell gains one more '), so
export -> import is exact.

A registration_id already in the database is updated in place with the row's values (the import
reports which ids were updated, and `show ID` lists the changes); ids not in the file are left alone.
Re-importing an unchanged file changes nothing.

example file:
  registration_id,organization,category,protocol,client_networks,server_endpoints,valid_from,valid_until,status,notes
  BANK-0001,First Bank,bank,openvpn,203.0.113.0/24 2001:db8:10::/48,198.51.100.7/32:1194,2024-01-01,,active,
  EMB-0007,Embassy of X,embassy,ipsec,192.0.2.16/28,[2001:db8::1/128]:500 198.51.100.0/24,2023-05-01,2025-04-30,active,HQ link
  HOME-0003,A. Home Worker,freelancer,wireguard,,198.51.100.9/32:51820,2025-01-01,,active,,alice@isp,+15550100003,

examples:
  vpnid registry import --db registry.db registrations.csv
"""

ADD_HELP = """\
Add one registration, given field by field. The id must be new (to change a registration, export,
edit and import). --client and --server take several values. A registration needs --client networks, a
subscriber (--subscriber, --phone or --account, matched against the lease logs' subscriber ids), or both.

examples:
  vpnid registry add --id FREE-0003 --org "A. Freelancer" --category freelancer --protocol wireguard \\
      --client 203.0.113.77/32 --server 198.51.100.9/32:51820 --from 2025-01-01 --until 2025-12-31
  vpnid registry add --id SH-0100 --org "Code House" --category software_house --protocol any \\
      --client 2001:db8:44::/48 192.0.2.0/26
  vpnid registry add --id HOME-0003 --org "A. Home Worker" --category freelancer --protocol wireguard \
      --subscriber alice@isp --phone +15550100003 --server 198.51.100.9/32:51820
"""

LIST_HELP = """\
List registrations as a table, sorted by id.

examples:
  vpnid registry list
  vpnid registry list --org bank --status active        # organisations whose name contains 'bank'
  vpnid registry list --protocol ipsec
"""

EXPORT_HELP = """\
Write every registration to a CSV file in the import format, sorted by id, values in canonical form
(networks as CIDR, dates YYYY-MM-DD). Importing the export into an empty database and exporting again
gives the same bytes.

examples:
  vpnid registry export backup.csv
  vpnid registry export - | grep ,revoked,
"""

Command = Callable[[argparse.Namespace], int]
SHOWN = 10  # overlapping registrations named per warning, and warnings per import
_STATUS_STYLE = {"active": "green", "suspended": "yellow", "revoked": "red"}


def _open(args: argparse.Namespace, create: bool) -> RegistryStore:
    return open_store(db_location(args.db), create=create)


def cmd_import(args: argparse.Namespace) -> int:
    try:
        regs = read_csv(args.file, allow_broad=args.allow_broad)
    except CsvError as e:
        for problem in e.problems:
            error(problem)
        error(f"nothing imported ({len(e.problems)} problem{'s' if len(e.problems) > 1 else ''})")
        return 1
    with _open(args, create=True) as store:
        done = store.upsert(regs)
        met = overlaps(store.select(), done.added + done.updated) if done.added or done.updated else {}
    updated = f" ({', '.join(done.updated)})" if 0 < len(done.updated) <= 10 else ""
    print(f"imported {len(regs)} registrations into {printable(store.location)}: {len(done.added)} added, "
          f"{len(done.updated)} updated{updated}, {len(done.unchanged)} unchanged")
    _warn_overlaps(met)
    return 0


def _warn_overlaps(met: dict[str, list[str]]) -> None:
    """Name the registrations whose verdicts an import can change (the first SHOWN of them)."""
    for rid, others in list(met.items())[:SHOWN]:
        more = f" and {len(others) - SHOWN} more" if len(others) > SHOWN else ""
        warn(f"{rid} changes the verdict of {', '.join(others[:SHOWN])}{more} for flows both cover (the better "
             f"verdict decides: {' > '.join(VERDICTS[:-1])})")
    if len(met) > SHOWN:
        warn(f"{len(met) - SHOWN} more registrations change the verdict of others")


def cmd_add(args: argparse.Namespace) -> int:
    reg = parse_registration({
        "registration_id": args.id, "organization": args.org, "category": args.category,
        "protocol": args.protocol, "client_networks": " ".join(args.client),
        "server_endpoints": " ".join(args.server), "valid_from": args.valid_from,
        "valid_until": args.valid_until, "status": args.status, "notes": args.notes,
        "subscriber_id": args.subscriber, "phone": args.phone, "account_id": args.account})
    if not args.allow_broad:
        check_breadth(reg)
    with _open(args, create=True) as store:
        store.add(reg)
        met = overlaps(store.select(), [reg.registration_id])
    print(f"added {reg.registration_id} to {printable(store.location)}")
    _warn_overlaps(met)
    return 0


def _validity(reg: Registration) -> str:
    return f"{reg.valid_from} .. {reg.valid_until or 'open'}"


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        regs = store.select(organization=args.org, status=args.status, protocol=args.protocol,
                            subscriber=args.subscriber)
    table = Table(title=f"registrations in {shown(store.location)}")
    for col in ("id", "organization", "category", "protocol", "client networks", "subscriber", "server endpoints",
                "valid", "status"):
        table.add_column(col, overflow="fold")
    for r in regs:
        f = r.to_fields()
        table.add_row(r.registration_id, shown(r.organization), r.category, r.protocol, f["client_networks"] or "-",
                      shown(" ".join(r.subscriber_keys)) or "-", f["server_endpoints"] or "(any)", _validity(r), f"[{_STATUS_STYLE[r.status]}]{r.status}[/]")
    out = console()
    out.print(table)
    out.print(f"{len(regs)} registration{'s' if len(regs) != 1 else ''}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        reg = store.get(args.id)
        history = store.history(args.id) if reg else []
    if reg is None:
        raise StoreError(f"no registration {args.id} in {store.location}")
    out = console()
    table = Table(show_header=False, title=reg.registration_id)
    for k, v in reg.to_fields().items():
        table.add_row(k, shown(v) or "-")
    out.print(table)
    for change in history:
        out.print(f"{change.at}  {change.action}" + (f": {shown(change.detail)}" if change.detail else ""))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        reg = store.get(args.id)
        if reg is None:
            raise StoreError(f"no registration {args.id} in {store.location}")
        if reg.status == "revoked":
            print(f"{args.id} was already revoked")
            return 0
        store.set_status(args.id, "revoked", args.reason)
    print(f"revoked {args.id} (was {reg.status})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _open(args, create=False) as store:
        regs = store.select()
    if args.file == "-":
        write_csv(regs, sys.stdout)
        return 0
    path = Path(args.file)
    with staged(path.parent, protect=database_files(store.location)) as tmp:
        with open(tmp / path.name, "w", encoding="utf-8", newline="") as out:
            n = write_csv(regs, out)
    print(f"exported {n} registrations to {printable(args.file)}")
    return 0


def _run(command: Command) -> Command:
    """Turn the registry's own errors into one clear line and exit status 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (StoreError, RegistrationError, OutputError) as e:
            error(str(e))
            return 1
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `registry` and its subcommands to the vpnid parser."""
    fmt = FORMATTER
    top = subparsers.add_parser("registry", help=COMMANDS["registry"].help, description=REGISTRY_HELP,
                                formatter_class=fmt)
    sub = top.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", metavar="PATH", help=f"registry database file or sqlite:/// URL (default: ${ENV})")

    def action(name: str, func: Command, help: str, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[db], help=help, description=description or help, formatter_class=fmt)
        p.set_defaults(func=_run(func))
        return p

    p = action("import", cmd_import, "import registrations from a CSV file (all or nothing)", IMPORT_HELP)
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--allow-broad", action="store_true", help=BROAD_HELP)

    p = action("add", cmd_add, "add one registration", ADD_HELP)
    p.add_argument("--id", required=True, help="registration_id: letters, digits, . _ : - (up to 64)")
    p.add_argument("--org", required=True, help="organization name")
    p.add_argument("--category", required=True, choices=CATEGORIES)
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--client", nargs="+", default=[], metavar="CIDR", help="client networks")
    p.add_argument("--subscriber", default="", metavar="ID", help="subscriber id, as the lease logs name it")
    p.add_argument("--phone", default="", metavar="E164", help="the subscriber's phone number, e.g. +15550100003")
    p.add_argument("--account", default="", metavar="ID", help="the subscriber's account id")
    p.add_argument("--server", nargs="+", default=[], metavar="ENDPOINT",
                   help="server endpoints: CIDR, CIDR:port or [IPv6-CIDR]:port (default: any server)")
    p.add_argument("--from", dest="valid_from", default=datetime.now(UTC).date().isoformat(), metavar="DATE",
                   help="first valid day, YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--until", dest="valid_until", default="", metavar="DATE",
                   help="last valid day, YYYY-MM-DD (default: open-ended)")
    p.add_argument("--status", default="active", choices=STATUSES, help="(default: %(default)s)")
    p.add_argument("--notes", default="")
    p.add_argument("--allow-broad", action="store_true", help=BROAD_HELP)

    p = action("list", cmd_list, "list registrations", LIST_HELP)
    p.add_argument("--org", metavar="TEXT", help="organization name contains TEXT (any case)")
    p.add_argument("--subscriber", metavar="KEY", help="registrations naming this subscriber id, phone or account id")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--protocol", choices=PROTOCOLS)

    p = action("show", cmd_show, "show one registration and its change history")
    p.add_argument("id", metavar="ID")

    p = action("revoke", cmd_revoke, "mark a registration revoked (kept, with the reason, in its history)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", default="", help="why, for the change history")

    p = action("export", cmd_export, "write all registrations to a CSV file (the import format)", EXPORT_HELP)
    p.add_argument("file", metavar="FILE.csv", help="'-' writes to standard output")
