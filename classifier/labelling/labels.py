"""Labelling: turn a flow's dissector verdict, or the model's judgement, into the record's label.

A confirmed signature decides. The trained model labels flows signatures leave undecided, and only when
its probability clears the family's threshold and the family is not one only a signature names;
otherwise the flow is `none` with confidence 0 (nothing vouches for it), and the model's best guess stays
in the evidence. `method` says which of the three. The flow's risks are listed whatever the label.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from vpnid.features.families import NONE, OPENCONNECT, SHADOWSOCKS
from vpnid.features.flows import Flow

if TYPE_CHECKING:
    from vpnid.classifier.labelling.model import Judgement

# Families only their signature names: the model learnt Shadowsocks from the lab's entropy and flow shape,
# which compressed, game and obfuscated messenger protocols share (issue #14), so its word alone is no label.
# OpenConnect's class is learnt from long TLS/DTLS flows: trained on the lab and half of the dev set, the
# model gave a held-out FIX trading session 0.85 for openconnect, above that run's threshold; the rules
# name every OpenConnect flow of the corpus at every cut, so the model's word adds risk, not recall.
SIGNATURE_ONLY = frozenset({SHADOWSOCKS, OPENCONNECT})
_NOT_MODEL_LABELS = SIGNATURE_ONLY | {NONE}  # families the model's judgement never labels a flow with


COLUMNS = ("label", "confidence", "method", "evidence", "verdict_packet", "risks")  # `label`'s fields, in order
_UNJUDGED = (NONE, 0.0, "none", [], None)  # a flow nothing vouches for and the model was not asked about
_RISKS = attrgetter("risks")


def label(flow: Flow, judgement: Judgement | None = None) -> dict:
    """The labelling fields of a flow record; `risks` are every dissector's, whatever the label."""
    return dict(zip(COLUMNS, (*_fields(flow, judgement), sorted(flow.risks))))


def label_columns(flows: Sequence[Flow], judgements: Sequence[Judgement | None]) -> dict[str, list]:
    """`label` of each flow (with its judgement), as one list per field: what a record batch is built from.
    Most flows of ordinary traffic carry no verdict and no risk, and their judgement names no family (one
    judgement object is shared by every flow too short to be asked): their fields are made once per
    judgement. Rows share those values, the empty evidence and risk lists too: a column is read, never changed."""
    made: dict[int, tuple] = {}
    rows = []
    for f, j in zip(flows, judgements):
        if f.verdict is not None or (j is not None and j.family not in _NOT_MODEL_LABELS):
            rows.append(_fields(f, j))  # depends on the flow
        elif j is None:
            rows.append(_UNJUDGED)
        else:
            row = made.get(id(j))
            if row is None:
                row = made[id(j)] = _fields(f, j)
            rows.append(row)
    cols = dict(zip(COLUMNS, map(list, zip(*rows)))) if rows else {k: [] for k in COLUMNS}
    empty: list[str] = []
    cols["risks"] = [sorted(r) if r else empty for r in map(_RISKS, flows)]
    return cols


def _fields(flow: Flow, judgement: Judgement | None) -> tuple:
    """(label, confidence, method, evidence, verdict_packet): the signature's verdict, else the model's
    judgement where it names a family a model may name, else none."""
    v = flow.verdict
    if v is not None:
        return v.family, v.confidence, "signature", list(v.evidence), v.packet
    if judgement is not None and judgement.family not in _NOT_MODEL_LABELS:
        return (judgement.family, round(judgement.probability, 4), "model", [judgement.evidence],
                flow.total_packets)
    evidence = [judgement.evidence] if judgement else []
    if judgement is not None and judgement.family in SIGNATURE_ONLY:
        evidence = [f"{judgement.evidence}; not taken: {judgement.family} is named by its signature only"]
    return NONE, 0.0, "none", evidence, None
