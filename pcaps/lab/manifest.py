"""The labelled-flows manifest (the format ``vpnid eval`` reads) and the committed corpus.

Every lab capture holds one tunnel family only, so each gets one whole-capture row
(transport and a_ip ``*``); the extra columns make the capture reproducible and checkable.
"""
from __future__ import annotations

import csv
import ipaddress
from pathlib import Path

from vpnid.pcaps import CORPUS
from vpnid.pcaps.lab import pcapfile
from vpnid.pcaps.lab.netns import LAB_NET
from vpnid.pcaps.lab.system import version
from vpnid.pcaps.lab.variant import Variant

COLUMNS = ["pcap", "transport", "a_ip", "a_port", "b_ip", "b_port", "family",
           "software", "version", "config", "server_port", "duration_s", "packets", "sha256"]
CORPUS_DIR = CORPUS  # `--commit` adds trimmed captures to the bundled corpus
CORPUS_LIMIT_BYTES = 30 * 1024 * 1024
# A corpus capture keeps its first packets, then 3 s of every 30 s plus every control packet.
TRIM = dict(head_packets=1500, window_s=3.0, period_s=30.0)


def row(v: Variant, pcap: Path) -> dict[str, str]:
    packets, duration = pcapfile.summary(pcap)
    config = v.config + (f"; recording {v.recording}" if v.recording else "")
    return {"pcap": pcap.name, "transport": "*", "a_ip": "*", "a_port": "", "b_ip": "", "b_port": "",
            "family": v.family, "software": v.package, "version": version(v.package), "config": config,
            "server_port": str(v.server_port), "duration_s": f"{duration:.2f}", "packets": str(packets),
            "sha256": pcapfile.sha256(pcap)}


def load(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def update(path: Path, rows: list[dict[str, str]], order: list[str]) -> None:
    """Replace rows of the same capture, keep the others, sort in registry order."""
    merged = {r["pcap"]: r for r in load(path)} | {r["pcap"]: r for r in rows}
    rank = {name: i for i, name in enumerate(order)}
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(sorted(merged.values(), key=lambda r: (rank.get(Path(r["pcap"]).stem, len(rank)), r["pcap"])))


def foreign(pcap: Path) -> set[str]:
    """Addresses in a capture that the lab did not assign (must be empty before committing)."""
    net = ipaddress.ip_network(LAB_NET)
    bad = set()
    for a in pcapfile.addresses(pcap):
        try:
            if ipaddress.ip_address(a) not in net:
                bad.add(a)
        except ValueError:
            bad.add(a)
    return bad


def commit(generated: list[tuple[Variant, Path]], order: list[str]) -> Path:
    """Trim captures into pcaps/corpus/, refuse foreign addresses or an oversized corpus, update the manifest."""
    CORPUS_DIR.mkdir(exist_ok=True)
    rows = []
    for v, src in generated:
        if bad := foreign(src):
            raise ValueError(f"{src} holds addresses the lab did not assign: {sorted(bad)}")
        dst = CORPUS_DIR / src.name
        pcapfile.trim(src, dst, **TRIM)
        rows.append(row(v, dst))
    update(CORPUS_DIR / "manifest.csv", rows, order)
    total = sum(p.stat().st_size for p in CORPUS_DIR.glob("*.pcap"))
    if total > CORPUS_LIMIT_BYTES:
        raise ValueError(f"corpus is {total / 2**20:.1f} MiB, over the {CORPUS_LIMIT_BYTES / 2**20:.0f} MiB limit")
    return CORPUS_DIR / "manifest.csv"
