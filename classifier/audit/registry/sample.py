"""Generate the bundled demo registry, `sample_registry.csv` (deterministic: same code, same bytes).

    python -m vpnid.classifier.audit.registry.sample [-o FILE]

A few hundred synthetic registrations across every category in documentation and private ranges, some
expired, suspended or revoked, plus the LAB rows, which cover SOME of the lab's tunnels (client
198.18.0.1, server 198.18.0.2; see `vpnid lab --list`) so a demo trial shows every verdict:

    registered         openvpn to :1194, wireguard to :51820, openconnect to :8443
    expired            wireguard to :41820 (wireguard-rehandshake)
    revoked            openvpn to :53
    suspended          anything to :443 (a suspended wireguard registration covers it)
    protocol_mismatch  ipsec NAT-T on :4500 (registered as openvpn)
    unregistered       openvpn to :37519 and every other lab tunnel

LAB_SUBSCRIBERS are registrations by subscriber, not by network: they cover a lab tunnel only through the
bundled lease log (`vpnid.classifier.audit.leases.sample`), which gives the lab client 198.18.0.1 to
subscriber lab-alice until 23:17 UTC on the lab day and to lab-bob after it, so the demo registers
IKE on :500 (lab-bob's registration) by lease.

To point the demo at other endpoints, edit LAB and regenerate.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
from datetime import date, timedelta
from importlib.resources import files
from pathlib import Path

from vpnid.classifier.audit.registry.csvio import write_csv
from vpnid.classifier.audit.registry.registration import ANY, CATEGORIES, Registration, parse_registration
from vpnid.features.families import REFERENCE_FAMILIES

PATH = Path(str(files(__package__) / "sample_registry.csv"))  # package data
SEED = 5
COUNT = 300
LAB_CLIENT, LAB_SERVER = "198.18.0.1/32", "198.18.0.2/32"

# registration_id, organization, category, protocol, server port, valid_from, valid_until, status, notes
LAB = [
    ("LAB-0001", "Lab First Bank", "bank", "openvpn", 1194, "2020-01-01", "", "active", "lab openvpn :1194"),
    ("LAB-0002", "Lab IT Services", "it_company", "wireguard", 51820, "2020-01-01", "", "active", "lab wireguard :51820"),
    ("LAB-0003", "Lab Embassy", "embassy", "wireguard", 41820, "2020-01-01", "2024-12-31", "active",
     "lab wireguard :41820, registration lapsed"),
    ("LAB-0004", "Lab Outsourcing", "bpo", "openvpn", 53, "2020-01-01", "", "revoked", "lab openvpn :53"),
    ("LAB-0005", "Lab Freelancer", "freelancer", "wireguard", 443, "2020-01-01", "", "suspended", "lab :443"),
    ("LAB-0006", "Lab Code House", "software_house", "openvpn", 4500, "2020-01-01", "", "active",
     "lab :4500, declared as openvpn but runs ipsec"),
    ("LAB-0007", "Lab Remote Office", "it_company", "openconnect", 8443, "2020-01-01", "", "active",
     "lab openconnect :8443 (AnyConnect CSTP over TLS)"),
]
# registration_id, organization, category, protocol, server port, subscriber_id, phone, notes
LAB_SUBSCRIBERS = [
    ("LAB-0008", "Lab Home Worker", "freelancer", "ipsec", 500, "lab-bob", "+15550100008",
     "lab IKE :500, registered by subscriber (dynamic address)"),
]
ORG_WORDS = ("North", "Blue", "Cedar", "Harbor", "Summit", "Delta", "Nova", "Atlas", "Orion", "Pine", "Vertex", "Lumen")
CATEGORY_NAMES = {"bank": "Bank", "embassy": "Embassy", "it_company": "IT", "freelancer": "Consulting",
                  "bpo": "Outsourcing", "software_house": "Software", "other": "Trust"}
POOLS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "100.64.0.0/10", "192.0.2.0/24",
                                           "203.0.113.0/24", "2001:db8::/32")]
SERVER_POOLS = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "2001:db8:ffff::/48")]


def _subnet(rnd: random.Random, pool: ipaddress.IPv4Network | ipaddress.IPv6Network, plen: int) -> str:
    plen = max(plen, pool.prefixlen)
    index = rnd.randrange(1 << (plen - pool.prefixlen))
    return str(ipaddress.ip_network((int(pool.network_address) + (index << (pool.max_prefixlen - plen)), plen)))


def _synthetic(i: int, rnd: random.Random) -> Registration:
    category = CATEGORIES[i % len(CATEGORIES)]
    clients = []
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        pool = rnd.choice(POOLS)
        clients.append(_subnet(rnd, pool, rnd.choice((20, 24, 28, 32)) if pool.version == 4 else rnd.choice((48, 56, 64))))
    servers = []
    for _ in range(rnd.choice((0, 1, 1, 2))):
        pool = rnd.choice(SERVER_POOLS)
        net = _subnet(rnd, pool, 32 if pool.version == 4 else 128)
        port = rnd.choice((None, 443, 1194, 51820, 500))
        servers.append(net if port is None else f"[{net}]:{port}" if pool.version == 6 else f"{net}:{port}")
    start = date(2021, 1, 1) + timedelta(days=rnd.randrange(1200))
    expired = rnd.random() < 0.1
    until = start + timedelta(days=rnd.randrange(90, 400)) if expired else (
        "" if rnd.random() < 0.6 else start + timedelta(days=rnd.randrange(1500, 3000)))
    status = rnd.choices(("active", "suspended", "revoked"), (85, 7, 8))[0]
    return parse_registration({
        "registration_id": f"{category.upper().replace('_', '')[:4]}-{i:04d}",
        "organization": f"{rnd.choice(ORG_WORDS)} {rnd.choice(ORG_WORDS)} {CATEGORY_NAMES[category]} {i // 7}",
        "category": category, "protocol": rnd.choice((*REFERENCE_FAMILIES, ANY)),
        "client_networks": " ".join(clients), "server_endpoints": " ".join(servers),
        "valid_from": start.isoformat(), "valid_until": str(until), "status": status,
        "notes": "expired on purpose" if expired else ""})


def sample() -> list[Registration]:
    rnd = random.Random(SEED)
    lab = [parse_registration({"registration_id": rid, "organization": org, "category": cat, "protocol": proto,
                               "client_networks": LAB_CLIENT, "server_endpoints": f"{LAB_SERVER}:{port}",
                               "valid_from": start, "valid_until": until, "status": status, "notes": notes})
           for rid, org, cat, proto, port, start, until, status, notes in LAB]
    lab += [parse_registration({"registration_id": rid, "organization": org, "category": cat, "protocol": proto,
                                "client_networks": "", "server_endpoints": f"{LAB_SERVER}:{port}",
                                "valid_from": "2020-01-01", "valid_until": "", "status": "active", "notes": notes,
                                "subscriber_id": subscriber, "phone": phone})
            for rid, org, cat, proto, port, subscriber, phone, notes in LAB_SUBSCRIBERS]
    return lab + [_synthetic(i, rnd) for i in range(1, COUNT + 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=str(PATH), help="'-' for standard output (default: %(default)s)")
    args = ap.parse_args()
    if args.output == "-":
        write_csv(sample(), sys.stdout)
        return
    with open(args.output, "w", encoding="utf-8", newline="") as f:
        n = write_csv(sample(), f)
    print(f"wrote {n} registrations to {args.output}")


if __name__ == "__main__":
    main()
