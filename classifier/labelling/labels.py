"""Labelling: turn a flow's dissector verdict, or the model's judgement, into the record's label.

A confirmed signature decides. The trained model labels flows signatures leave undecided, and only when
its probability clears the family's threshold and the family is not one only a signature names;
otherwise the flow is `none` with confidence 0 (nothing vouches for it), and the model's best guess stays
in the evidence. `method` says which of the three. The flow's risks are listed whatever the label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vpnid.features.families import NONE, SHADOWSOCKS
from vpnid.features.flows import Flow

if TYPE_CHECKING:
    from vpnid.classifier.labelling.model import Judgement

# Families only their signature names: the model learnt Shadowsocks from the lab's entropy and flow shape,
# which compressed, game and obfuscated messenger protocols share (issue #14), so its word alone is no label.
SIGNATURE_ONLY = frozenset({SHADOWSOCKS})


def label(flow: Flow, judgement: Judgement | None = None) -> dict:
    """The labelling fields of a flow record; `risks` are every dissector's, whatever the label."""
    risks = sorted(flow.risks)
    v = flow.verdict
    if v is not None:
        return {"label": v.family, "confidence": v.confidence, "method": "signature", "evidence": list(v.evidence),
                "verdict_packet": v.packet, "risks": risks}
    if judgement is not None and judgement.family not in (NONE, *SIGNATURE_ONLY):
        return {"label": judgement.family, "confidence": round(judgement.probability, 4), "method": "model",
                "evidence": [judgement.evidence], "verdict_packet": flow.total_packets, "risks": risks}
    evidence = [judgement.evidence] if judgement else []
    if judgement is not None and judgement.family in SIGNATURE_ONLY:
        evidence = [f"{judgement.evidence}; not taken: {judgement.family} is named by its signature only"]
    return {"label": NONE, "confidence": 0.0, "method": "none", "evidence": evidence, "verdict_packet": None,
            "risks": risks}
