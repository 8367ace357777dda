"""`vpnid live IFACE`: classify traffic on an interface as it passes.

tcpdump captures (it is everywhere, drops privileges properly and knows every interface type) and
writes a pcap stream to a pipe; the pipeline reads that stream like `vpnid classify -`, but eagerly:
each read is processed at once instead of waiting for a full chunk. Every flow is printed as a JSON
line when a signature labels it (event "labelled", before the flow ends) and again when it ends
(event "ended", with its final counts). Ctrl-C (or SIGTERM) stops the capture; the flows still open
are then ended and printed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from typing import IO

from vpnid.classifier.running.output import json_line
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.classifier.running.records import FlowRecord, output_fields
from vpnid.features.packets import CaptureError


def tcpdump_command(iface: str, bpf: list[str], count: int | None) -> list[str]:
    """Unbuffered (-U) pcap to stdout, whole packets, no name resolution. The filter is one expression
    after `--`, and no word of it (nor the interface) may start with '-': tcpdump must not take one
    for an option (`-w FILE` would write files, `-z CMD` run a command)."""
    if bad := [w for w in (iface, *bpf) if w.startswith("-")]:
        raise LiveError(f"{bad[0]!r} starts with '-': an interface or filter word never does (tcpdump would "
                        "take it for an option)")
    exe = shutil.which("tcpdump") or "tcpdump"
    return [exe, "-i", iface, "-w", "-", "-U", "-n", "-s", "0", *(["-c", str(count)] if count else []),
            *(["--", " ".join(bpf)] if bpf else [])]


def emit(out: IO[str], event: str, record: FlowRecord, fields: tuple[str, ...], source: str) -> None:
    d = record.as_dict() | {"pcap": source}
    out.write(json_line({"event": event, **{k: d[k] for k in fields}}))
    out.flush()


class LiveError(Exception):
    """The capture could not run (tcpdump's own message)."""


def run_live(iface: str, bpf: list[str], count: int | None, opts: Options, out: IO[str]) -> None:
    """Capture on `iface` until tcpdump stops (count reached, SIGINT/SIGTERM), printing each flow as it is
    labelled and when it ends; the flows still open at the end are ended and printed."""
    opts.eager = True
    fields = output_fields(False)
    proc = subprocess.Popen(tcpdump_command(iface, bpf, count), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None

    def stop(_sig: int, _frame: object) -> None:
        proc.terminate()  # tcpdump flushes and exits; the stream then ends and open flows are ended

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    source = f"live:{iface}"
    try:
        for record in classify_capture(f"/dev/fd/{proc.stdout.fileno()}", opts,
                                       early=lambda r: emit(out, "labelled", r, fields, source)):
            emit(out, "ended", record, fields, source)
    except CaptureError as e:
        proc.wait()
        raise LiveError(f"tcpdump: {proc.stderr.read().decode(errors='replace').strip() or e}") from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        proc.stdout.close()
    proc.wait()
