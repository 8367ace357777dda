"""`vpnid eval`: score vpnid's labels against a labelled-flows CSV."""

from __future__ import annotations

import argparse
import json
import sys

from vpnid.classifier.cli.common import COMMANDS, FORMATTER, add_flow_options, console, error, options, warn
from vpnid.classifier.labelling.evaluate import LabelsError, print_report, read_labels, score
from vpnid.classifier.running.pipeline import classify_capture
from vpnid.features.families import TUNNEL_FAMILIES

EVAL_HELP = f"""\
Classify every capture named in a labelled-flows CSV and score vpnid's labels against it.

The CSV needs columns pcap, transport, a_ip, a_port, b_ip, b_port, family ({", ".join(TUNNEL_FAMILIES)},
other_vpn, none, unknown) and may have confidence. Pcap paths are relative
to the CSV's folder; endpoints are in no particular order. A row whose transport and a_ip are '*' labels every flow of its
capture that no other row names. Rows whose confidence does not start with --trust are not scored;
neither are rows of family 'unknown'.

A row is correct when every flow record matching it carries its family; a tunnel label on a 'none' row
is a false positive.

examples:
  vpnid eval ../shared/corpus/external/truth.csv
  vpnid eval --json pcaps/corpus/manifest.csv > score.json
"""


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
        print_report(report, console(soft_wrap=True))
    return 1 if args.strict and not report.perfect else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=COMMANDS["eval"].help, description=EVAL_HELP,
                       formatter_class=FORMATTER)
    p.add_argument("labels", metavar="LABELS.csv")
    p.add_argument("--json", action="store_true", help="print the score as JSON")
    p.add_argument("--trust", default="DPI", metavar="PREFIX",
                   help="score only rows whose confidence starts with PREFIX ('' scores all; default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every scored row is correct")
    p.add_argument("--drop-first", type=int, default=0, metavar="N",
                   help="withhold each flow's first N packets from dissectors, features and counters, as if "
                        "the capture had started late; a flow of N packets or fewer is then not in the capture "
                        "at all: a '*' row does not score it (its rows shrink), a row naming it counts it as "
                        "missing, a miss (default: %(default)s)")
    add_flow_options(p)
    p.set_defaults(func=cmd_eval)
