"""Labelling: turn a flow's dissector verdict into the record's label, confidence and evidence.

A confirmed signature decides. A trained model (a later stage) will label the flows signatures leave
undecided; until then they are `none`, with confidence 0 to say nothing vouches for that label.
"""

from __future__ import annotations

from features.flows import Flow

NONE = "none"
TUNNEL_FAMILIES = ("openvpn", "wireguard", "ipsec")


def label(flow: Flow) -> dict:
    """The labelling fields of a flow record."""
    v = flow.verdict
    if v is None:
        return {"label": NONE, "confidence": 0.0, "evidence": [], "verdict_packet": None}
    return {"label": v.family, "confidence": v.confidence, "evidence": list(v.evidence), "verdict_packet": v.packet}
