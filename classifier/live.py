"""`vpnid live IFACE`: classify traffic on an interface as it passes.

tcpdump captures (it is everywhere, drops privileges properly and knows every interface type) and
writes a pcap stream to a pipe; the pipeline reads that stream like `vpnid classify -`, but eagerly:
each read is processed at once instead of waiting for a full chunk. Every flow is printed as a JSON
line when a signature labels it (event "labelled", before the flow ends) and again when it ends
(event "ended", with its final counts). Ctrl-C (or SIGTERM) stops the capture; the flows still open
are then ended and printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
from typing import IO

from rich_argparse import RawDescriptionRichHelpFormatter

from classifier.pipeline import Options, classify_capture
from classifier.records import FlowRecord, output_fields
from features.packets import CaptureError

LIVE_HELP = """\
Capture on an interface (with tcpdump, so it needs the usual capture privilege) and print each flow as
a JSON line when a signature labels it ("event": "labelled") and again when it ends ("event": "ended").
A BPF filter narrows what is captured. Ctrl-C ends the capture and the flows still open.

examples:
  sudo vpnid live eth0
  sudo vpnid live eth0 'udp or tcp port 443' --count 100000
"""


def tcpdump_command(iface: str, bpf: list[str], count: int | None) -> list[str]:
    """Unbuffered (-U) pcap to stdout, whole packets, no name resolution."""
    exe = shutil.which("tcpdump") or "tcpdump"
    return [exe, "-i", iface, "-w", "-", "-U", "-n", "-s", "0", *(["-c", str(count)] if count else []), *bpf]


def emit(out: IO[str], event: str, record: FlowRecord, fields: tuple[str, ...], source: str) -> None:
    d = record.as_dict() | {"pcap": source}
    out.write(json.dumps({"event": event, **{k: d[k] for k in fields}}, ensure_ascii=False) + "\n")
    out.flush()


def cmd_live(args: argparse.Namespace) -> int:
    from classifier.cli import error, options

    opts: Options = options(args)
    opts.eager = True
    fields = output_fields(False)
    proc = subprocess.Popen(tcpdump_command(args.iface, args.filter, args.count), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None

    def stop(_sig: int, _frame: object) -> None:
        proc.terminate()  # tcpdump flushes and exits; the stream then ends and open flows are ended

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    out, source = sys.stdout, f"live:{args.iface}"
    try:
        for record in classify_capture(f"/dev/fd/{proc.stdout.fileno()}", opts,
                                       early=lambda r: emit(out, "labelled", r, fields, source)):
            emit(out, "ended", record, fields, source)
    except CaptureError as e:
        proc.wait()
        error(f"tcpdump: {proc.stderr.read().decode(errors='replace').strip() or e}")
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        proc.stdout.close()
    proc.wait()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli import add_flow_options

    p = sub.add_parser("live", help="classify traffic on a network interface as it passes",
                       description=LIVE_HELP, formatter_class=RawDescriptionRichHelpFormatter)
    p.add_argument("iface", metavar="IFACE", help="interface to capture on")
    p.add_argument("filter", nargs="*", metavar="BPF", help="capture filter (tcpdump syntax)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N packets")
    add_flow_options(p)
    p.set_defaults(func=cmd_live)
