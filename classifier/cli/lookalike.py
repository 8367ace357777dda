"""`vpnid lookalike`: build look-alike negatives (ordinary flows moved onto VPN ports) for `vpnid eval`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vpnid.classifier.cli.common import COMMANDS, FORMATTER, console, error
from vpnid.classifier.labelling.evaluate import LabelsError
from vpnid.pcaps.lookalike import TRUSTED, VPN_PORTS, build

LOOKALIKE_HELP = f"""\
Take the 'none' TCP and UDP flows of labelled-flows CSVs (rows vpnid eval would score: confidence
empty or starting with --trust; whole-capture rows give every TCP/UDP flow of their capture), move
each flow's server port onto every port given (default {", ".join(map(str, VPN_PORTS))}) with the
checksums updated, and write one raw-IP pcap per source capture and port plus OUT/labels.csv (every
flow family none). Then 'vpnid eval OUT/labels.csv': any tunnel label is a false positive, because a
port is no evidence. Captures are derived from the inputs: keep them out of the repository.

examples:
  vpnid lookalike -o /tmp/lookalike ../shared/corpus/external/truth.csv pcaps/corpus/manifest.csv
  vpnid eval /tmp/lookalike/labels.csv
"""


def cmd_lookalike(args: argparse.Namespace) -> int:
    try:
        summary = build([Path(p) for p in args.labels], Path(args.output), args.ports, args.trust)
    except (LabelsError, OSError) as e:
        error(str(e))
        return 2
    out = console()
    per_port = ", ".join(f"{port}: {n}" for port, n in sorted(summary.flows.items()))
    out.print(f"{summary.captures} captures, flows per port: {per_port or 'none'}")
    if summary.collisions:
        out.print(f"{summary.collisions} look-alikes left out (over all ports): their rewritten 5-tuple was another flow's")
    if summary.rows_without_packets:
        out.print(f"{len(summary.rows_without_packets)} rows named flows not found in their capture "
                  f"(inside a tunnel, or not TCP/UDP at the outer header)")
    return 0


def _ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ports: {text!r}") from None
    if not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"ports are 1-65535: {text!r}")
    return ports


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lookalike", help=COMMANDS["lookalike"].help,
                       description=LOOKALIKE_HELP, formatter_class=FORMATTER)
    p.add_argument("labels", nargs="+", metavar="LABELS.csv", help="labelled-flows CSVs (vpnid eval's format)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the captures and labels.csv")
    p.add_argument("--ports", type=_ports, default=VPN_PORTS, metavar="PORT[,...]",
                   help=f"server ports to move every flow onto (default: {','.join(map(str, VPN_PORTS))})")
    p.add_argument("--trust", default=TRUSTED, metavar="PREFIX",
                   help="use rows whose confidence starts with PREFIX, as vpnid eval scores them (default: %(default)s)")
    p.set_defaults(func=cmd_lookalike)
