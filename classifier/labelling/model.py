"""The trained flow classifier: a scikit-learn model (calibrated or not) plus per-family thresholds, and its file.

Signatures decide when they can; the model speaks only for flows they leave undecided, and only when its
probability for a family clears that family's threshold. Thresholds are chosen on out-of-fold
predictions (folds grouped by recording) to sit above every negative flow's probability, so on the
validation data the model adds no false positives; that makes them meaningful for the estimator's own
probabilities too, which is why an uncalibrated candidate is compared with the calibrated one.

The file is a skops archive (never pickle) holding a vpnid marker, the feature schema version, the
sha256 of the inner model archive and that archive. Loading checks all three before the inner archive
is opened with an explicit list of trusted types, so a file that is not a vpnid model, was altered, or
carries unexpected types is refused with a message that says which.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.inspection import permutation_importance
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vpnid.classifier.labelling.judgement import (
    CALIBRATIONS,
    ESTIMATORS,
    TOP_FEATURES,
    Judgement,
    ModelError,
    judgements,
    unasked,
)
from vpnid.features.families import NONE
from vpnid.features.vectors import N_FIRST, SCHEMA_VERSION, feature_names

MARKER = "vpnid.flow-model"
FILE_FORMAT = 1


def base_estimator(kind: str, seed: int) -> BaseEstimator:
    """Candidate estimators. Class weights balance the few tunnel flows per capture against the many
    short negative flows; 1-NN on scaled features is the baseline the literature says to beat. The
    boosted trees are kept shallow, with leaves of at least 50 rows and an L2 penalty: a flow's views
    (packets withheld) are near-copies, and deeper trees carved leaves for a few flows that then gave
    unseen negatives (a TURN-over-TCP flow) tunnel probabilities near 1."""
    if kind == "hgb":
        return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_depth=4, min_samples_leaf=50,
                                              l2_regularization=1.0, class_weight="balanced", random_state=seed)
    if kind == "rf":
        return RandomForestClassifier(n_estimators=100, min_samples_leaf=2, class_weight="balanced",
                                      random_state=seed, n_jobs=1)
    if kind == "knn1":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=1))
    raise ValueError(f"unknown estimator {kind!r} (choose from {', '.join(ESTIMATORS)})")


class FlowModel(ClassifierMixin, BaseEstimator):
    """Classifier (calibrated or not) over `vpnid.features.vectors` columns with per-family zero-FP thresholds.

    Takes vectors in schema order but learns from every column except the `sig_*` dissector states: it
    is only asked about flows no signature confirmed, so "confirmed, hence a tunnel" would be a shortcut
    it could never use, and learning it would crowd out the traffic shape it needs. Training on
    confirmed flows too is what lets the shape of a tunnel be learned from every recording of one.

    Fitted attributes: `left_out_` (families with fewer than `min_family_flows` trainable flows, never
    named by the model), `classes_`, `estimator_` (calibrated or not, as `calibration` says; fitted on all
    data), `thresholds_`
    (family -> probability), `oof_proba_` (out-of-fold probabilities the thresholds came from) and
    `oof_y_` (their true families),
    `columns_` (schema positions used), `importances_` (permutation importance per used column),
    `schema_version_`, `feature_names_` (the used columns' names).
    """

    def __init__(self, estimator: str = "hgb", n_first: int = N_FIRST, calibration: str = "sigmoid",
                 n_splits: int = 5, margin: float = 0.05, min_threshold: float = 0.8, min_packets: int = 20,
                 min_family_flows: int = 10, seed: int = 0) -> None:
        self.estimator = estimator
        self.n_first = n_first
        self.calibration = calibration
        self.n_splits = n_splits
        self.margin = margin
        self.min_threshold = min_threshold
        self.min_packets = min_packets
        self.min_family_flows = min_family_flows
        self.seed = seed

    def _calibrated(self, y: np.ndarray, groups: np.ndarray) -> BaseEstimator:
        """The estimator as it is (calibration "none"), or calibrated on predictions for captures held out
        of each base fit (grouped folds). Folds whose training side lacks a family are skipped; with none
        left (tiny data) the base model's own probabilities are used."""
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r} (choose from {', '.join(CALIBRATIONS)})")
        if self.calibration == "none":
            return base_estimator(self.estimator, self.seed)
        classes = set(y.tolist())
        folds = GroupKFold(n_splits=min(3, len(np.unique(groups))))
        splits = [(tr, te) for tr, te in folds.split(y, y, groups) if set(y[tr].tolist()) == classes]
        base = base_estimator(self.estimator, self.seed)
        return CalibratedClassifierCV(base, method=self.calibration, cv=splits) if splits else base

    @threadpool_limits.wrap(limits=1)  # OpenMP threads on small data on a shared machine: 50x slower
    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> FlowModel:
        """Fit on the rows with at least `min_packets` packets (the only ones it will judge); thresholds
        come from predictions on captures held out of each fold."""
        X, y, groups = np.asarray(X, np.float64), np.asarray(y), np.asarray(groups)
        names = feature_names(self.n_first)
        if X.shape[1] != len(names):
            raise ValueError(f"X has {X.shape[1]} columns, schema v{SCHEMA_VERSION} has {len(names)}")
        self.packets_column_ = names.index("packets")
        keep = X[:, self.packets_column_] >= self.min_packets
        # A family with a handful of long flows (PPTP's and L2TP's control connections are short) cannot be
        # learned, and class weighting would blow those few rows up into a class that takes other tunnels'
        # flows: it is left to its signatures.
        self.left_out_ = [str(f) for f in np.unique(y)
                          if f != NONE and np.count_nonzero(keep & (y == f)) < self.min_family_flows]
        keep &= ~np.isin(y, self.left_out_)
        X, y, groups = X[keep], y[keep], groups[keep]
        self.n_features_in_ = len(names)
        self.columns_ = np.array([i for i, n in enumerate(names) if not n.startswith("sig_")])
        self.feature_names_ = [names[i] for i in self.columns_]
        self.schema_version_ = SCHEMA_VERSION
        self.classes_ = np.unique(y)
        X = X[:, self.columns_]
        self.oof_y_ = y
        self.oof_proba_ = self._out_of_fold(X, y, groups)
        self.thresholds_ = self._thresholds(self.oof_proba_, y)
        self.estimator_ = self._calibrated(y, groups).fit(X, y)
        sample = np.random.default_rng(self.seed).permutation(len(y))[:500]  # bounded cost on big sets
        imp = permutation_importance(self.estimator_, X[sample], y[sample], n_repeats=2, random_state=self.seed,
                                     scoring="balanced_accuracy")
        self.importances_ = imp.importances_mean
        return self

    def _out_of_fold(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
        out = np.zeros((len(y), len(self.classes_)))
        folds = GroupKFold(n_splits=min(self.n_splits, len(np.unique(groups))))
        for train, test in folds.split(X, y, groups):
            if len(np.unique(y[train])) < 2:
                continue  # nothing to learn; these rows keep probability 0 for every family
            m = self._calibrated(y[train], groups[train]).fit(X[train], y[train])
            cols = np.searchsorted(self.classes_, m.classes_)
            out[np.ix_(test, cols)] = m.predict_proba(X[test])
        return out

    def _thresholds(self, proba: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Per family: just above the highest out-of-fold p(family) of any negative flow (plus a
        margin), never below `min_threshold`; above 1 the model never names that family."""
        neg = y == NONE
        out = {}
        for j, fam in enumerate(self.classes_.tolist()):
            if fam == NONE:
                continue
            worst = float(proba[neg, j].max()) if neg.any() else 0.0
            out[fam] = round(max(self.min_threshold, worst + self.margin), 6)
        return out

    @threadpool_limits.wrap(limits=1)
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (columns as `classes_`) for vectors in schema order."""
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} feature columns (schema v{self.schema_version_}), "
                             f"got {X.shape[-1]}")
        return self.estimator_.predict_proba(X[:, self.columns_])

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.array([j.family for j in self.judge(X)])

    def unasked(self, packets: int) -> Judgement:
        """The judgement of a flow too short for the model (it was neither trained on nor asked about)."""
        return unasked(packets, self.min_packets)

    def judge(self, X: np.ndarray, top: int = TOP_FEATURES) -> list[Judgement]:
        """Family (or none) per row, with the probability, threshold and the features that weigh most."""
        X = np.asarray(X, np.float64)
        if not len(X):
            return []
        return judgements(self.predict_proba(X), X, self.classes_.tolist(), self.thresholds_, self.columns_,
                          self.packets_column_, self.min_packets, self.feature_names_,
                          np.argsort(-self.importances_, kind="stable")[:top])


# ---------------------------------------------------------------------------------------------- file
# Types a vpnid model file may hold beyond those skops trusts by default (scikit-learn estimators, numpy);
# anything else is refused. Found with skops.io.get_untrusted_types on models of every ESTIMATORS kind.
TRUSTED_TYPES = [
    "vpnid.classifier.labelling.model.FlowModel",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]


def save(model: FlowModel, path: str | Path) -> str:
    """Write the model file; returns its sha256 (for the model card)."""
    import skops.io as sio

    inner = sio.dumps(model, compression=zipfile.ZIP_DEFLATED)  # ~4x smaller: trees compress well
    sio.dump({"marker": MARKER, "format": FILE_FORMAT, "schema_version": model.schema_version_,
              "sha256": hashlib.sha256(inner).hexdigest(), "model": inner}, path)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# What one skops archive of a model file may unpack to, checked on the sizes its zip directory declares
# (Python's zipfile never inflates a member past its declared size) before anything is unpacked. The
# shipped model's file is 2.8 MB and its inner archive ~12 MB unpacked: the bounds leave room for far
# bigger models and none for a zip bomb.
MAX_UNPACKED = 256 * 2**20
MAX_MEMBERS = 100_000
# What a fitted FlowModel has; a model file without them (an unfitted estimator) is refused at load.
FITTED = ("classes_", "estimator_", "thresholds_", "columns_", "importances_", "feature_names_", "packets_column_",
          "n_features_in_", "schema_version_")


def _check_archive(data: bytes, path: Path, what: str) -> None:
    """ModelError if the archive would unpack to more than MAX_UNPACKED bytes or MAX_MEMBERS files."""
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError) as e:
        raise ModelError(f"{path}: not a vpnid model or damaged ({type(e).__name__}: {e})") from None
    size = sum(m.file_size for m in members)
    if size > MAX_UNPACKED or len(members) > MAX_MEMBERS:
        raise ModelError(f"{path}: {what} would unpack to {size / 2**20:,.0f} MB in {len(members)} files (at most "
                         f"{MAX_UNPACKED // 2**20} MB and {MAX_MEMBERS} files); refused")


def _check_usable(model: FlowModel, path: Path) -> None:
    """ModelError unless the model is fitted and judges a row of the schema it says it was trained on."""
    missing = [a for a in FITTED if not hasattr(model, a)]
    if missing:
        raise ModelError(f"{path}: model is not fitted (it has no {', '.join(missing)})")
    try:
        model.judge(np.zeros((1, len(feature_names(model.n_first)))))
    except Exception as e:  # noqa: BLE001 - whatever is odd in it, the user needs one line
        raise ModelError(f"{path}: model cannot judge flows ({type(e).__name__}: {e})") from None


def load(path: str | Path, data: bytes | None = None) -> FlowModel:
    """Read a vpnid model file, refusing anything that is not one, was altered, does not match the
    features this vpnid computes, would unpack to too much, or cannot judge flows. `data`: the file's
    bytes when the caller has read them already (so what is checked is what the caller hashed)."""
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    path = Path(path)
    try:
        data = path.read_bytes() if data is None else data
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model file") from None
    except OSError as e:
        raise ModelError(f"{path}: not a vpnid model or damaged ({type(e).__name__}: {e})") from None
    _check_archive(data, path, "model file")
    try:
        outer = sio.load(io.BytesIO(data), trusted=[])
    except UntrustedTypesFoundException:
        raise ModelError(f"{path}: not a vpnid model (unexpected content)") from None
    except Exception as e:  # noqa: BLE001 - zip, JSON and CRC errors all mean the same to the user
        raise ModelError(f"{path}: not a vpnid model or damaged ({type(e).__name__}: {e})") from None
    if not isinstance(outer, dict) or outer.get("marker") != MARKER or not isinstance(outer.get("model"), bytes):
        raise ModelError(f"{path}: not a vpnid model (no vpnid marker)")
    if outer.get("format") != FILE_FORMAT:
        raise ModelError(f"{path}: vpnid model file format {outer.get('format')}, this vpnid reads {FILE_FORMAT}")
    if hashlib.sha256(outer["model"]).hexdigest() != outer.get("sha256"):
        raise ModelError(f"{path}: model file has been altered (sha256 of the model does not match)")
    if outer.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(f"{path}: model was trained on feature schema v{outer.get('schema_version')}, "
                         f"this vpnid computes v{SCHEMA_VERSION}; retrain it with 'vpnid train'")
    _check_archive(outer["model"], path, "inner model archive")
    try:
        model = sio.loads(outer["model"], trusted=TRUSTED_TYPES)
    except UntrustedTypesFoundException as e:
        raise ModelError(f"{path}: model holds types vpnid does not trust ({e})") from None
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: model cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(model, FlowModel):
        raise ModelError(f"{path}: not a vpnid model (holds {type(model).__name__})")
    _check_usable(model, path)
    return model
