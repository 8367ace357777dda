"""What the model says about a flow, and how class probabilities become that say.

Shared by the scikit-learn model (`model`) and its compiled twin (`compiled`), so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpnid.features.families import NONE

CALIBRATIONS = ("sigmoid", "none")  # sigmoid: CalibratedClassifierCV over grouped folds; none: the estimator's own
ESTIMATORS = ("hgb", "rf", "knn1")  # estimator kinds `vpnid train` compares (vpnid.classifier.labelling.model.base_estimator)
TOP_FEATURES = 3  # features named in a positive judgement's evidence


class ModelError(Exception):
    """A model file cannot be used; the message names the file and says why."""


@dataclass(frozen=True, slots=True)
class Judgement:
    """The model's say on one flow."""

    family: str  # a tunnel family, or none when no family clears its threshold
    probability: float  # p(family), or for none the best family's p
    best: str  # family with the highest p among non-none classes
    threshold: float  # threshold of `best`
    evidence: str


def unasked(packets: int, min_packets: int) -> Judgement:
    """The judgement of a flow too short for the model (it was neither trained on nor asked about)."""
    return Judgement(NONE, 0.0, NONE, 1.0, f"model not asked: {packets} packets < {min_packets}")


def judgements(proba: np.ndarray, X: np.ndarray, classes: list[str], thresholds: dict[str, float],
               columns: np.ndarray, packets_column: int, min_packets: int, names: list[str],
               ranked: np.ndarray) -> list[Judgement]:
    """Family (or none) per row from class probabilities: the family with the highest p among those
    clearing their threshold (ties: the later family name), with the features that weigh most."""
    fams = [f for f in classes if f != NONE]
    if not fams:
        return [unasked(int(p), min_packets) if p < min_packets
                else Judgement(NONE, 0.0, NONE, 1.0, "model knows no tunnel family") for p in X[:, packets_column]]
    p = proba[:, [classes.index(f) for f in fams]]
    thr = np.array([thresholds[f] for f in fams])
    last = len(fams) - 1
    best = last - np.argmax(p[:, ::-1], axis=1)  # ties go to the later name, as max() over (p, name)
    passing = p >= thr
    chosen = last - np.argmax(np.where(passing, p, -np.inf)[:, ::-1], axis=1)
    rows = np.arange(len(p))
    out = []
    for packets, ok, b, c, pb, pc, row in zip(X[:, packets_column].tolist(), passing.any(axis=1).tolist(),
                                              best.tolist(), chosen.tolist(), p[rows, best].tolist(),
                                              p[rows, chosen].tolist(), X[:, columns[ranked]].tolist()):
        if packets < min_packets:
            out.append(unasked(int(packets), min_packets))
        elif ok:
            fam = fams[c]
            feats = ", ".join(f"{names[k]}={v:.4g}" for k, v in zip(ranked.tolist(), row))
            ev = f"model p({fam})={pc:.3f} ≥ threshold {thresholds[fam]:.3f}; top features: {feats}"
            out.append(Judgement(fam, pc, fam, thresholds[fam], ev))
        else:
            fam = fams[b]
            out.append(Judgement(NONE, pb, fam, thresholds[fam], f"model p({fam})={pb:.3f} < threshold "
                                                                  f"{thresholds[fam]:.3f}"))
    return out
