"""Throughput benchmark: vpnid end to end against nfstream and ndpiReader on the same inputs.

Inputs (built once, cached in benchmarks/inputs/, git-ignored):

  lab     the project's own captures (pcaps/corpus/*.pcap, ~270 packets a flow)
  short   the Ethernet captures (link type 1, pcap and pcapng) of the shared external corpus
          (nDPI's test captures, ~18 packets a flow: DNS, HTTPS, QUIC, NTP, P2P, ...)
  ppfP    packets-per-flow inputs: the flows of lab and short together that have at least P packets,
          each cut to its first P packets (so exactly P packets a flow), for P in --ppf

Each input's captures are merged into one time-ordered base (each capture starting at t=0), then the
base (gaps longer than an hour inside a capture cut to an hour) is replicated back to back with
timestamps shifted by its span plus 1 s and every outer IPv4/IPv6
address moved by replica (k added to its first 16-bit word; the IPv4 header and TCP/UDP checksums are
adjusted in ones' complement arithmetic, so they stay valid and no tool drops a packet for a bad
checksum), until it holds the requested number of packets. Every replica's flows are new flows, and
about the same number of flows is open at any moment whatever the input size.

Tools (each a fresh process, timed from start to exit, output written; Python may keep compiled
bytecode, as an installed package does, whatever PYTHONDONTWRITEBYTECODE says):

  vpnid           vpnid classify --format jsonl -o FILE (signatures + model + JSONL written)
  vpnid-nomodel   the same with --no-model
  nfstream        NFStreamer(source=FILE, n_meters=1), every flow iterated (python -c)
  ndpiReader      ndpiReader -i FILE -q (Debian libndpi-bin; skipped with a note where absent)
  dpkt            a dpkt flow-dict loop (not run unless named in --tools)

Rounds are interleaved (round 1 of every tool, then round 2, ...); the time reported is the median.
Peak RSS is the larger of (a) the sum of the resident memory of the process and its descendants,
sampled with psutil every 20 ms (nfstream meters in a child process), and (b) the tool's maximum
resident set size as /usr/bin/time -v reports it (exact, but per process, not summed). Inputs are all
built before any tool runs.
flows/s uses the same flow count for every tool: the input's bidirectional 5-tuples (no timeouts).

    python benchmarks/throughput.py                       # lab, short at 2 M; ppf 2 11 50 200 at 300 k (~15 min)
    python benchmarks/throughput.py --quick               # 200 k / 100 k packets, 1 round
    python benchmarks/throughput.py --inputs short --packets 2e6 4e6 8e6   # flat from 2 M to 8 M?
    python benchmarks/throughput.py --tools vpnid nfstream --record        # append to RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vpnid.features.capture import read_chunks  # noqa: E402
from vpnid.features.packets import LINKTYPE_ETHERNET  # noqa: E402

INPUTS = ROOT / "benchmarks" / "inputs"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PLOT = ROOT / "benchmarks" / "throughput-vs-packets-per-flow.png"
LAB_SOURCES = ("pcaps/corpus/*.pcap", "pcaps/generated/*.pcap")  # committed corpus first
SHORT_DIRS = (ROOT.parent / "shared" / "corpus" / "external", Path("/work/shared/corpus/external"))
CAPTURE_GLOBS = ("*.pcap", "*.pcapng", "*.cap", "*.pcap.gz", "*.pcapng.gz")
MAX_GAP_S = 3600  # longest gap kept inside one source capture (see _squeeze)
REPLICA_GAP_S = 1  # seconds between the end of one replica and the start of the next
TOOLS = ("vpnid", "vpnid-nomodel", "nfstream", "ndpiReader", "dpkt")
DEFAULT_TOOLS = ("vpnid", "vpnid-nomodel", "nfstream", "ndpiReader")
SAMPLE_S = 0.02
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
FORMAT_VERSION = 3  # bump when the way inputs are built changes (cached inputs are rebuilt)


# ---------------------------------------------------------------------------------------------- sources
def lab_sources() -> list[str]:
    return next((sorted(glob.glob(str(ROOT / s))) for s in LAB_SOURCES if glob.glob(str(ROOT / s))), [])


def short_sources(where: str | None) -> list[str]:
    dirs = [Path(where)] if where else [d for d in SHORT_DIRS if d.is_dir()][:1]
    found: set[str] = set()
    for d in dirs:
        for g in CAPTURE_GLOBS:
            found.update(glob.glob(str(d / "**" / g), recursive=True))
    return sorted(found)


# ---------------------------------------------------------------------------------------------- base
class Base:
    """Ethernet frames of some captures merged in time order (each capture starting at t=0)."""

    def __init__(self, frames: list[bytes], ts: np.ndarray, label: str):
        order = np.argsort(ts, kind="stable")
        self.frames = [frames[i] for i in order.tolist()]
        self.ts = np.asarray(ts, np.int64)[order]
        self.label = label
        self._keys: list | None = None

    @classmethod
    def read(cls, paths: list[str], label: str) -> "Base":
        frames: list[bytes] = []
        stamps: list[int] = []
        for p in paths:
            try:
                chunks = list(read_chunks(p))
            except Exception as e:  # a capture vpnid's reader refuses is left out, with a note
                print(f"  note: {Path(p).name} left out ({type(e).__name__}: {e})", file=sys.stderr)
                continue
            mine, ts = [], []
            for c in chunks:
                for i in np.flatnonzero(c.linktype == LINKTYPE_ETHERNET).tolist():
                    o = int(c.offset[i])
                    mine.append(c.data[o : o + int(c.caplen[i])].tobytes())
                    ts.append(int(c.ts_ns[i]))
            if not mine:
                continue
            order = np.argsort(np.asarray(ts, np.int64), kind="stable")
            frames += [mine[i] for i in order.tolist()]
            stamps += _squeeze(np.asarray(ts, np.int64)[order]).tolist()
        if not frames:
            raise SystemExit(f"no Ethernet frames in the {label} sources")
        return cls(frames, np.asarray(stamps, np.int64), label)

    def keys(self) -> list:
        """A bidirectional 5-tuple per frame (None for frames that are not IPv4/IPv6)."""
        if self._keys is None:
            self._keys = [_flow_key(f) for f in self.frames]
        return self._keys

    def flows(self) -> int:
        return len({k for k in self.keys() if k is not None})

    def cut(self, per_flow: int) -> "Base":
        """The flows with at least `per_flow` packets, each cut to its first `per_flow` packets."""
        members: dict = {}
        for i, k in enumerate(self.keys()):
            if k is not None:
                members.setdefault(k, []).append(i)
        keep = sorted(i for m in members.values() if len(m) >= per_flow for i in m[:per_flow])
        if not keep:
            raise SystemExit(f"no flow has {per_flow} packets")
        return Base([self.frames[i] for i in keep], self.ts[keep], f"{self.label}, flows of >= {per_flow} "
                    f"packets cut to {per_flow}")

    def __add__(self, other: "Base") -> "Base":
        return Base(self.frames + other.frames, np.r_[self.ts, other.ts], f"{self.label} + {other.label}")


def _squeeze(ts: np.ndarray) -> np.ndarray:
    """Times of one capture from 0, with every gap longer than MAX_GAP_S cut to MAX_GAP_S. Many of
    nDPI's test captures join sessions recorded years apart (or stamped near 1970); unsqueezed, a base
    would span decades and its replicas would not fit pcap's 32-bit seconds. MAX_GAP_S is beyond every
    tool's idle timeout, so no flow is joined to another by the cut."""
    gaps = np.minimum(np.diff(ts, prepend=ts[:1]), MAX_GAP_S * 1_000_000_000)
    return np.cumsum(gaps)


def _flow_key(f: bytes):
    if len(f) < 14:
        return None
    et, o = struct.unpack_from("!H", f, 12)[0], 14
    while et in (ETH_VLAN, ETH_QINQ) and len(f) >= o + 4:
        et, o = struct.unpack_from("!H", f, o + 2)[0], o + 4
    if et == ETH_IPV4 and len(f) >= o + 20:
        proto, src, dst = f[o + 9], f[o + 12 : o + 16], f[o + 16 : o + 20]
        l4 = o + (f[o] & 0x0F) * 4
        frag = struct.unpack_from("!H", f, o + 6)[0] & 0x1FFF
    elif et == ETH_IPV6 and len(f) >= o + 40:
        proto, src, dst, l4, frag = f[o + 6], f[o + 8 : o + 24], f[o + 24 : o + 40], o + 40, 0
    else:
        return None
    sp = dp = 0
    if proto in (6, 17, 132) and not frag and len(f) >= l4 + 4:
        sp, dp = struct.unpack_from("!HH", f, l4)
    a, b = (src, sp), (dst, dp)
    return (proto, a, b) if a <= b else (proto, b, a)


# ---------------------------------------------------------------------------------------------- input
def build_input(name: str, base: Base, packets: int) -> tuple[Path, dict]:
    """A microsecond pcap of at least `packets` frames, whole replicas of `base` (cached)."""
    out = INPUTS / f"{name}-{packets}.pcap"
    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") == FORMAT_VERSION:
            return out, meta
    INPUTS.mkdir(parents=True, exist_ok=True)
    parts, offs, pos = [], [], 0
    for f in base.frames:
        parts.append(struct.pack("<IIII", 0, 0, len(f), len(f)) + f)
        offs.append(pos)
        pos += 16 + len(f)
    buf = np.frombuffer(b"".join(parts), np.uint8).copy()
    offs = np.asarray(offs, np.int64)
    ends = offs + 16 + np.asarray([len(f) for f in base.frames], np.int64)
    ts = base.ts
    step_ns = int(ts[-1]) + REPLICA_GAP_S * 1_000_000_000
    addr_words, sums = _address_and_checksum_words(buf, offs, ends)
    replicas = -(-packets // len(offs))
    start_s = 1_700_000_000
    if start_s + (replicas * step_ns) // 1_000_000_000 >= 2**32:
        raise SystemExit(f"{name}: {replicas} replicas of a {step_ns / 1e9:,.0f} s base overflow pcap time")
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
    flows = base.flows()
    meta = {"format": FORMAT_VERSION, "packets": replicas * len(offs), "flows": replicas * flows,
            "replicas": replicas, "base_packets": len(offs), "base_flows": flows,
            "base_ip_packets": sum(k is not None for k in base.keys()),
            "ip_packets": replicas * sum(k is not None for k in base.keys()),
            "base_span_s": round(int(ts[-1]) / 1e9, 3), "base": base.label, "bytes": out.stat().st_size}
    meta_path.write_text(json.dumps(meta, indent=1))
    return out, meta


def _address_and_checksum_words(buf: np.ndarray, offs: np.ndarray, ends: np.ndarray):
    """Offsets of the first 16-bit word of every outer IPv4/IPv6 source and destination address, and
    of the checksums that cover them (IPv4 header; TCP/UDP of unfragmented or first-fragment datagrams;
    a zero UDP checksum means none). Frames with one or two VLAN tags are included; words beyond a
    frame's captured bytes are left alone."""
    eth = offs + 16
    et = buf[eth + 12].astype(np.int64) << 8 | buf[eth + 13]
    l3 = eth + 14
    for _ in range(2):
        tagged = np.isin(et, (ETH_VLAN, ETH_QINQ)) & (l3 + 4 <= ends)
        et = np.where(tagged, buf[np.minimum(l3 + 2, len(buf) - 2)].astype(np.int64) << 8
                      | buf[np.minimum(l3 + 3, len(buf) - 1)], et)
        l3 = np.where(tagged, l3 + 4, l3)
    v4 = (et == ETH_IPV4) & (l3 + 20 <= ends)
    v6 = (et == ETH_IPV6) & (l3 + 40 <= ends)
    ip4, end4, ip6, end6 = l3[v4], ends[v4], l3[v6], ends[v6]
    proto4 = buf[ip4 + 9]
    first = ((buf[ip4 + 6].astype(np.int64) << 8 | buf[ip4 + 7]) & 0x1FFF) == 0
    l4_4 = ip4 + (buf[ip4] & 0x0F).astype(np.int64) * 4
    proto6, l4_6 = buf[ip6 + 6], ip6 + 40
    l4, proto, end = np.r_[l4_4[first], l4_6], np.r_[proto4[first], proto6], np.r_[end4[first], end6]
    at = np.r_[l4[proto == 6] + 16, l4[proto == 17] + 6]
    at = at[at + 2 <= np.r_[end[proto == 6], end[proto == 17]]]
    at = at[(buf[at] | buf[at + 1]) != 0]
    return np.r_[ip4 + 12, ip4 + 16, ip6 + 8, ip6 + 24], np.r_[ip4 + 10, at]


def _shift_word(buf: np.ndarray, at: np.ndarray, k: int) -> None:
    """Add k to the big-endian 16-bit words at `at` in ones' complement arithmetic, the arithmetic of
    the Internet checksum (a checksum field is the complement of a sum, so it moves the other way)."""
    w = buf[at].astype(np.int64) << 8 | buf[at + 1]
    w = (w + (k % 0xFFFF)) % 0xFFFF
    buf[at] = w >> 8
    buf[at + 1] = w & 0xFF


# ---------------------------------------------------------------------------------------------- tools
NFSTREAM_SNIPPET = """
import json, sys
from nfstream import NFStreamer
flows = packets = 0
for f in NFStreamer(source=sys.argv[1], n_meters=1):
    flows += 1
    packets += f.bidirectional_packets
print(json.dumps({"flows": flows, "packets": packets}))
"""


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
    print(json.dumps({"flows": len(flows), "packets": sum(v[0] for v in flows.values())}))


def vpnid_command() -> list[str]:
    exe = Path(sys.executable).with_name("vpnid")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from vpnid.classifier.cli.main import main; sys.exit(main())"]


def command(tool: str, pcap: Path, out: Path) -> list[str]:
    if tool in ("vpnid", "vpnid-nomodel"):
        extra = ["--no-model"] if tool == "vpnid-nomodel" else []
        return [*vpnid_command(), "classify", "--format", "jsonl", "-o", str(out), *extra, str(pcap)]
    if tool == "nfstream":
        return [sys.executable, "-c", NFSTREAM_SNIPPET, str(pcap)]
    if tool == "ndpiReader":
        return [shutil.which("ndpiReader") or "ndpiReader", "-i", str(pcap), "-q"]
    if tool == "dpkt":
        return [sys.executable, __file__, "--child", "dpkt", str(pcap)]
    raise ValueError(tool)


def available(tool: str) -> str | None:
    """None if the tool can run here, else why not."""
    if tool == "ndpiReader" and not shutil.which("ndpiReader"):
        return "ndpiReader not found (benchmarks/install-peers.sh installs Debian's libndpi-bin); skipped"
    if tool == "nfstream":
        try:
            import nfstream  # noqa: F401
        except ImportError:
            return "nfstream not importable (pip install nfstream); skipped"
    if tool == "dpkt":
        try:
            import dpkt  # noqa: F401
        except ImportError:
            return "dpkt not importable; skipped"
    return None


# The tools' environment: this one, except that Python may keep compiled bytecode, as an installed package
# does (pip compiles it). With PYTHONDONTWRITEBYTECODE set (some sandboxes set it), every run of vpnid and
# nfstream would compile their modules from source first (~0.1 s for vpnid).
TOOL_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(tool: str, pcap: Path) -> dict:
    """Wall time and peak resident memory of one run of `tool` on `pcap` in a fresh process."""
    import psutil

    out = INPUTS / f"out-{tool}.jsonl"
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        t0 = time.perf_counter()
        # /usr/bin/time -v reports the tool's own ru_maxrss; taken here, from wait4 on a child forked
        # from this (large) process, it would count this process's pages (Linux keeps maxrss over exec).
        stats = INPUTS / f"time-{tool}.txt"
        wrap = [GNU_TIME, "-v", "-o", str(stats)] if GNU_TIME else []
        proc = subprocess.Popen([*wrap, *command(tool, pcap, out)], stdout=so, stderr=se, cwd=INPUTS,
                                env=TOOL_ENV)
        root, peak = psutil.Process(proc.pid), 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = 0
            with contextlib.suppress(psutil.Error):
                tree = root.children(recursive=True) if wrap else [root, *root.children(recursive=True)]
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
            peak = max(peak, rss)
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - t0
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read().decode(errors="replace"), se.read().decode(errors="replace")
    if rc:
        raise RuntimeError(f"{tool} failed (exit {rc}):\n{stderr[-2000:]}")
    maxrss = 0
    if wrap and (m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", stats.read_text())):
        maxrss = int(m.group(1)) * 1024
    r = {"seconds": seconds, "rss_mb": max(peak, maxrss) / 2**20, "sampled_rss_mb": peak / 2**20,
         "cpu_s": usage.ru_utime + usage.ru_stime}
    if tool.startswith("vpnid"):
        with open(out, "rb") as f:
            r["seen_flows"] = sum(1 for _ in f)
    elif tool in ("nfstream", "dpkt"):
        with contextlib.suppress(ValueError, IndexError):
            seen = json.loads(stdout.strip().splitlines()[-1])
            r["seen_flows"], r["seen_packets"] = seen["flows"], seen["packets"]
    return r


def ndpi_counts(pcap: Path) -> dict:
    """ndpiReader's own packet and flow counts for `pcap` (a separate, untimed run without -q)."""
    p = subprocess.run(["ndpiReader", "-i", str(pcap)], capture_output=True, text=True, cwd=INPUTS)
    got = {}
    if m := re.search(r"IP packets:\s+(\d+)", p.stdout):
        got["seen_packets"] = int(m.group(1))
    if m := re.search(r"Unique flows:\s+(\d+)", p.stdout):
        got["seen_flows"] = int(m.group(1))
    return got


# ---------------------------------------------------------------------------------------------- report
def versions() -> dict:
    from importlib import metadata

    v = {}
    for dist in ("vpnid", "nfstream", "numpy", "numba"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            v[dist] = metadata.version(dist)
    if shutil.which("ndpiReader"):
        h = subprocess.run(["ndpiReader", "-h"], capture_output=True, text=True).stdout
        if m := re.search(r"nDPI ([\d.]+)", h):
            v["ndpiReader"] = m.group(1)
    v["python"] = platform.python_version()
    return v


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks")
    return head + (" + uncommitted changes outside benchmarks/" if dirty else "")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next((int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "nproc": os.cpu_count(), "mem_gb": round(mem / 2**20), "platform": platform.platform()}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def summarise(results: dict) -> dict:
    """Median time per tool, rates from it, peak RSS over the rounds."""
    s = {}
    for tool, runs in results["runs"].items():
        t = statistics.median(r["seconds"] for r in runs)
        s[tool] = {"seconds": t, "pps": results["packets"] / t, "fps": results["flows"] / t,
                   "rss_mb": max(r["rss_mb"] for r in runs), "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                   "seen_flows": runs[-1].get("seen_flows", results.get("ndpi", {}).get("seen_flows")
                                              if tool == "ndpiReader" else None),
                   "times": [round(r["seconds"], 3) for r in runs]}
    return s


def ratios(s: dict) -> list[str]:
    out = []
    for v in ("vpnid", "vpnid-nomodel"):
        for peer in ("nfstream", "ndpiReader", "dpkt"):
            if v in s and peer in s:
                out.append(f"{v} / {peer}: {s[v]['pps'] / s[peer]['pps']:.2f}x")
    return out


def table(results: dict) -> str:
    s = summarise(results)
    lines = ["| tool | median time | packets/s | flows/s | peak RSS | CPU s | flows reported |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for tool, r in s.items():
        seen = f"{r['seen_flows']:,}" if r["seen_flows"] is not None else "–"
        lines.append(f"| {tool} | {r['seconds']:.2f} s | {r['pps']:,.0f} | {r['fps']:,.0f} | {r['rss_mb']:.0f} MB "
                     f"| {r['cpu_s']:.1f} | {seen} |")
    return "\n".join(lines)


def describe(name: str, meta: dict) -> str:
    return (f"**{name}**: {meta['packets']:,} packets, {meta['bytes'] / 1e6:,.0f} MB, {meta['flows']:,} flows "
            f"({meta['packets'] / max(meta['flows'], 1):.1f} packets a flow; {meta['replicas']} replicas of "
            f"{meta['base_packets']:,} packets / {meta['base_flows']:,} flows: {meta['base']})")


def plot(all_results: dict[str, dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not importable; no plot drawn")
        return False
    series: dict[str, list[tuple[float, float]]] = {}
    shapes: dict[str, list[tuple[float, float, str]]] = {}
    for name, res in all_results.items():
        ppf = res["packets"] / max(res["flows"], 1)
        for tool, r in summarise(res).items():
            if name.startswith("ppf"):
                series.setdefault(tool, []).append((ppf, r["pps"]))
            else:
                shapes.setdefault(tool, []).append((ppf, r["pps"], name))
    if not series and not shapes:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for tool in dict.fromkeys([*series, *shapes]):
        pts = sorted(series.get(tool, []))
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=tool)[0] if pts else None
        colors[tool] = line.get_color() if line else None
        for x, y, name in shapes.get(tool, []):
            ax.plot([x], [y], "s" if name.startswith("short") else "D", color=colors[tool], mfc="none", ms=8,
                    label=None if pts else tool)
    ax.plot([], [], "ks", mfc="none", label="short-flow mix")
    ax.plot([], [], "kD", mfc="none", label="lab mix")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("packets per flow")
    ax.set_ylabel("packets/s, end to end (median)")
    ax.set_title(f"throughput against packets per flow ({datetime.now():%Y-%m-%d}, {os.cpu_count()} CPUs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def record(all_results: dict, args, info: dict) -> str:
    m, v = info["machine"], info["versions"]
    lines = [f"## Run of {info['date']} (at {info['commit']}; load average {info['load_before']} → "
             f"{info['load_after']})", "",
             f"`python benchmarks/throughput.py {' '.join(info['argv'])}`, {args.rounds} interleaved round(s), "
             f"median time; wall {info['wall_s'] / 60:.1f} min.", "",
             f"Machine: {m['cpu']}, `nproc` {m['nproc']}, {m['mem_gb']} GB RAM, {m['platform']}; "
             + ", ".join(f"{k} {x}" for k, x in v.items()) + ".", ""]
    for note in info["notes"]:
        lines.append(f"Note: {note}.")
    for name, res in all_results.items():
        lines += ["", describe(name, res["meta"]), "", table(res), ""]
        if r := ratios(summarise(res)):
            lines.append("; ".join(r) + ".")
        if res.get("notes"):
            lines.append("Packets counted: " + "; ".join(res["notes"]) + ".")
    if info.get("plot"):
        lines += ["", f"Plot: `benchmarks/{PLOT.name}`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", nargs="+", default=["lab", "short", "ppf"], choices=("lab", "short", "ppf"),
                    help="which inputs to run (default: all three kinds)")
    ap.add_argument("--packets", "--sizes", type=float, nargs="+", default=None, dest="packets",
                    help="packets in the lab and short inputs; several values for a flatness check "
                         "(default 2e6)")
    ap.add_argument("--ppf", type=int, nargs="+", default=[2, 11, 50, 200],
                    help="packets per flow of the ppf inputs (default 2 11 50 200)")
    ap.add_argument("--ppf-packets", type=float, default=None,
                    help="packets in each ppf input (default 3e5: at 2 packets a flow that is 150 k flows, "
                         "which takes vpnid and nfstream ~20-30 s each today)")
    ap.add_argument("--tools", nargs="+", default=list(DEFAULT_TOOLS), choices=TOOLS,
                    help=f"tools to run (default: {' '.join(DEFAULT_TOOLS)})")
    ap.add_argument("--skip", nargs="*", default=[], choices=TOOLS, help="tools not to run")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per input (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 200 k packets (lab, short), 100 k (ppf), 1 round")
    ap.add_argument("--short-sources", metavar="DIR",
                    help="folder of the short-flow captures (default: ../shared/corpus/external beside the "
                         "checkout, else /work/shared/corpus/external)")
    ap.add_argument("--record", action="store_true", help=f"add a run section to {RESULTS.relative_to(ROOT)} (before the older runs)")
    ap.add_argument("--no-plot", action="store_true", help=f"do not draw {PLOT.relative_to(ROOT)}")
    ap.add_argument("--child", nargs=2, metavar=("TOOL", "PCAP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_dpkt(args.child[1])
        return 0
    packets = args.packets or ([2e5] if args.quick else [2e6])
    ppf_packets = args.ppf_packets or (1e5 if args.quick else 3e5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    t_start, load_before = time.perf_counter(), load()

    notes, tools = [], []
    for t in args.tools:
        if t in args.skip:
            continue
        if why := available(t):
            print(f"note: {why}")
            notes.append(why)
        else:
            tools.append(t)
    info = {"machine": machine(), "versions": versions(), "commit": commit(), "notes": notes,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "argv": sys.argv[1:]}
    m = info["machine"]
    print(f"machine: {m['cpu']}, nproc {m['nproc']}, {m['mem_gb']} GB; load {load_before}; commit {info['commit']}")
    print("versions: " + ", ".join(f"{k} {x}" for k, x in info["versions"].items()))

    bases: dict[str, Base] = {}

    def base(kind: str) -> Base:
        if kind not in bases:
            if kind == "lab":
                src = lab_sources()
                if not src:
                    raise SystemExit(f"no lab captures ({' or '.join(LAB_SOURCES)})")
                bases[kind] = Base.read(src, f"{len(src)} lab captures")
            else:
                src = short_sources(args.short_sources)
                if not src:
                    raise SystemExit("no short-flow captures found (see --short-sources)")
                bases[kind] = Base.read(src, f"Ethernet frames of {len(src)} external captures")
        return bases[kind]

    plan: list[tuple[str, callable, int]] = []
    for kind in ("lab", "short"):
        if kind in args.inputs:
            plan += [(f"{kind}-{int(n)}", lambda k=kind: base(k), int(n)) for n in packets]
    if "ppf" in args.inputs:
        plan += [(f"ppf{p}-{int(ppf_packets)}", lambda p=p: (base("lab") + base("short")).cut(p), int(ppf_packets))
                 for p in args.ppf]

    built = [(name, *build_input(name.rsplit("-", 1)[0], make(), n)) for name, make, n in plan]
    bases.clear()  # the tools run beside a small benchmark process
    all_results: dict[str, dict] = {}
    for name, pcap, meta in built:
        print(f"\n{describe(name, meta)}")
        res = {"meta": meta, "packets": meta["packets"], "flows": meta["flows"], "runs": {t: [] for t in tools}}
        if "ndpiReader" in tools:
            res["ndpi"] = ndpi_counts(pcap)
        for rnd in range(args.rounds):
            for tool in tools:
                r = measure(tool, pcap)
                res["runs"][tool].append(r)
                print(f"  round {rnd + 1} {tool:14s} {r['seconds']:7.2f} s  {meta['packets'] / r['seconds']:>12,.0f} "
                      f"packets/s  peak RSS {r['rss_mb']:5.0f} MB  (load {load()})", flush=True)
        all_results[name] = res
        print(table(res))
        for line in ratios(summarise(res)):
            print("  " + line)
        seen = {t: r.get("seen_packets") for t, r in [(t, res["runs"][t][-1]) for t in tools]}
        if "ndpi" in res:
            seen["ndpiReader"] = res["ndpi"].get("seen_packets")
        res["notes"] = [f"{t} counted {got:,} packets of the {meta['ip_packets']:,} IPv4/IPv6 frames"
                        for t, got in seen.items() if got is not None and got != meta["ip_packets"]]
        for note in res["notes"]:
            print(f"  note: {note}")

    info.update(load_before=load_before, load_after=load(), wall_s=time.perf_counter() - t_start)
    if not args.no_plot and any(k.startswith("ppf") for k in all_results):
        info["plot"] = plot(all_results, PLOT)
        if info["plot"]:
            print(f"\nplot: {PLOT}")
    (INPUTS / "last-run.json").write_text(json.dumps({"info": info, "results": all_results}, indent=1,
                                                     default=str))
    if args.record:  # newest run first: before the first run section
        text = RESULTS.read_text() if RESULTS.exists() else "# Throughput results\n"
        at = text.find("\n## Run of ")
        section = record(all_results, args, info)
        text = text.rstrip("\n") + "\n\n" + section if at < 0 else text[: at + 1] + section + "\n" + text[at + 1 :]
        RESULTS.write_text(text)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
