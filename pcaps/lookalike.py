"""Look-alike negatives: ordinary TCP and UDP flows moved onto VPN ports (issue #14).

A port says nothing about a protocol, and vpnid's rules must not read one: the same non-VPN flow on
1194, 51820, 500, 4500, 1701, 1723, 443 or 53 must stay `none`. This takes the `none` flows of
labelled-flows CSVs (`vpnid eval`'s format: the dev set's truth.csv rows whose confidence starts with
DPI, the lab manifest's whole-capture negatives), rewrites each flow's server port onto every VPN port
(the checksums updated as RFC 1624 does, so a fragment or a snaplen-cut packet keeps a right one) and
writes one raw-IP pcap per source capture and port, plus `labels.csv` naming every rewritten flow as
`none`. `vpnid eval OUT/labels.csv` then counts any tunnel label as a false positive.

The server is the side the flow's first packet went to (the side a lone SYN-ACK came from). Only the
outermost IP header is read: flows inside GRE or IP-in-IP are left out, and so are packets that are no
flow's (a second flow's rewritten tuple colliding with the first's is dropped and counted).
"""

from __future__ import annotations

import csv
import itertools
import re
import struct
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vpnid.classifier.labelling.evaluate import LabelRow, read_labels
from vpnid.features.capture import read_chunks
from vpnid.features.decode.ip import ip_layer
from vpnid.features.decode.link import link_layer
from vpnid.features.families import NONE
from vpnid.features.packets import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    LINKTYPE_RAW,
    TCP_ACK,
    TCP_SYN,
    address_text,
    transport_name,
)

VPN_PORTS = (1194, 51820, 500, 4500, 1701, 1723, 443, 53)  # OpenVPN, WireGuard, IKE, NAT-T, L2TP, PPTP, and the two every tunnel borrows
TRUSTED = "DPI"  # a truth row's confidence must start with this (as `vpnid eval`'s default --trust)
PCAP_NS_MAGIC = 0xA1B23C4D

CHECKSUM_AT = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}  # offset of the checksum in the transport header

Endpoint = tuple[str, int]
FlowKey = tuple[int, frozenset[Endpoint]]


@dataclass(frozen=True, slots=True)
class Packet:
    """The outer IP header of one captured frame, as far as a port rewrite needs it."""

    ts_ns: int
    wirelen: int
    ip: bytes  # from the IP header to the end of the captured frame
    proto: int
    src: str
    dst: str
    l4: int  # offset of the transport header in `ip`; -1 for a non-first fragment
    frag: tuple | None  # (src, dst, identification) of a fragmented datagram, else None


@dataclass
class Summary:
    """What a build wrote, for the log and the tests."""

    flows: Counter[int] = field(default_factory=Counter)  # rewritten flows per target port
    captures: int = 0
    rows_without_packets: list[str] = field(default_factory=list)  # "csv:line" of named flows not found
    collisions: int = 0


def packets(path: Path) -> Iterable[Packet]:
    """The IP packets of a capture, in capture order: link layer and outer IP header read by vpnid's own
    decoder (`link_layer`, `ip_layer`), so the look-alikes start from the packets vpnid itself sees."""
    for chunk in read_chunks(path, warn=lambda _m: None):
        stats: Counter[str] = Counter()
        rows = sorted((r for ip in ip_layer(chunk.data, link_layer(chunk, stats), stats) for r in zip(
            ip.pkt.tolist(), ip.l3.tolist(), ip.l4.tolist(), ip.proto.tolist(), ip.src.tolist(), ip.dst.tolist(),
            ip.frag.tolist(), ip.frag_off.tolist(), ip.ident.tolist())), key=lambda r: r[0])
        for row, l3, l4, proto, src, dst, frag, frag_off, ident in rows:
            start = int(chunk.offset[row])
            end = min(start + int(chunk.caplen[row]), chunk.data.size)
            src, dst = address_text(src), address_text(dst)
            yield Packet(int(chunk.ts_ns[row]), int(chunk.wirelen[row]) - (l3 - start), chunk.data[l3:end].tobytes(),
                         proto, src, dst, l4 - l3 if frag_off == 0 else -1, (src, dst, ident) if frag else None)


def _fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def rewrite_port(ip: bytes, proto: int, l4: int, which: int, port: int) -> bytes:
    """`ip` with the source (which=0) or destination (which=1) port set to `port`, the transport checksum
    updated incrementally (RFC 1624 eqn. 3), so it stays right without the rest of the datagram. A UDP
    checksum of 0 (IPv4: none computed) stays 0; a computed 0 is sent as 0xFFFF (RFC 768)."""
    at = l4 + 2 * which
    if len(ip) < at + 2:
        return ip
    out = bytearray(ip)
    old = struct.unpack_from(">H", out, at)[0]
    struct.pack_into(">H", out, at, port)
    c = l4 + CHECKSUM_AT[proto]
    if len(out) >= c + 2:
        checksum = struct.unpack_from(">H", out, c)[0]
        if not (proto == IPPROTO_UDP and checksum == 0):
            new = ~_fold((~checksum & 0xFFFF) + (~old & 0xFFFF) + port) & 0xFFFF
            struct.pack_into(">H", out, c, 0xFFFF if proto == IPPROTO_UDP and new == 0 else new)
    return bytes(out)


def _ports(p: Packet) -> tuple[int, int] | None:
    if p.l4 < 0 or p.proto not in CHECKSUM_AT or len(p.ip) < p.l4 + 4:
        return None
    return struct.unpack_from(">HH", p.ip, p.l4)


def _pcap(records: list[tuple[int, int, bytes]]) -> bytes:
    """A classic pcap (ns timestamps, raw IP) of (ts_ns, wirelen, packet) records."""
    out = [struct.pack("<IHHiIII", PCAP_NS_MAGIC, 2, 4, 0, 0, 262_144, LINKTYPE_RAW)]
    for ts, wirelen, ip in records:
        out.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(ip), max(wirelen, len(ip))) + ip)
    return b"".join(out)


def negative_rows(rows: list[LabelRow], trust: str = TRUSTED) -> dict[Path, list[LabelRow]]:
    """The `none` TCP/UDP rows `vpnid eval` would score (confidence empty or starting with `trust`),
    whole-capture rows included, by capture."""
    out: dict[Path, list[LabelRow]] = defaultdict(list)
    for row in rows:
        trusted = not row.confidence or row.confidence.startswith(trust)
        if row.family == NONE and trusted and row.transport in ("*", "tcp", "udp"):
            out[row.path].append(row)
    return out


def _selected(rows: list[LabelRow], key: FlowKey, named: set) -> LabelRow | None:
    """The row that makes a flow a look-alike source: its own row, else a whole-capture row when no
    other row (of any family) names it."""
    name = (transport_name(key[0]), key[1])
    for row in rows:
        if row.ends and (row.transport, row.ends) == name:
            return row
    if name in named:
        return None
    return next((row for row in rows if not row.ends), None)


def _safe_name(labels: Path, capture: Path) -> str:
    """An output file name for a source capture (path characters and anything odd replaced)."""
    try:
        rel = capture.relative_to(labels.parent)
    except ValueError:
        rel = Path(capture.name)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(rel.with_suffix(""))).strip("._") or "capture"


def build(labels: Iterable[Path], out: Path, ports: Iterable[int] = VPN_PORTS, trust: str = TRUSTED) -> Summary:
    """Write the look-alikes of every `none` flow named in `labels` to `out` (see the module docstring)."""
    ports = tuple(ports)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    rows_out: list[dict] = []
    stems: set[str] = set()
    for csv_path in labels:
        csv_path = Path(csv_path)
        every, _problems = read_labels(csv_path)
        all_named: dict[Path, set] = defaultdict(set)
        for row in every:
            if row.ends:
                all_named[row.path].add((row.transport, row.ends))
        for capture, rows in negative_rows(every, trust).items():
            stem = base = _safe_name(csv_path, capture)
            for n in itertools.count(2):  # two captures whose names differ only in replaced characters
                if stem not in stems:
                    break
                stem = f"{base}-{n}"
            stems.add(stem)
            found = _rewrite(capture, rows, all_named[capture], ports, out, stem, summary, rows_out)
            summary.rows_without_packets += [f"{csv_path}:{r.line}" for r in rows if r.ends and r.line not in found]
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["pcap", "transport", "a_ip", "a_port", "b_ip", "b_port", "family", "confidence",
                               "source"])
        w.writeheader()
        w.writerows(rows_out)
    return summary


def _rewrite(capture: Path, rows: list[LabelRow], named: set, ports: tuple[int, ...], out: Path, stem: str,
             summary: Summary, rows_out: list[dict]) -> set[int]:
    """One source capture's look-alikes, one pcap per port; returns the lines of the rows that matched."""
    server: dict[FlowKey, Endpoint] = {}  # flow -> its server endpoint
    chosen: dict[FlowKey, LabelRow | None] = {}
    fragments: dict[tuple, FlowKey] = {}  # datagram -> flow, for the fragments after the first
    kept: list[tuple[Packet, FlowKey]] = []
    for p in packets(capture):
        pp = _ports(p)
        if pp is None:
            key = fragments.get(p.frag) if p.frag else None
            if key is not None:
                kept.append((p, key))
            continue
        key = (p.proto, frozenset(((p.src, pp[0]), (p.dst, pp[1]))))
        if key not in chosen:
            chosen[key] = _selected(rows, key, named)
            flags = p.ip[p.l4 + 13] if p.proto == IPPROTO_TCP and len(p.ip) > p.l4 + 13 else 0
            answer = flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
            server[key] = (p.src, pp[0]) if answer else (p.dst, pp[1])
        if chosen[key] is None:
            continue
        if p.frag:
            fragments[p.frag] = key
        kept.append((p, key))
    found = {row.line for row in chosen.values() if row is not None}
    if not kept:
        return found
    for port in ports:
        records, seen = [], {}
        for p, key in kept:
            host, old = server[key]
            client = next(iter(key[1] - {(host, old)}), (host, old))
            new_key = (key[0], frozenset((client, (host, port))))
            if len(new_key[1]) < 2 or seen.setdefault(new_key, key) != key:
                continue  # the client already is (host, port), or another flow took the 5-tuple
            if p.l4 < 0:
                records.append((p.ts_ns, p.wirelen, p.ip))
            else:
                which = 0 if (p.src, _ports(p)[0]) == (host, old) else 1
                records.append((p.ts_ns, p.wirelen, rewrite_port(p.ip, p.proto, p.l4, which, port)))
        name = f"{port}/{stem}.pcap"
        (out / str(port)).mkdir(exist_ok=True)
        (out / name).write_bytes(_pcap(records))
        summary.captures += 1
        for new_key, key in seen.items():
            (ca, cp), (sa, sp) = sorted(new_key[1], key=lambda e: e == (server[key][0], port))
            row = chosen[key]
            rows_out.append({"pcap": name, "transport": transport_name(key[0]), "a_ip": ca, "a_port": cp,
                             "b_ip": sa, "b_port": sp, "family": NONE, "confidence": TRUSTED,
                             "source": f"{row.pcap} line {row.line}"})
            summary.flows[port] += 1
        summary.collisions += sum(1 for key in {k for _, k in kept} if key not in seen.values())
    return found
