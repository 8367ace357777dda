"""``vpnid lab``: regenerate labelled captures from real VPN software in network namespaces."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from vpnid.classifier.cli.common import COMMANDS
from vpnid.pcaps import CORPUS
from vpnid.pcaps.lab import catalog, system
from vpnid.pcaps.lab.netns import Lab, LabError
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

DEFAULT_OUT = Path("pcaps/generated")  # relative to where the lab runs (a checkout: ignored by git)

DESCRIPTION = """\
Run real VPN daemons (OpenVPN 2.6, also inside stunnel, obfs4proxy and Shadowsocks,
wireguard-go, strongSwan, ocserv/openconnect, shadowsocks-libev, and the control
exchange of pptpd/pptp-linux and xl2tpd) and non-VPN services between two network namespaces on
198.18.0.0/15 (no route out, IPv6 off), drive paced traffic through each tunnel
(typing, bulk download, web bursts, 50 pps voice, idle gaps) and capture the
underlay with tcpdump: one labelled pcap per variant plus manifest.csv.

Needs root (namespaces, tcpdump, TUN devices). A full run at --scale 1 takes
17-25 minutes; one variant 7-200 s. Only processes the lab started are ended,
and its namespaces are removed even on error or Ctrl-C.
"""

EXAMPLES = """\
examples:
  vpnid lab --list                          # variants, families, ports, rough duration
  vpnid lab --install                       # apt-get the daemons (and pip aioquic), then run all
  vpnid lab --only wireguard,openvpn-udp    # a family, a name prefix or exact names
  vpnid lab --scale 4 --out /data/lab       # four times the traffic per capture, for training
  vpnid lab --seed 2 --out /data/lab-2      # another recording of every variant (training folds: by recording)
  vpnid lab --commit-corpus                 # regenerate and rewrite the trimmed pcaps/corpus/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lab", help=COMMANDS["lab"].help,
                              description=DESCRIPTION, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where captures and manifest.csv go "
                   "(default: %(default)s)")
    p.add_argument("--only", metavar="VARIANT[,...]", help="variant names, name prefixes or family names")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--install", action="store_true", help="install missing packages with apt (and pip) first")
    p.add_argument("--scale", type=int, default=1, metavar="N", help="the variant's traffic plan, then N-1 varied repetitions (order, sizes, one more kind, "
                   "lower MTU)")
    p.add_argument("--seed", type=int, default=0, metavar="K",
                   help="which recording: 0 (default) drives the committed corpus's plans; K > 0 varies every plan "
                   "(MTU, mix, sizes, length) and each random choice, so runs with different K are different "
                   "recordings of the same configurations")
    p.add_argument("--commit-corpus", action="store_true",
                   help=f"also write trimmed copies and their manifest rows to {CORPUS}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        print(f"--seed must be 0 or more, not {args.seed}", file=sys.stderr)
        return 2
    variants = [dataclasses.replace(v, recording=args.seed) for v in catalog.select(args.only)]
    if args.list:
        for v in variants:
            print(f"{v.name:36} {v.family:12} {v.transport:8} {v.server_port:>5}  ~{v.seconds:>3} s  {v.config}")
        print(f"{len(variants)} variants, about {sum(v.seconds for v in variants) / 60:.0f} min at --scale 1")
        return 0
    if os.geteuid() != 0:
        print("vpnid lab needs root: it creates network namespaces and runs tcpdump and VPN daemons", file=sys.stderr)
        return 2
    debs, mods = system.missing(variants)
    if (debs or mods) and args.install:
        system.install(debs, mods)
        debs, mods = system.missing(variants)
    if debs or mods:
        print("missing Debian packages: " + (" ".join(debs) or "none") + "; missing Python modules: "
              + (" ".join(mods) or "none") + "\n(run again with --install)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so teardown in finally blocks runs
    try:
        return _generate(variants, args.out, args.scale, args.commit_corpus)
    except KeyboardInterrupt:
        return 130


def _generate(variants: list[Variant], out: Path, scale: int, commit: bool) -> int:
    from vpnid.pcaps.lab import manifest  # dpkt (the lab extra): not needed to build the parser

    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vpnid-lab-"))
    pki = Pki.create(workdir / "pki")
    done: list[tuple[Variant, Path]] = []
    failed: list[str] = []
    started = time.monotonic()
    for v in variants:
        pcap, t0 = out / f"{v.name}.pcap", time.monotonic()
        try:
            capture(v, pki, workdir, pcap, scale)
        except BaseException as e:
            pcap.unlink(missing_ok=True)  # a partial capture must not pass for a labelled one
            if not isinstance(e, LabError):
                print(f"interrupted during {v.name}: lab torn down; logs in {workdir}", file=sys.stderr)
                raise
            failed.append(v.name)
            print(f"FAILED {v.name}: {e}", file=sys.stderr)
            continue
        done.append((v, pcap))
        print(f"{v.name}: {pcap.stat().st_size / 1024:.0f} KiB in {time.monotonic() - t0:.0f} s", flush=True)
    order = [v.name for v in catalog.VARIANTS]
    manifest.update(out / "manifest.csv", [manifest.row(v, p) for v, p in done], order)
    if commit and done:
        print(f"corpus manifest: {manifest.commit(done, order)}")
    print(f"{len(done)} captures in {out} after {time.monotonic() - started:.0f} s")
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}; logs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir)
    return 0


def capture(v: Variant, pki: Pki, workdir: Path, pcap: Path, scale: int) -> None:
    """One variant in fresh namespaces: set up, capture while driving, tear down."""
    with Lab(workdir) as lab, lab.capture(pcap):
        v.drive(lab, pki, v, scale)
