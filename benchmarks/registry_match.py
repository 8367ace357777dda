"""Time the registry cross-check at scale: 100 k registrations, 1 M tunnel flows (seeded, synthetic).

    python benchmarks/registry_match.py [--registrations N] [--flows N] [--seed S]

Registrations get 1-3 client networks (IPv4 /16-/32 with nested and repeated networks, a tenth IPv6),
0-2 server endpoints (half with a port), mixed statuses and validity. Flows start from a registered
network two times in three and from random addresses otherwise, half of them with src and dst swapped.
Prints the time to build the index, to check precomputed columns (the vectorised core), and to check
FlowRecords end to end (address parsing included), with flows per second and the verdict mix.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time
from collections import Counter
from datetime import date, timedelta

from vpnid.classifier.audit.registry.match import VERDICTS, FlowBatch, Matcher
from vpnid.classifier.audit.registry.registration import CATEGORIES, PROTOCOLS, STATUSES, Endpoint, Registration
from vpnid.classifier.running.records import FlowRecord

T0 = 1_735_689_600.0  # 2025-01-01 UTC


def random_net(rnd: random.Random) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if rnd.random() < 0.1:
        return ipaddress.IPv6Network((0x20010DB8 << 96 | rnd.getrandbits(64) << 32, rnd.choice((48, 56, 64))),
                                     strict=False)
    plen = rnd.choice((16, 20, 24, 24, 24, 26, 28, 29, 30, 32))
    return ipaddress.IPv4Network((rnd.randrange(1 << 24, 223 << 24), plen), strict=False)


def registrations(n: int, rnd: random.Random) -> list[Registration]:
    regs, pool = [], []
    for i in range(n):
        nets = tuple(rnd.choice(pool) if pool and rnd.random() < 0.05 else random_net(rnd)
                     for _ in range(rnd.randint(1, 3)))
        pool.extend(nets)
        servers = tuple(Endpoint(random_net(rnd), rnd.choice((None, 443, 1194, 51820, 500)))
                        for _ in range(rnd.choice((0, 0, 1, 2))))
        start = date(2020, 1, 1) + timedelta(days=rnd.randrange(2000))
        until = None if rnd.random() < 0.7 else start + timedelta(days=rnd.randrange(30, 1500))
        regs.append(Registration(f"R{i:07d}", f"Org {i // 3}", rnd.choice(CATEGORIES), rnd.choice(PROTOCOLS),
                                 nets, servers, start, until, rnd.choices(STATUSES, (90, 5, 5))[0]))
    return regs


def inside(net, rnd: random.Random) -> str:
    return str(net.network_address + rnd.randrange(net.num_addresses))


def flows(n: int, regs: list[Registration], rnd: random.Random) -> list[FlowRecord]:
    out = []
    for i in range(n):
        reg = rnd.choice(regs)
        client_net = rnd.choice(reg.client_networks)
        if rnd.random() < 2 / 3:
            client = inside(client_net, rnd)
            server = inside(rnd.choice(reg.server_endpoints).network, rnd) if reg.server_endpoints else None
        else:
            client = server = None
        v6 = client_net.version == 6
        client = client or inside(random_net(rnd) if not v6 else client_net.supernet(new_prefix=16), rnd)
        server = server or (f"2001:db8:ffff::{i % 65536:x}" if v6 else f"198.51.{i % 256}.{i // 256 % 256}")
        if ipaddress.ip_address(client).version != ipaddress.ip_address(server).version:
            server = "2001:db8:ffff::1" if ":" in client else "198.51.100.1"
        sport, dport = rnd.randrange(1024, 65536), rnd.choice((443, 1194, 51820, 500))
        if rnd.random() < 0.5:
            client, server, sport, dport = server, client, dport, sport
        t = T0 + rnd.random() * 86400 * 365
        out.append(FlowRecord(
            pcap="bench", flow_id=f"F{i}", community_id=None, transport="udp", src_ip=client, src_port=sport,
            dst_ip=server, dst_port=dport, first_seen=t, last_seen=t + 10, src2dst_packets=5, dst2src_packets=5,
            src2dst_bytes=500, dst2src_bytes=500, label=rnd.choice(("openvpn", "wireguard", "ipsec")),
            confidence=1.0, method="signature", evidence=[], verdict_packet=1, end_reason="idle"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registrations", type=int, default=100_000)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    t = time.perf_counter()
    regs = registrations(args.registrations, rnd)
    recs = flows(args.flows, regs, rnd)
    print(f"generated {len(regs):,} registrations and {len(recs):,} tunnel flows in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    matcher = Matcher.build(regs)
    print(f"index build:             {time.perf_counter() - t:6.2f} s")
    t = time.perf_counter()
    batch = FlowBatch.from_records(recs)
    t_cols = time.perf_counter() - t
    t = time.perf_counter()
    verdict, *_ = matcher.check_batch(batch)
    t_core = time.perf_counter() - t
    print(f"records -> columns:      {t_cols:6.2f} s")
    print(f"check_batch (columns):   {t_core:6.2f} s  {len(recs) / t_core:12,.0f} flows/s")
    t = time.perf_counter()
    verdicts = matcher.check(recs)
    t_all = time.perf_counter() - t
    print(f"check (records, total):  {t_all:6.2f} s  {len(recs) / t_all:12,.0f} flows/s")
    mix = Counter(v.registry for v in verdicts)
    assert mix == Counter(VERDICTS[v] for v in verdict.tolist())
    print("verdicts: " + ", ".join(f"{k} {mix[k]:,}" for k in VERDICTS))


if __name__ == "__main__":
    main()
