"""`vpnid explain CAPTURE --flow ID`: the packets and evidence behind one flow's label."""

from __future__ import annotations

import argparse
import os

from vpnid.classifier.audit.explain import explain, tshark_path
from vpnid.classifier.audit.registry.store import ENV, StoreError
from vpnid.classifier.cli.common import (
    COMMANDS,
    FORMATTER,
    add_flow_options,
    console,
    error,
    options,
    registry_matcher,
    warn,
)
from vpnid.classifier.running.flowpackets import flow_frames
from vpnid.classifier.running.pipeline import classify_capture
from vpnid.features.packets import CaptureError

EXPLAIN_HELP = f"""\
Show why vpnid labelled one flow as it did: its record and evidence, then the packets up to the one that
decided the label (with a few around it), each with Wireshark's own dissection (tshark, through pyshark;
without tshark the packets are listed without it), and a display filter to find them in Wireshark.

FLOW is a flow_id from `vpnid classify` output or a trial report. Ids depend on the capture's bytes and
the flow options, so pass the same --idle-timeout/--active-timeout as the run that produced the id.
With --db (or ${ENV}) the flow is also cross-checked against the registry.

examples:
  vpnid explain pcaps/corpus/openvpn-udp-plain-1194.pcap --flow Ftnv6z4r2ygig2ydq
  vpnid explain capture.pcapng --flow F4x2... --db registry.db
"""


def cmd_explain(args: argparse.Namespace) -> int:
    opts = options(args)
    try:
        if args.db or os.environ.get(ENV):
            opts.matcher = registry_matcher(args.db)
        record = next((r for r in classify_capture(args.capture, opts, warn=warn)
                       if r.flow_id == args.flow), None)
        if record is None:
            error(f"{args.capture}: no flow {args.flow} (flow ids depend on the capture and the flow "
                            "options; use the same --idle-timeout/--active-timeout as the run that gave the id)")
            return 1
        frames = flow_frames(args.capture, {record.flow_id: record.as_dict()}, opts)[record.flow_id]
    except (CaptureError, StoreError) as e:
        error(str(e))
        return 2
    explain(record, frames, console(soft_wrap=True), tshark_path())  # lines stay greppable
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help=COMMANDS["explain"].help,
                       description=EXPLAIN_HELP, formatter_class=FORMATTER)
    p.add_argument("capture", metavar="CAPTURE", help="the capture the flow came from")
    p.add_argument("--flow", required=True, metavar="FLOW_ID", help="the flow's flow_id")
    p.add_argument("--db", metavar="DB", help=f"also cross-check the flow against this registry (default: ${ENV})")
    add_flow_options(p)
    p.set_defaults(func=cmd_explain)
