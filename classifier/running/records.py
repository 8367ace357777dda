"""The flow record: the one row every output, evaluation, registry check and report joins on."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from vpnid.classifier.running.community import community_id
from vpnid.features.flows import NS, Flow, flow_id
from vpnid.features.packets import address_text, transport_name


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
    method: str  # signature | model | none: what decided the label
    evidence: list[str]
    verdict_packet: int | None  # flow packet number at which the label was decided
    end_reason: str  # idle | active | fin | rst | end_of_capture | evicted
    # `features.risks` names any dissector raised (sorted): properties worth a look, never a label.
    risks: list[str] = field(default_factory=list)
    # Set only by runs that cross-check a registry (`classify --db`, trials); None for non-tunnel flows.
    registry: str | None = None  # registered | unregistered | expired | suspended | revoked | protocol_mismatch
    registration_id: str | None = None  # the registration that decided `registry`
    # Set only by runs that attribute flows through lease logs (trials): the subscriber holding the client
    # end at first_seen (`vpnid.classifier.audit.leases`); None when unknown or ambiguous.
    subscriber_id: str | None = None

    def as_dict(self) -> dict:
        """Field name -> value; shallow (the evidence and risk lists are the record's own), as output needs
        no copy and `dataclasses.asdict` deep-copies at several µs per record."""
        return {name: getattr(self, name) for name in FIELDS}


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(FlowRecord))
REGISTRY_FIELDS = ("registry", "registration_id", "subscriber_id")
# Fields that hold text from outside vpnid's vocabulary: a file name, evidence (which may quote what a packet
# or the registry said), and a registration or subscriber id from the registry or a lease log. Writers treat
# them as untrusted text.
TEXT_FIELDS = ("pcap", "evidence", "registration_id", "subscriber_id")


def output_fields(with_registry: bool) -> tuple[str, ...]:
    """JSONL/CSV columns: the registry columns only when a registry was checked, so output without one
    keeps its documented shape."""
    return FIELDS if with_registry else tuple(f for f in FIELDS if f not in REGISTRY_FIELDS)


def base_record(pcap: str, flow: Flow) -> dict:
    """Every record field that does not depend on labelling."""
    src_ip, dst_ip = address_text(flow.src), address_text(flow.dst)
    return {
        "pcap": pcap,
        "flow_id": flow_id(flow),
        "community_id": community_id(flow.proto, flow.src, flow.sport, flow.dst, flow.dport),
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
