"""Captures and a registry that give every registry verdict, on IPv4 and IPv6, for the trial tests.

Each family's capture holds one WireGuard session per verdict (server port 51820 + its index in
VERDICT_PORTS) from its own client, plus a DNS exchange that is not a tunnel. The registry covers them
so that each session gets the verdict its port names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scapy.all import DNS, DNSQR, IP, UDP, Ether, IPv6, Raw, wrpcap

from tests import tunnelbytes as tb
from tests.registry_helpers import HEADER, row

ROOT = Path(__file__).parent.parent
T0 = 1_700_000_000.0  # 2023-11-14 UTC
VERDICT_PORTS = {"registered": 51820, "expired": 51821, "suspended": 51822, "revoked": 51823,
                 "protocol_mismatch": 51824, "unregistered": 51825}
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}  # explicit: scapy would resolve them
FAMILIES = {4: ("198.18.{i}.1", "198.18.100.2"), 6: ("2001:db8:{i}::1", "2001:db8:100::2")}


def client(family: int, verdict: str) -> str:
    return FAMILIES[family][0].format(i=list(VERDICT_PORTS).index(verdict) + 1)


def server(family: int) -> str:
    return FAMILIES[family][1]


def write_capture(path: Path, family: int, start: float = T0) -> Path:
    """One WireGuard session per verdict, 10 s apart from `start`, then a DNS flow."""
    ip = IP if family == 4 else IPv6
    pkts = []
    for k, (verdict, port) in enumerate(VERDICT_PORTS.items()):
        a, b = client(family, verdict), server(family)
        for i, (direction, payload) in enumerate(tb.wireguard_session(n_data=5, seed=k + 1)):
            src, dst, sport, dport = (a, b, 40000 + k, port) if direction == 0 else (b, a, port, 40000 + k)
            p = Ether(**MACS) / ip(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)
            p.time = start + 10 * k + i * 0.01
            pkts.append(p)
    a, b = client(family, "registered"), server(family)
    for i in range(2):
        q = Ether(**MACS) / ip(src=a, dst=b) / UDP(sport=5353, dport=53) / DNS(id=i, qd=DNSQR(qname="a.lab"))
        q.time = start + 100 + i
        pkts.append(q)
    wrpcap(str(path), pkts)
    return path


def registry_csv(path: Path) -> Path:
    """Registrations giving each verdict its port, for both families."""
    rows = [HEADER]
    for family in FAMILIES:
        srv = server(family)
        for verdict, port in VERDICT_PORTS.items():
            if verdict == "unregistered":
                continue
            endpoint = f"[{srv}/128]:{port}" if family == 6 else f"{srv}/32:{port}"
            rows.append(row(registration_id=f"R{family}-{verdict}", organization=f"Org {verdict} v{family}",
                            protocol="openvpn" if verdict == "protocol_mismatch" else "wireguard",
                            client_networks=client(family, verdict), server_endpoints=endpoint,
                            valid_until="2021-12-31" if verdict == "expired" else "",
                            status=verdict if verdict in ("suspended", "revoked") else "active"))
    path.write_text("".join(rows), encoding="utf-8")
    return path


def vpnid_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vpnid.classifier.cli.main", *args]


def vpnid(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`vpnid ARGS` in a subprocess from the repository root, without the caller's $VPNID_DB."""
    clean = {k: v for k, v in os.environ.items() if k != "VPNID_DB"} | (env or {})
    return subprocess.run(vpnid_argv(*args), capture_output=True, text=True, cwd=ROOT, timeout=300, env=clean)
