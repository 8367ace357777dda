"""`vpnid explain CAPTURE --flow ID`: the packets that decided a flow's label, as vpnid and Wireshark see them.

The flow is found by classifying the capture again (flow ids are deterministic for the same bytes and
flow options) and its frames by `flowpackets`. Wireshark's dissection comes from tshark through pyshark,
so an analyst can check vpnid's evidence against an independent dissector; a flow vpnid labelled as
OpenVPN or WireGuard on a port Wireshark does not associate with it is decoded as that protocol (and
the output says so), since a tunnel on an unusual port is exactly what a trial looks for.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich_argparse import RawDescriptionRichHelpFormatter

import classifier.cli as vpnid_cli  # shared options and messages; a module import, so either loads first
from classifier.flowpackets import Frame, flow_frames, write_pcaps
from classifier.pipeline import classify_capture
from classifier.records import FlowRecord
from classifier.registry.store import ENV, StoreError
from features.packets import CaptureError

HEAD = 3  # packets shown from the start of a flow
CONTEXT = 2  # packets shown on each side of the deciding packet
WIRESHARK_NAMES = {"openvpn": "openvpn", "wireguard": "wg"}  # vpnid label -> Wireshark dissector
# Layers that only carry the tunnel: their fields are not printed (the packet line already says it all).
CARRIER_LAYERS = {"frame", "eth", "sll", "null", "loop", "raw", "ip", "ipv6", "udp", "tcp", "vlan", "gre",
                  "gtp", "vxlan", "_ws.malformed"}

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


def tshark_path() -> str | None:
    """tshark's path, or None when Wireshark's command-line tools are not installed."""
    return shutil.which("tshark")


def shown_packets(total: int, verdict_packet: int | None) -> list[int]:
    """Flow packet numbers to show: the first few and those around the deciding packet."""
    if verdict_packet is None:
        return list(range(1, min(total, HEAD + CONTEXT) + 1))
    last = min(total, verdict_packet + CONTEXT)
    if verdict_packet - CONTEXT <= HEAD + 1:
        return list(range(1, last + 1))
    return [*range(1, HEAD + 1), *range(verdict_packet - CONTEXT, last + 1)]


def decode_as(record: FlowRecord) -> dict[str, str]:
    """pyshark decode-as rules making Wireshark dissect the flow as the tunnel vpnid found."""
    name = WIRESHARK_NAMES.get(record.label)
    if name is None or record.transport not in ("udp", "tcp"):
        return {}
    return {f"{record.transport}.port=={record.dst_port}": name}


def dissect(frames: Sequence[Frame], rules: dict[str, str], tshark: str) -> dict[int, list[str]]:
    """Wireshark's view of each frame (by capture frame number): protocol stack, then the fields of the
    layers above the carriers."""
    import pyshark  # only needed when tshark is there

    by_link: dict[int, list[Frame]] = {}
    for f in sorted(frames, key=lambda f: f.ts_ns):  # the order write_pcaps writes them in
        by_link.setdefault(f.linktype, []).append(f)
    out: dict[int, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="vpnid-explain-") as tmp:
        for i, group in enumerate(by_link.values()):
            [path] = write_pcaps(group, Path(tmp) / f"flow-{i}.pcap")
            capture = pyshark.FileCapture(str(path), decode_as=rules or None, tshark_path=tshark)
            try:
                for frame, pkt in zip(group, capture):
                    lines = [f"Wireshark: {pkt.frame_info.protocols}"]
                    for layer in pkt.layers:
                        if layer.layer_name not in CARRIER_LAYERS:
                            lines += [ln.strip(":\t ") for ln in str(layer).splitlines()[1:] if ln.strip(":\t ")]
                    out[frame.frame] = lines
            finally:
                capture.close()
    return out


def explain(record: FlowRecord, frames: Sequence[Frame], console: Console, tshark: str | None) -> None:
    r = record
    console.print(f"[bold]flow {r.flow_id}[/] in {r.pcap}")
    console.print(f"  {r.transport} {r.src_ip}:{r.src_port} → {r.dst_ip}:{r.dst_port}, first seen "
                  f"{datetime.fromtimestamp(r.first_seen, UTC):%Y-%m-%d %H:%M:%S.%f} UTC, "
                  f"{r.src2dst_packets}/{r.dst2src_packets} packets, ended: {r.end_reason}")
    decided = f"decided at packet {r.verdict_packet}" if r.verdict_packet else "no signature decided it"
    console.print(f"[bold]vpnid:[/] {r.label} (confidence {r.confidence:.2f}), {decided}")
    for e in r.evidence:
        console.print(f"  - {e}")
    if r.registry is not None:
        console.print(f"[bold]registry:[/] {r.registry} {r.registration_id or ''}")
    chosen = [frames[n - 1] for n in shown_packets(len(frames), r.verdict_packet)]
    rules = decode_as(r)
    if tshark is None:
        console.print("[yellow]note:[/] tshark is not installed, so Wireshark's dissection is not shown "
                      "(Debian/Ubuntu: apt install tshark).")
        dissection: dict[int, list[str]] = {}
    else:
        dissection = dissect(chosen, rules, tshark)
        for rule, name in rules.items():
            console.print(f"note: Wireshark decodes {rule} as {name}, as vpnid labelled the flow")
    console.print("[bold]packets[/] (flow packet #, capture frame, time, direction, bytes on the wire):")
    previous = 0
    for f in chosen:
        if f.number > previous + 1:
            console.print("  …")
        previous = f.number
        mark = "  [bold]◀ decided the label[/]" if f.number == r.verdict_packet else ""
        arrow = "→ initiator to responder" if f.direction == 0 else "← responder to initiator"
        console.print(f"  #{f.number}  frame {f.frame}  {datetime.fromtimestamp(f.ts_ns / 1e9, UTC):%H:%M:%S.%f}  "
                      f"{arrow}  {f.wirelen} B{mark}")
        for line in dissection.get(f.frame, []):
            console.print(f"      {line}", markup=False, highlight=False)
    console.print(f"In Wireshark: open {r.pcap} with the display filter "
                  f"[bold]frame.number in {{{' '.join(str(f.frame) for f in chosen)}}}[/]")


def cmd_explain(args: argparse.Namespace) -> int:
    opts = vpnid_cli.options(args)
    try:
        if args.db or os.environ.get(ENV):
            opts.matcher = vpnid_cli.registry_matcher(args.db)
        record = next((r for r in classify_capture(args.capture, opts, warn=vpnid_cli.warn)
                       if r.flow_id == args.flow), None)
        if record is None:
            vpnid_cli.error(f"{args.capture}: no flow {args.flow} (flow ids depend on the capture and the flow "
                            "options; use the same --idle-timeout/--active-timeout as the run that gave the id)")
            return 1
        frames = flow_frames(args.capture, {record.flow_id: record.as_dict()}, opts)[record.flow_id]
    except (CaptureError, StoreError) as e:
        vpnid_cli.error(str(e))
        return 2
    explain(record, frames, Console(highlight=False, soft_wrap=True), tshark_path())  # lines stay greppable
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="show the packets and evidence behind one flow's label",
                       description=EXPLAIN_HELP, formatter_class=RawDescriptionRichHelpFormatter)
    p.add_argument("capture", metavar="CAPTURE", help="the capture the flow came from")
    p.add_argument("--flow", required=True, metavar="FLOW_ID", help="the flow's flow_id")
    p.add_argument("--db", metavar="DB", help=f"also cross-check the flow against this registry (default: ${ENV})")
    vpnid_cli.add_flow_options(p)
    p.set_defaults(func=cmd_explain)
