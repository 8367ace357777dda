"""Attribution cost: flows against lease intervals (issue 15), vectorised as `leases.attribute` does it.

    python -m vpnid.benchmarks.attribution [--flows 1000000] [--intervals 10000000]

Synthetic but shaped like an operator's day: `--intervals` address leases and CGNAT port blocks (a
quarter) over 24 hours, each address handed from subscriber to subscriber every few hours with a few
overlaps; flows at random times on leased addresses (and some unknown ones). Prints the time to build the
index and to attribute the flows (initiator, then responder), and the outcome counts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vpnid.classifier.audit.leases.attribute import CGNAT, DHCP, OPEN_END, V4_HI, LeaseColumns, LeaseIndex

DAY_MS = 86_400_000


def lease_columns(n: int, rnd: np.random.Generator) -> LeaseColumns:
    n_blocks = n // 4
    n_plain = n - n_blocks
    per_addr = 6  # leases per address over the day
    addrs = np.uint64(0x0A000000) + np.repeat(np.arange(n_plain // per_addr + 1, dtype=np.uint64), per_addr)[:n_plain]
    slot = np.arange(n_plain) % per_addr
    start = slot * (DAY_MS // per_addr) + rnd.integers(0, 60_000, n_plain)
    end = start + DAY_MS // per_addr + rnd.integers(-120_000, 120_000, n_plain)  # a few overlap, a few gaps
    # CGNAT: 1000-port blocks on public addresses, each block re-assigned every 2 hours
    per_block = 12
    blocks = np.arange(n_blocks) // per_block
    public = np.uint64(0xCB007100) + (blocks // 64).astype(np.uint64)
    first = 1024 + (blocks % 64) * 1000
    b_start = (np.arange(n_blocks) % per_block) * (DAY_MS // per_block)
    b_end = b_start + DAY_MS // per_block
    return LeaseColumns(
        kind=np.r_[np.full(n_plain, DHCP, np.int8), np.full(n_blocks, CGNAT, np.int8)],
        subscriber=rnd.integers(0, max(n // 3, 1), n).astype(np.int64),
        subscribers=tuple(f"sub{i}" for i in range(max(n // 3, 1))),
        hi=np.full(n, V4_HI, np.uint64), lo=np.r_[addrs, public],
        port_first=np.r_[np.full(n_plain, -1), first].astype(np.int64),
        port_last=np.r_[np.full(n_plain, -1), first + 999].astype(np.int64),
        start=np.r_[start, b_start].astype(np.int64), end=np.r_[np.where(slot == per_addr - 1, OPEN_END, end),
                                                                b_end].astype(np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--intervals", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    rnd = np.random.default_rng(args.seed)
    cols = lease_columns(args.intervals, rnd)
    t = time.perf_counter()
    index = LeaseIndex.build(cols)
    t_build = time.perf_counter() - t
    pick = rnd.integers(0, args.intervals, args.flows)
    lo = cols.lo[pick] + (rnd.random(args.flows) < 0.05).astype(np.uint64) * np.uint64(1 << 28)  # 5 % unknown
    port = np.where(cols.port_first[pick] >= 0, cols.port_first[pick] + rnd.integers(0, 1000, args.flows),
                    rnd.integers(1024, 65535, args.flows))
    t_ms = rnd.integers(0, DAY_MS, args.flows)
    v6 = np.zeros(args.flows, bool)
    server_hi, server_lo = np.zeros(args.flows, np.uint64), np.full(args.flows, np.uint64(0xC6336402))
    t = time.perf_counter()
    src = index.attribute(v6, cols.hi[pick], lo, port, t_ms)
    dst = index.attribute(v6, server_hi, server_lo, np.full(args.flows, 51820), t_ms)
    t_attr = time.perf_counter() - t
    found = int((src.subscriber >= 0).sum())
    print(f"{args.flows:,} flows x {args.intervals:,} intervals")
    print(f"build index:            {t_build:6.2f} s")
    print(f"attribute (both ends):  {t_attr:6.2f} s  {args.flows / t_attr:12,.0f} flows/s")
    print(f"attributed {found:,}, gaps {int((src.issue == 1).sum()):,}, overlaps {int((src.issue == 2).sum()):,}, "
          f"unknown {args.flows - found - int((src.issue > 0).sum()):,}; responders known: {int((dst.issue > 0).sum())}")


if __name__ == "__main__":
    main()
