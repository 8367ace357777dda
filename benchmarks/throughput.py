"""Throughput benchmark: vpnid end to end against nfstream and a dpkt flow-dict loop, on the same input.

The input is built from the project's own captures: they are merged into one time-ordered base, then
the base is replicated back to back with timestamps shifted by its span and every outer IPv4 address
moved by replica (k added to its first 16-bit word, with the IP and TCP/UDP checksums adjusted to
match), so every replica's flows are new flows and roughly the same number of flows is open at any
moment whatever the input size. Each tool runs in its own fresh Python process: its time is that
process's wall time from start to exit (interpreter start and imports included, for every tool); its
peak RSS is the largest sum of the resident memory of it and its descendants (nfstream meters packets in
child processes), sampled with psutil every 20 ms.

    python benchmarks/throughput.py                  # 2 M and 4 M packets
    python benchmarks/throughput.py --sizes 1e6 --skip nfstream
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpnid.features.capture import read_chunks  # noqa: E402
from vpnid.features.packets import LINKTYPE_ETHERNET  # noqa: E402

INPUTS = ROOT / "benchmarks" / "inputs"
SOURCES = ("pcaps/corpus/*.pcap", "pcaps/generated/*.pcap")  # lab output, committed corpus first
ETHERTYPE_IPV4 = 0x0800
REPLICA_GAP_S = 1  # seconds between the end of one replica and the start of the next
PEERS = ("vpnid", "nfstream", "dpkt")
SAMPLE_S = 0.02


# ---------------------------------------------------------------------------------------------- input
def _base(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The source captures' Ethernet frames merged in time order (each capture starting at t=0):
    (records buffer with pcap record headers, record offsets, ts_ns relative, span ns)."""
    frames: list[bytes] = []
    stamps: list[int] = []
    for p in paths:
        t0 = None
        for c in read_chunks(p):
            for i in range(len(c)):
                if c.linktype[i] != LINKTYPE_ETHERNET:
                    continue
                t0 = int(c.ts_ns[i]) if t0 is None else t0
                o = int(c.offset[i])
                frames.append(c.data[o : o + int(c.caplen[i])].tobytes())
                stamps.append(int(c.ts_ns[i]) - t0)
    order = np.argsort(np.asarray(stamps), kind="stable")
    ts = np.asarray(stamps, np.int64)[order]
    parts, offsets, pos = [], [], 0
    for i in order.tolist():
        f = frames[i]
        parts.append(struct.pack("<IIII", 0, 0, len(f), len(f)) + f)
        offsets.append(pos)
        pos += 16 + len(f)
    return np.frombuffer(b"".join(parts), np.uint8).copy(), np.asarray(offsets, np.int64), ts, ts[-1]


def build_input(packets: int, sources: list[str]) -> Path:
    """A microsecond pcap of at least `packets` frames (cached by size in benchmarks/inputs/)."""
    out = INPUTS / f"replicated-{packets}.pcap"
    if out.exists():
        return out
    INPUTS.mkdir(parents=True, exist_ok=True)
    buf, offs, ts, span = _base(sources)
    step_ns = int(span) + REPLICA_GAP_S * 1_000_000_000
    # Outer IPv4 over Ethernet without VLAN tags; other frames are copied unchanged.
    eth = offs + 16
    ip = eth[(buf[eth + 12].astype(np.int64) << 8 | buf[eth + 13]) == ETHERTYPE_IPV4] + 14
    proto = buf[ip + 9]
    first_fragment = ((buf[ip + 6].astype(np.int64) << 8 | buf[ip + 7]) & 0x1FFF) == 0
    l4 = ip + (buf[ip] & 0x0F).astype(np.int64) * 4
    l4_sum = np.r_[l4[(proto == 6) & first_fragment] + 16, l4[(proto == 17) & first_fragment] + 6]
    l4_sum = l4_sum[(buf[l4_sum] | buf[l4_sum + 1]) != 0]  # a zero UDP checksum means none
    addr_words = np.r_[ip + 12, ip + 16]
    sums = np.r_[ip + 10, l4_sum]
    replicas = -(-packets // len(offs))
    start_s = 1_700_000_000
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        for k in range(replicas):
            rep = buf.copy()
            t = ts + k * step_ns
            sec = start_s + t // 1_000_000_000
            usec = (t % 1_000_000_000) // 1000
            rep[offs[:, None] + np.arange(4)] = sec.astype("<u4").view(np.uint8).reshape(-1, 4)
            rep[offs[:, None] + np.arange(4, 8)] = usec.astype("<u4").view(np.uint8).reshape(-1, 4)
            _shift_word(rep, addr_words, k)
            _shift_word(rep, sums, -2 * k)  # each checksum covers both addresses
            f.write(rep.tobytes())
    tmp.rename(out)
    return out


def _shift_word(buf: np.ndarray, at: np.ndarray, k: int) -> None:
    """Add k to the big-endian 16-bit words at `at` in ones' complement arithmetic, the arithmetic of
    the Internet checksum (a checksum field is the complement of a sum, so it moves the other way)."""
    w = buf[at].astype(np.int64) << 8 | buf[at + 1]
    w = (w + (k % 0xFFFF)) % 0xFFFF
    buf[at] = w >> 8
    buf[at + 1] = w & 0xFF


# ---------------------------------------------------------------------------------------------- runners
def run_vpnid(pcap: str) -> None:
    from vpnid.classifier.cli.main import main

    if rc := main(["classify", "--format", "jsonl", "-o", str(INPUTS / "vpnid-out.jsonl"), pcap]):
        raise SystemExit(rc)


def run_nfstream(pcap: str) -> None:
    from nfstream import NFStreamer

    for _flow in NFStreamer(source=pcap, n_meters=1):
        pass


def run_dpkt(pcap: str) -> None:
    import dpkt

    flows: dict[tuple, list[int]] = {}
    with open(pcap, "rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            a, b = (ip.src, getattr(l4, "sport", 0)), (ip.dst, getattr(l4, "dport", 0))
            key = (ip.p, a, b) if a <= b else (ip.p, b, a)
            st = flows.get(key)
            if st is None:
                flows[key] = [1, len(frame)]
            else:
                st[0] += 1
                st[1] += len(frame)


RUNNERS = {"vpnid": run_vpnid, "nfstream": run_nfstream, "dpkt": run_dpkt}


def measure(tool: str, pcap: Path) -> dict:
    """Wall time and peak resident memory (process tree) of one tool run in a fresh process."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", tool, str(pcap)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    tree, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        rss = 0
        with contextlib.suppress(psutil.Error):
            for p in [tree, *tree.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
        peak = max(peak, rss)
        time.sleep(SAMPLE_S)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{tool} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "rss_mb": peak / 2**20}


def frames_in(pcap: Path) -> int:
    return sum(len(c) for c in read_chunks(pcap, chunk_frames=1 << 20))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, {platform.platform()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[2e6, 4e6], help="input sizes in packets")
    ap.add_argument("--skip", nargs="*", default=[], choices=PEERS, help="tools not to run")
    ap.add_argument("--child", nargs=2, metavar=("TOOL", "PCAP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tool, pcap = args.child
        RUNNERS[tool](pcap)
        return 0
    sources = next((sorted(glob.glob(str(ROOT / s))) for s in SOURCES if glob.glob(str(ROOT / s))), [])
    if not sources:
        raise SystemExit(f"no source captures ({' or '.join(SOURCES)}); run the lab first")
    print(f"machine: {machine()}")
    print(f"sources: {len(sources)} captures")
    for size in args.sizes:
        pcap = build_input(int(size), sources)
        n = frames_in(pcap)
        print(f"\ninput {pcap.name}: {n:,} packets, {pcap.stat().st_size / 1e6:,.0f} MB")
        results = {tool: measure(tool, pcap) for tool in PEERS if tool not in args.skip}
        for tool, r in results.items():
            r["pps"] = n / r["seconds"]
            print(f"  {tool:9s} {r['seconds']:7.2f} s  {r['pps']:>12,.0f} packets/s  peak RSS {r['rss_mb']:6.0f} MB")
        if "vpnid" in results:
            for peer in results.keys() - {"vpnid"}:
                print(f"  vpnid / {peer}: {results['vpnid']['pps'] / results[peer]['pps']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
