"""`vpnid live IFACE`: classify traffic on an interface as it passes (see `vpnid.classifier.running.live`)."""

from __future__ import annotations

import argparse
import sys

from vpnid.classifier.cli.common import COMMANDS, FORMATTER, add_flow_options, error, options
from vpnid.classifier.running.live import LiveError, run_live

LIVE_HELP = """\
Capture on an interface (with tcpdump, so it needs the usual capture privilege) and print each flow as
a JSON line when a signature labels it ("event": "labelled") and again when it ends ("event": "ended").
A BPF filter narrows what is captured. Ctrl-C ends the capture and the flows still open.

examples:
  sudo vpnid live eth0
  sudo vpnid live eth0 'udp or tcp port 443' --count 100000
"""


def cmd_live(args: argparse.Namespace) -> int:
    try:
        run_live(args.iface, args.filter, args.count, options(args), sys.stdout)
    except LiveError as e:
        error(str(e))
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("live", help=COMMANDS["live"].help,
                       description=LIVE_HELP, formatter_class=FORMATTER)
    p.add_argument("iface", metavar="IFACE", help="interface to capture on")
    p.add_argument("filter", nargs="*", metavar="BPF", help="capture filter (tcpdump syntax)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N packets")
    add_flow_options(p)
    p.set_defaults(func=cmd_live)
