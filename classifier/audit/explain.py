"""The packets that decided a flow's label, as vpnid and Wireshark see them.

The flow is found by classifying the capture again (flow ids are deterministic for the same bytes and
flow options) and its frames by `flowpackets`. Wireshark's dissection comes from tshark through pyshark,
so an analyst can check vpnid's evidence against an independent dissector; a flow vpnid labelled as
OpenVPN or WireGuard on a port Wireshark does not associate with it is decoded as that protocol (and
the output says so), since a tunnel on an unusual port is exactly what a trial looks for.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from vpnid.classifier.audit.text import printable, shown
from vpnid.classifier.running.flowpackets import Frame, write_pcaps
from vpnid.classifier.running.records import FlowRecord
from vpnid.features.families import OPENVPN, WIREGUARD

HEAD = 3  # packets shown from the start of a flow
CONTEXT = 2  # packets shown on each side of the deciding packet
WIRESHARK_NAMES = {OPENVPN: "openvpn", WIREGUARD: "wg"}  # vpnid label -> Wireshark dissector
# Layers that only carry the tunnel: their fields are not printed (the packet line already says it all).
CARRIER_LAYERS = {"frame", "eth", "sll", "null", "loop", "raw", "ip", "ipv6", "udp", "tcp", "vlan", "gre",
                  "gtp", "vxlan", "_ws.malformed"}

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
    """Print the flow to `console` (made with emoji=False); capture names, evidence and Wireshark's fields
    come from outside, so they are printed through `shown`/`printable`."""
    r = record
    console.print(f"[bold]flow {r.flow_id}[/] in {shown(r.pcap)}")
    console.print(f"  {r.transport} {r.src_ip}:{r.src_port} → {r.dst_ip}:{r.dst_port}, first seen "
                  f"{datetime.fromtimestamp(r.first_seen, UTC):%Y-%m-%d %H:%M:%S.%f} UTC, "
                  f"{r.src2dst_packets}/{r.dst2src_packets} packets, ended: {r.end_reason}")
    decided = f"decided at packet {r.verdict_packet}" if r.verdict_packet else "no signature decided it"
    console.print(f"[bold]vpnid:[/] {r.label} (confidence {r.confidence:.2f}), {decided}")
    for e in r.evidence:
        console.print(f"  - {shown(e)}")
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
            console.print(f"      {printable(line)}", markup=False, highlight=False)
    console.print(f"In Wireshark: open {shown(r.pcap)} with the display filter "
                  f"[bold]frame.number in {{{' '.join(str(f.frame) for f in chosen)}}}[/]")
