"""The flow record: the one row every output, evaluation, registry check and report joins on."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import asdict, dataclass, fields

import communityid

from features.flows import NS, Flow
from features.packets import IPPROTO_ICMP, IPPROTO_ICMPV6, address_text, transport_name

_COMMUNITY_ID = communityid.CommunityID()


@dataclass(slots=True)
class FlowRecord:
    """One labelled flow. Field names are the JSONL/CSV column names (documented in the README)."""

    pcap: str  # capture path as given
    flow_id: str  # stable id for `explain` and reports: same capture bytes, same id
    community_id: str | None  # Community ID v1, to join with Zeek/Suricata logs (None for ICMP)
    transport: str
    src_ip: str  # initiator
    src_port: int
    dst_ip: str
    dst_port: int
    first_seen: float  # epoch seconds
    last_seen: float
    src2dst_packets: int
    dst2src_packets: int
    src2dst_bytes: int  # IP bytes (header included) of the innermost IP packet
    dst2src_bytes: int
    label: str  # openvpn | wireguard | ipsec | none | another tunnel family
    confidence: float
    evidence: list[str]
    verdict_packet: int | None  # flow packet number at which the label was decided
    end_reason: str  # idle | active | fin | rst | end_of_capture | evicted

    def as_dict(self) -> dict:
        return asdict(self)


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(FlowRecord))


def flow_id(flow: Flow) -> str:
    """Deterministic id from the 5-tuple and first packet time (like Zeek's uid, but reproducible)."""
    h = hashlib.blake2b(digest_size=10)
    h.update(bytes([flow.proto]) + flow.src + flow.sport.to_bytes(2, "big") + flow.dst)
    h.update(flow.dport.to_bytes(2, "big") + flow.first_ns.to_bytes(8, "big", signed=True))
    return "F" + base64.b32encode(h.digest()).decode().lower()


def community_id(flow: Flow, src_ip: str, dst_ip: str) -> str | None:
    if flow.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        return None  # needs ICMP type/code, which flows do not keep
    ports = (flow.sport, flow.dport) if flow.proto in communityid.PORT_PROTOS else (None, None)
    return _COMMUNITY_ID.calc(communityid.FlowTuple(flow.proto, src_ip, dst_ip, *ports))


def base_record(pcap: str, flow: Flow) -> dict:
    """Every record field that does not depend on labelling."""
    src_ip, dst_ip = address_text(flow.src), address_text(flow.dst)
    return {
        "pcap": pcap,
        "flow_id": flow_id(flow),
        "community_id": community_id(flow, src_ip, dst_ip),
        "transport": transport_name(flow.proto),
        "src_ip": src_ip,
        "src_port": flow.sport,
        "dst_ip": dst_ip,
        "dst_port": flow.dport,
        "first_seen": flow.first_ns / NS,
        "last_seen": flow.last_ns / NS,
        "src2dst_packets": flow.packets[0],
        "dst2src_packets": flow.packets[1],
        "src2dst_bytes": flow.bytes[0],
        "dst2src_bytes": flow.bytes[1],
        "end_reason": flow.end_reason,
    }
