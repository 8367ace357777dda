"""Training data from labelled captures, estimator comparison, and the model card (`vpnid train`).

Every flow of every labelled capture is a row, signature-confirmed or not (the model ignores the
dissector-state columns; see FlowModel). Each capture is read several times with each flow's first
0, 10, 25, 50... packets withheld, so the model sees tunnels the way a late-starting capture does. Folds are
grouped by recording: captures that begin with the same frame (time and bytes) are one recording, so a
committed corpus capture (a trimmed copy) never validates the lab run it was cut from, while two lab runs
(`vpnid lab --seed K`) are two recordings. Identical (features, family) rows are kept once, and every random
choice is seeded: the same inputs give the same model.
"""

from __future__ import annotations

import hashlib
import io
import platform
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from vpnid.classifier.labelling.evaluate import OTHER_VPN, LabelRow, Report, print_report, read_labels, score, trusted
from vpnid.classifier.labelling.judgement import CALIBRATIONS, ESTIMATORS
from vpnid.classifier.labelling.labels import SIGNATURE_ONLY
from vpnid.classifier.labelling.model import FlowModel
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.capture import read_chunks
from vpnid.features.families import NONE
from vpnid.features.packets import CaptureError
from vpnid.features.vectors import INDEX_COLUMNS, N_FIRST, SCHEMA_VERSION, VIEWS, extract, feature_names

UNUSABLE = ("unknown", "")


@dataclass
class Dataset:
    frame: pd.DataFrame  # index columns, view, source (manifest), features, family, group
    captures: list[tuple[str, str, str]]  # (path, family summary, sha256)
    n_first: int

    @property
    def X(self) -> np.ndarray:
        return self.frame[feature_names(self.n_first)].to_numpy(np.float64)

    @property
    def y(self) -> np.ndarray:
        return self.frame["family"].to_numpy(str)

    @property
    def groups(self) -> np.ndarray:
        return self.frame["group"].to_numpy(str)


def _truth(rows: list[LabelRow], trust: str):
    """Family of a flow by its transport and endpoints: a row naming it, else its capture's `*` row. A row
    whose confidence does not start with `trust` (a third party's port guess) or naming a family the model
    does not know (`other_vpn`) leaves its flow out rather than teach it."""
    def usable(r: LabelRow) -> str:
        return r.family if trusted(r, trust) and r.family != OTHER_VPN else UNUSABLE[0]

    named = {(r.transport, r.ends): usable(r) for r in rows if r.ends}
    whole = next((usable(r) for r in rows if not r.ends), None)

    def family(transport: str, a: tuple[str, int], b: tuple[str, int]) -> str | None:
        return named.get((transport, frozenset((a, b))), whole)

    return family


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recording(path: Path) -> str:
    """A recording's identity: a digest of its capture's first frame (time and bytes). Trimming keeps a
    capture's head, so a trimmed copy and its source share it; two recordings do not."""
    try:
        first = next(read_chunks(path, chunk_frames=1, warn=lambda _: None), None)
    except CaptureError:
        first = None
    if first is None or not len(first):
        return f"no frames:{path}"  # nothing to share with another capture
    frame = first.data[int(first.offset[0]):int(first.offset[0]) + int(first.caplen[0])]
    return hashlib.sha256(int(first.ts_ns[0]).to_bytes(8, "little", signed=True) + frame.tobytes()).hexdigest()[:16]


def build_dataset(manifests: list[str | Path], views: tuple[int, ...] = VIEWS, n_first: int = N_FIRST,
                  trust: str = "DPI") -> Dataset:
    by_capture: dict[Path, list[LabelRow]] = {}
    source: dict[Path, str] = {}  # the manifest that first names a capture
    for m in manifests:
        rows, _problems = read_labels(m)
        for r in rows:
            by_capture.setdefault(r.path, []).append(r)
            source.setdefault(r.path, str(m))
    frames, captures = [], []
    for path, rows in by_capture.items():
        family = _truth(rows, trust)
        for view in views:
            df = extract([path], n_first=n_first, drop_first=view)
            df["family"] = [family(t, (a, ap), (b, bp)) for t, a, ap, b, bp in
                            zip(df.transport, df.src_ip, df.src_port, df.dst_ip, df.dst_port)]
            df.insert(len(INDEX_COLUMNS), "view", view)
            df.insert(len(INDEX_COLUMNS) + 1, "source", source[path])
            frames.append(df)
        captures.append((str(path), ",".join(sorted({r.family for r in rows})), sha256(path)))
    data = pd.concat(frames, ignore_index=True)
    data = data[data.family.notna() & ~data.family.isin(UNUSABLE)]
    groups = {p: recording(Path(p)) for p in data.pcap.unique()}
    data["group"] = data.pcap.map(groups)
    data = data.drop_duplicates(subset=[*feature_names(n_first), "family"]).reset_index(drop=True)
    return Dataset(data, captures, n_first)


def oof_predictions(model: FlowModel) -> np.ndarray:
    """Labels the fitted model's thresholds give its own out-of-fold probabilities."""
    classes = model.classes_.tolist()
    out = []
    for p in model.oof_proba_:
        passing = [(p[classes.index(f)], f) for f, t in model.thresholds_.items() if p[classes.index(f)] >= t]
        out.append(max(passing)[1] if passing else NONE)
    return np.array(out)


def per_class(y: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
    rows = []
    for fam in sorted(set(y) | set(pred)):
        tp = int(((pred == fam) & (y == fam)).sum())
        rows.append({"family": fam, "flows": int((y == fam).sum()), "predicted": int((pred == fam).sum()),
                     "recall": tp / max(1, int((y == fam).sum())), "precision": tp / max(1, int((pred == fam).sum()))})
    return pd.DataFrame(rows)


def compare(ds: Dataset, kinds: tuple[str, ...] = ESTIMATORS, calibrations: tuple[str, ...] = CALIBRATIONS,
            seed: int = 0) -> dict[str, FlowModel]:
    """Fit every candidate, keyed "kind/calibration" (each with its own grouped out-of-fold thresholds)."""
    return {f"{k}/{c}": FlowModel(estimator=k, calibration=c, n_first=ds.n_first, seed=seed).fit(ds.X, ds.y, ds.groups)
            for k in kinds for c in calibrations}


def by_configuration(ds: Dataset, model: FlowModel) -> pd.DataFrame:
    """Out-of-fold metrics of the chosen estimator when folds hold out every recording of a configuration
    (captures grouped by name, as the lab names them by variant): the harder estimate, for a
    configuration the lab never recorded."""
    names = ds.frame.pcap.map(lambda p: Path(p).name).to_numpy(str)
    held_out = FlowModel(estimator=model.estimator, calibration=model.calibration, n_first=ds.n_first,
                         seed=model.seed).fit(ds.X, ds.y, names)
    return per_class(held_out.oof_y_, oof_predictions(held_out))


def judged_rows(ds: Dataset, model: FlowModel) -> np.ndarray:
    """Mask of the dataset rows the model was fitted on (and has out-of-fold predictions for)."""
    return (ds.X[:, model.packets_column_] >= model.min_packets) & ~np.isin(ds.y, model.left_out_)


def by_source(ds: Dataset, model: FlowModel) -> pd.DataFrame:
    """The out-of-fold metrics per training source (manifest): lab recordings and third-party captures
    generalise differently, and one table over both would hide which is which."""
    sources = ds.frame.source.to_numpy(str)[judged_rows(ds, model)]
    pred = oof_predictions(model)
    return pd.concat([per_class(model.oof_y_[sources == src], pred[sources == src]).assign(source=src)
                      for src in dict.fromkeys(sources)], ignore_index=True)[
        ["source", "family", "flows", "predicted", "recall", "precision"]]


def tunnel_recall(model: FlowModel) -> float:
    """Mean out-of-fold recall over tunnel families at zero-FP thresholds: the selection score."""
    pc = per_class(model.oof_y_, oof_predictions(model))
    fams = pc[(pc.family != NONE) & (pc.flows > 0)]
    return float(fams.recall.mean()) if len(fams) else 0.0


def choose(models: dict[str, FlowModel]) -> str:
    """Best selection score; ties go to the earlier (preferred) estimator in ESTIMATORS order, then to the
    earlier calibration in CALIBRATIONS order."""
    def rank(key: str) -> tuple[float, int, int]:
        m = models[key]
        return round(tunnel_recall(m), 6), -ESTIMATORS.index(m.estimator), -CALIBRATIONS.index(m.calibration)
    return max(models, key=rank)


def evaluate_with(model: FlowModel | None, labels: str | Path, drop_first: int = 0) -> Report:
    """Exactly what `vpnid eval` computes for these options."""
    rows, _ = read_labels(labels)
    opts = Options(drop_first=drop_first, model=model)
    return score(rows, lambda p: classify_capture(str(p), opts))


def report_text(report: Report, rows: bool = False) -> str:
    """The report as `vpnid eval` prints it; without `rows`, the per-row listings are left out (every
    count and rate stays, verbatim)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=110, color_system=None, highlight=False, soft_wrap=True)
    print_report(report, console)
    text = console.file.getvalue()
    return text if rows else "".join(ln for ln in text.splitlines(True) if not ln.startswith("  line "))


def _md(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (floats to 3 decimals)."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = [list(map(str, df.columns)), ["---"] * len(df.columns)]
    rows += [[cell(v) for v in r] for r in df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _versions() -> dict[str, str]:
    import pyarrow
    import sklearn
    import skops

    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__, "skops": skops.__version__, "pyarrow": pyarrow.__version__}


def model_card(name: str, model: FlowModel, ds: Dataset, models: dict[str, FlowModel], model_sha: str,
               evals: list[tuple[str, int, str]], views: tuple[int, ...], unseen: pd.DataFrame) -> str:
    """Markdown card: what the model was trained on, how it was chosen and how it scores."""
    comp = pd.DataFrame([{"estimator": m.estimator, "calibration": m.calibration,
                          "tunnel recall (out-of-fold, zero-FP thresholds)": tunnel_recall(m),
                          **{f"threshold {f}": t for f, t in m.thresholds_.items()}} for k, m in models.items()])
    counts = ds.frame.groupby("family").agg(flows=("family", "size"), captures=("pcap", "nunique"),
                                            recordings=("group", "nunique")).reset_index()
    imp = pd.DataFrame({"feature": model.feature_names_, "importance": model.importances_.round(4)})
    imp = imp.sort_values("importance", ascending=False, kind="stable").head(15)
    data = (ds.frame.groupby("source", sort=False)
            .agg(captures=("pcap", "nunique"), recordings=("group", "nunique"), flows=("family", "size"))
            .reset_index())
    data["sha256"] = [sha256(Path(src)) for src in data.source]
    lines = [
        f"# Model card: {name}",
        "",
        f"- Trained: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Model file sha256: `{model_sha}`",
        f"- Feature schema version: {SCHEMA_VERSION} (features/vectors.py), first-packets length N = {model.n_first}",
        f"- Estimator: `{model.estimator}`, "
        + ("uncalibrated (its own probabilities)" if model.calibration == "none" else
           f"{model.calibration} calibration (CalibratedClassifierCV, folds grouped by recording)")
        + f", seed {model.seed}",
        "- Per-family thresholds: " + ", ".join(f"{f} {t:.3f}" for f, t in model.thresholds_.items()),
        "- Libraries: " + ", ".join(f"{k} {v}" for k, v in _versions().items()),
        "",
        "## What it does",
        "",
        "Labels flows that no signature confirmed. A family is named only when its probability ("
        + ("the estimator's own, uncalibrated" if model.calibration == "none" else f"{model.calibration}-calibrated")
        + ")",
        "clears the family's threshold, set just above (margin "
        f"{model.margin}) the highest out-of-fold probability any negative flow got, so on the validation",
        f"folds the model adds no false positives, and never below {model.min_threshold} (a policy: speak only",
        "when quite sure). Features hold no addresses, ports, TTLs or absolute times. The model learns "
        + ", ".join(sorted(SIGNATURE_ONLY)),
        "too, so that no other family takes those flows, but its word alone never names "
        + ("it" if len(SIGNATURE_ONLY) == 1 else "them"),
        "(`labels.SIGNATURE_ONLY` says why for each).",
        f"Flows with fewer than {model.min_packets} packets are never labelled by the model (and not trained on).",
        f"Families with fewer than {model.min_family_flows} such flows are left to their signatures: "
        + (", ".join(model.left_out_) or "none this time") + ".",
        "",
        "## Training data",
        "",
        f"Every labelled flow, read with the first {', '.join(map(str, views))} packets of each flow withheld;",
        "identical rows removed; folds grouped by recording (captures that begin with the same frame are one",
        "recording: a trimmed corpus copy goes with the lab run it was cut from). Dissector-state columns are",
        "not used.",
        "",
        _md(counts),
        "",
        "Sources (a lab manifest lists the sha256 of each of its captures):",
        "",
        _md(data),
        "",
        "## Estimator choice",
        "",
        "Every candidate (estimator and calibration) gets its own out-of-fold thresholds; the score is the mean",
        "recall over tunnel families at those thresholds (false positives on negatives are zero by",
        f"construction), ties to the earlier of {', '.join(ESTIMATORS)}, then of {', '.join(CALIBRATIONS)}.",
        "",
        _md(comp),
        "",
        "## Out-of-fold metrics of the chosen model (per class, grouped by recording)",
        "",
        "Each fold's captures are recordings the model in that fold never saw (new keys, timing, MTU and",
        "traffic mix), of configurations other recordings showed it.",
        "",
        _md(per_class(model.oof_y_, oof_predictions(model))),
        "",
        "The same, per source:",
        "",
        _md(by_source(ds, model)),
        "",
        "## Out-of-fold metrics for configurations never recorded (grouped by capture name)",
        "",
        "The same estimator with every recording of a configuration (a lab variant) held out together: what",
        "to expect of a tunnel set up in a way the lab never recorded. Thresholds are this run's own.",
        "",
        _md(unseen),
        "",
        "## Most important features (permutation importance, balanced accuracy)",
        "",
        _md(imp),
        "",
        "## `vpnid eval` with this model",
        "",
        "Printed by the same code as `vpnid eval --model MODEL [--drop-first N] LABELS.csv`. Where a set",
        "holds recordings the model was trained on, its numbers are in-sample for those; the out-of-fold",
        "tables above are the estimate for unseen captures.",
        "",
    ]
    seen = set(ds.groups.tolist())
    for labels, drop, text in evals:
        command = shlex.join(["vpnid", "eval", "--drop-first", str(drop), labels])  # paths are anyone's text
        paths = sorted({r.path for r in read_labels(labels)[0]})
        shared = sum(recording(p) in seen for p in paths if p.exists())
        lines += [f"### `{command}`", "", f"{shared} of its {len(paths)} captures are training recordings.", "",
                  "```", text.rstrip(), "```", ""]
    lines += [
        "## Limits",
        "",
        "- The lab's recordings (two namespaces, paced synthetic traffic) are most of the tunnel data; timing",
        "  and size features may carry its habits. Third-party captures given as labels (the dev set's",
        "  trusted rows) add negatives of many sources and a few tunnels; an evaluation on them is then",
        "  in-sample for the model (the count above each evaluation says how many), and their out-of-fold",
        "  recall, per source above, shows how little a single recording of a configuration teaches.",
        "- A threshold rests on the highest-scoring held-out negative: one unusual negative can lift it",
        "  above 1 (the family is then never named by the model), and a negative unlike all of them can",
        "  still score high. Families with few recordings give few folds and the least certain thresholds.",
    ]
    return "\n".join(lines) + "\n"
