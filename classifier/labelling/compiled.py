"""The flow model's prediction path without scikit-learn: its trees and calibrators as plain arrays.

A classifying process pays ~0.9 s to import scikit-learn and ~1 s for skops to audit the 1,800 trees
of the shipped model, and scikit-learn then predicts tree by tree with a Python call per tree. Here a
model that passed that audit once is kept as arrays in a per-user cache file (NumPy `.npz`, read with
`allow_pickle=False`, so the cache can hold data but never code), named by the sha256 of the model file:
an altered or different file has another name, misses the cache and goes through the full audit (and is
refused as before). An entry also holds the sha256 of its own arrays, and one that fails it or whose
indices leave their arrays is not used (`loading` says what this does and does not protect against).
Prediction walks every tree for every row in one compiled loop and then applies the calibration with
the same NumPy operations scikit-learn uses, so probabilities are bit-identical; a model is only
compiled after that was checked on sample rows, else the scikit-learn model is used.

Supported: `HistGradientBoostingClassifier` with three or more classes, inside a sigmoid
`CalibratedClassifierCV` or alone (its softmax, as scikit-learn computes it); any other estimator kind
loads and predicts through scikit-learn.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from numba import njit

from vpnid.classifier.labelling.judgement import TOP_FEATURES, Judgement, judgements, unasked

if TYPE_CHECKING:
    from vpnid.classifier.labelling.model import FlowModel

CACHE_MARKER = "vpnid.compiled-model"
CACHE_FORMAT = 3  # 2: entries carry the sha256 of their own arrays; 3: and say whether they are calibrated


# ---------------------------------------------------------------------------------------------- kernels
@njit(cache=True, nogil=True)
def _raw_scores(X: np.ndarray, feature: np.ndarray, threshold: np.ndarray, missing_left: np.ndarray,
                left: np.ndarray, right: np.ndarray, value: np.ndarray, roots: np.ndarray,
                baseline: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """Per calibrated member, row and class: baseline plus the leaf values of its trees, added in
    iteration order (scikit-learn's order, so the float sums are the same). Leaves have left == -1."""
    n_members, n_iter, n_k = roots.shape
    out = np.empty((n_members, X.shape[0], n_k))
    for m in range(n_members):
        for i in range(X.shape[0]):
            for k in range(n_k):
                out[m, i, k] = 0.0 + baseline[m, k]
        # Tree by tree over all rows (one tree's nodes stay in cache); each row's sum still adds its
        # trees in iteration order.
        for it in range(n_iter):
            for k in range(n_k):
                root = roots[m, it, k]
                for i in range(X.shape[0]):
                    node = root
                    while left[node] >= 0:
                        v = X[i, feature[node]]
                        if math.isnan(v):
                            node = left[node] if missing_left[node] else right[node]
                        elif v <= threshold[node]:
                            node = left[node]
                        else:
                            node = right[node]
                    out[m, i, k] += value[node]
    return out


@njit(cache=True, nogil=True)
def _expit(x: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """scipy.special.expit with the C library's exp, as scipy computes it (NumPy's exp differs in the
    last bit for ~2% of inputs)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = 1.0 / (1.0 + math.exp(-x[i]))
    return out


# ---------------------------------------------------------------------------------------------- model
@dataclass(frozen=True, slots=True, eq=False)
class CompiledModel:
    """A FlowModel's prediction (same probabilities, same judgements) as arrays; see the module doc."""

    classes: list[str]
    thresholds: dict[str, float]
    columns: np.ndarray  # schema positions the trees read, in their feature order
    packets_column: int
    min_packets: int
    calibrated: bool  # sigmoid-calibrated members; else one uncalibrated estimator (softmax of its scores)
    n_first: int
    n_features_in: int
    feature_names: list[str]  # names of `columns`
    ranked: np.ndarray  # positions in `columns` of the most important features, most important first
    # Trees of every calibrated member, nodes concatenated; roots[member, iteration, class] is a node index.
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: np.ndarray  # (member, class)
    cal_a: np.ndarray  # sigmoid calibration per (member, class of the member's estimator)
    cal_b: np.ndarray
    cal_class: np.ndarray  # position in `classes` of each calibrator's class

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (columns as `classes`) for vectors in schema order."""
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in:
            raise ValueError(f"expected {self.n_features_in} feature columns, got {X.shape[-1]}")
        used = np.ascontiguousarray(X[:, self.columns])
        raw = _raw_scores(used, self.feature, self.threshold, self.missing_left, self.left, self.right,
                          self.value, self.roots, self.baseline)
        n_classes = len(self.classes)
        if not self.calibrated:  # sklearn.utils.extmath.softmax, as HistGradientBoostingClassifier calls it
            proba = raw[0]
            proba -= np.max(proba, axis=1).reshape((-1, 1))
            np.exp(proba, out=proba)
            proba /= np.sum(proba, axis=1).reshape((-1, 1))
            return proba
        mean = np.zeros((len(X), n_classes))
        for m in range(len(raw)):  # sklearn.calibration._CalibratedClassifier.predict_proba, step by step
            proba = np.zeros((len(X), n_classes))
            for j in range(raw.shape[2]):
                proba[:, self.cal_class[m, j]] = _expit(-(self.cal_a[m, j] * raw[m, :, j] + self.cal_b[m, j]))
            denominator = np.sum(proba, axis=1)[:, np.newaxis]
            proba = np.divide(proba, denominator, out=np.full_like(proba, 1 / n_classes), where=denominator != 0)
            proba[(1.0 < proba) & (proba <= 1.0 + 1e-5)] = 1.0
            mean += proba
        mean /= len(raw)
        return mean

    def unasked(self, packets: int) -> Judgement:
        return unasked(packets, self.min_packets)

    def judge(self, X: np.ndarray) -> list[Judgement]:
        """Family (or none) per row, as FlowModel.judge."""
        X = np.asarray(X, np.float64)
        if not len(X):
            return []
        return judgements(self.predict_proba(X), X, self.classes, self.thresholds, self.columns,
                          self.packets_column, self.min_packets, self.feature_names, self.ranked)

    # ------------------------------------------------------------------ cache file
    _ARRAYS = ("columns", "ranked", "feature", "threshold", "missing_left", "left", "right", "value", "roots",
               "baseline", "cal_a", "cal_b", "cal_class")

    def save(self, file: IO[bytes], sha256: str) -> None:
        fams = [f for f in self.classes if f in self.thresholds]
        arrays = dict(marker=np.str_(CACHE_MARKER), format=np.int64(CACHE_FORMAT), sha256=np.str_(sha256),
                      classes=np.array(self.classes), families=np.array(fams),
                      family_thresholds=np.array([self.thresholds[f] for f in fams]),
                      ints=np.array([self.packets_column, self.min_packets, self.n_first, self.n_features_in,
                                     int(self.calibrated)]),
                      feature_names=np.array(self.feature_names), **{k: getattr(self, k) for k in self._ARRAYS})
        np.savez(file, arrays_sha256=np.str_(_digest(arrays)), **arrays)

    @classmethod
    def read(cls, path: Path, sha256: str) -> CompiledModel | None:
        """The cached model compiled from the file with this sha256, or None (absent, foreign, stale,
        edited: its arrays no longer match their sha256, or their indices leave the arrays)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if (str(arrays.pop("arrays_sha256")) != _digest(arrays) or str(arrays["marker"]) != CACHE_MARKER
                    or int(arrays["format"]) != CACHE_FORMAT or str(arrays["sha256"]) != sha256):
                return None
            packets_column, min_packets, n_first, n_features_in, calibrated = arrays["ints"].tolist()
            compiled = cls(classes=arrays["classes"].tolist(),
                           thresholds=dict(zip(arrays["families"].tolist(), arrays["family_thresholds"].tolist())),
                           packets_column=packets_column, min_packets=min_packets, calibrated=bool(calibrated),
                           n_first=n_first,
                           n_features_in=n_features_in, feature_names=arrays["feature_names"].tolist(),
                           **{k: arrays[k] for k in cls._ARRAYS})
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile):  # absent, torn, foreign
            return None
        return compiled if compiled._in_bounds() else None

    def _in_bounds(self) -> bool:
        """Every index the compiled loop follows stays inside its array and every branch leads to a later
        node (so each walk ends): the loop itself checks nothing."""
        n, idx = len(self.feature), np.arange(len(self.feature))
        inner = self.left >= 0
        shapes = {len(a) for a in (self.threshold, self.missing_left, self.left, self.right, self.value)} == {n}
        return bool(
            shapes and self.roots.ndim == 3 and self.roots.shape[0] == len(self.baseline) == len(self.cal_a)
            and self.baseline.shape[1:] == self.cal_a.shape[1:] == self.cal_b.shape[1:] == self.cal_class.shape[1:]
            == self.roots.shape[2:] and self.roots.size and (self.roots >= 0).all() and (self.roots < n).all()
            and ((self.left[inner] > idx[inner]) & (self.right[inner] > idx[inner]) & (self.right[inner] < n)).all()
            and (self.left < n).all() and (self.feature[inner] >= 0).all()
            and (self.feature[inner] < len(self.columns)).all()
            and (self.columns >= 0).all() and (self.columns < self.n_features_in).all()
            and ((self.cal_class >= 0) & (self.cal_class < len(self.classes))).all()
            and (self.calibrated or len(self.roots) == 1)
            and 0 <= self.packets_column < self.n_features_in and len(self.feature_names) == len(self.columns)
            and ((self.ranked >= 0) & (self.ranked < len(self.columns))).all())


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a cache entry's arrays."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}:".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def compile_model(model: FlowModel) -> CompiledModel | None:
    """The arrays of a fitted FlowModel, or None when its estimator is of a kind not compiled here or
    the compiled probabilities differ from scikit-learn's on sample rows."""
    from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
    from sklearn.ensemble import HistGradientBoostingClassifier

    est = model.estimator_
    calibrated = isinstance(est, CalibratedClassifierCV)
    if calibrated and est.method == "sigmoid":
        members = [(m.estimator, m.calibrators) for m in est.calibrated_classifiers_]
    elif isinstance(est, HistGradientBoostingClassifier):  # calibration "none": one member, no calibrators
        members = [(est, [None] * est.n_trees_per_iteration_)]
    else:
        return None
    classes = est.classes_.tolist()
    nodes, roots, baseline, cal_a, cal_b, cal_class = [], [], [], [], [], []
    offset = 0
    for hgb, calibrators in members:
        if (not isinstance(hgb, HistGradientBoostingClassifier) or hgb.is_categorical_ is not None
                or (calibrated and not all(isinstance(c, _SigmoidCalibration) for c in calibrators))
                or len(calibrators) != hgb.n_trees_per_iteration_ or len(classes) < 3):
            return None
        member_roots = []
        for trees in hgb._predictors:
            row = []
            for tree in trees:
                row.append(offset)
                nodes.append((tree.nodes, offset))
                offset += len(tree.nodes)
            member_roots.append(row)
        roots.append(member_roots)
        baseline.append(np.asarray(hgb._baseline_prediction, np.float64).ravel())
        cal_a.append([c.a_ if calibrated else 0.0 for c in calibrators])
        cal_b.append([c.b_ if calibrated else 0.0 for c in calibrators])
        cal_class.append([classes.index(c) for c in hgb.classes_.tolist()])
    if len({np.shape(r) for r in roots}) != 1:
        return None
    flat = np.concatenate([n for n, _ in nodes])
    shift = np.concatenate([np.full(len(n), off, np.int64) for n, off in nodes])
    leaf = flat["is_leaf"].astype(bool)
    compiled = CompiledModel(
        classes=classes, thresholds=dict(model.thresholds_), columns=np.asarray(model.columns_, np.int64),
        packets_column=int(model.packets_column_), min_packets=int(model.min_packets), calibrated=calibrated,
        n_first=int(model.n_first),
        n_features_in=int(model.n_features_in_), feature_names=list(model.feature_names_),
        ranked=np.argsort(-model.importances_, kind="stable")[:TOP_FEATURES].astype(np.int64),
        feature=flat["feature_idx"].astype(np.int64), threshold=flat["num_threshold"].astype(np.float64),
        missing_left=flat["missing_go_to_left"].astype(bool),
        left=np.where(leaf, -1, flat["left"].astype(np.int64) + shift),
        right=np.where(leaf, -1, flat["right"].astype(np.int64) + shift),
        value=flat["value"].astype(np.float64), roots=np.array(roots, np.int64), baseline=np.array(baseline),
        cal_a=np.array(cal_a, np.float64), cal_b=np.array(cal_b, np.float64), cal_class=np.array(cal_class, np.int64))
    X = _probe_rows(compiled)
    if compiled.predict_proba(X).tobytes() != model.predict_proba(X).tobytes():
        return None
    return compiled


def _probe_rows(m: CompiledModel, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Rows whose used features sit on, just below and just above the trees' split thresholds (and some
    missing), so the check takes both sides of most splits."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, m.n_features_in))
    inner = m.left >= 0
    for j, col in enumerate(m.columns.tolist()):
        cuts = m.threshold[inner & (m.feature == j)]
        if not len(cuts):
            continue
        pick = rng.choice(cuts, n) * rng.choice([1 - 1e-9, 1.0, 1 + 1e-9], n) + rng.choice([-1e-12, 0.0, 1e-12], n)
        X[:, col] = np.where(rng.random(n) < 0.02, np.nan, pick)
    return X
