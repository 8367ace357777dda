"""`vpnid features` and `vpnid train`: the researcher's side of the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from vpnid.classifier.audit.text import shown
from vpnid.classifier.cli.common import COMMANDS, FORMATTER, err, error

FEATURES_HELP = """\
Compute one feature vector per flow (schema in features/vectors.py: name, unit and meaning of every
column, also stored in the Parquet metadata) and write them with the flow's capture, id and 5-tuple as
index columns. Addresses and ports are never features.

examples:
  vpnid features pcaps/corpus/*.pcap -o flows.parquet
  vpnid features --drop-first 25 capture.pcap -o midflow.parquet
"""

TRAIN_HELP = """\
Train the flow model on labelled captures (manifests in the labelled-flows format vpnid eval reads),
compare estimators (calibrated or not) with folds grouped by recording, choose per-family thresholds that keep
every validation negative unlabelled, save the model (skops) and write its card next to it (NAME.md).

Folds are grouped by recording (captures that begin with the same frame): train on several lab
recordings (`vpnid lab --seed K`) so that each held-out fold is a recording of configurations the others
showed; third-party truth files add negatives of other sources (rows whose confidence does not start
with DPI, and `other_vpn` rows, are left out).

examples:
  vpnid train --labels pcaps/generated/run-0/manifest.csv --labels pcaps/generated/run-1/manifest.csv \\
      --labels ../shared/corpus/external/truth.csv --out models/mine.skops --eval pcaps/corpus/manifest.csv
  vpnid train --labels pcaps/corpus/manifest.csv --out /tmp/quick.skops --views 0,25 --estimator hgb
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_features(args: argparse.Namespace) -> int:
    from vpnid.features.packets import CaptureError
    from vpnid.features.vectors import extract, to_parquet

    try:
        df = extract(args.captures, n_first=args.n_first, drop_first=args.drop_first)
    except CaptureError as e:
        error(str(e))
        return 1
    to_parquet(df, args.output)
    err.print(f"{len(df)} flows from {len(args.captures)} capture(s) -> {shown(args.output)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from vpnid.classifier.labelling import model as m
    from vpnid.classifier.labelling import train
    from vpnid.classifier.labelling.evaluate import LabelsError

    try:
        ds = train.build_dataset(args.labels, args.views, args.n_first)
    except LabelsError as e:
        error(str(e))
        return 2
    if ds.frame.family.nunique() < 2 or m.NONE not in set(ds.y):
        error("training needs negative (none) flows and at least one tunnel family")
        return 2
    kinds = m.ESTIMATORS if args.estimator == "auto" else (args.estimator,)
    calibrations = m.CALIBRATIONS if args.calibration == "auto" else (args.calibration,)
    err.print(f"{len(ds.frame)} training flows from {len(ds.captures)} captures; comparing {', '.join(kinds)} "
              f"with calibration {' and '.join(calibrations)}")
    models = train.compare(ds, kinds, calibrations, seed=args.seed)
    chosen = train.choose(models)
    model = models[chosen]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = m.save(model, out)
    evals = [(str(labels), drop, train.report_text(train.evaluate_with(model, labels, drop)))
             for labels in args.eval for drop in args.eval_drop_first]
    card = out.with_suffix(".md")
    err.print(f"{chosen}: estimating recall on configurations never recorded (folds by capture name)")
    unseen = train.by_configuration(ds, model)
    card.write_text(train.model_card(out.stem, model, ds, models, digest, evals, args.views, unseen),
                    encoding="utf-8")
    err.print(f"chose {chosen}; thresholds " + ", ".join(f"{f} {t:.3f}" for f, t in model.thresholds_.items())
              + f"; wrote {shown(out)} and {shown(card)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # Not from labelling.model/train: building this parser would then import scikit-learn and pandas.
    from vpnid.classifier.labelling.judgement import CALIBRATIONS, ESTIMATORS
    from vpnid.features.vectors import N_FIRST, VIEWS

    p = sub.add_parser("features", help=COMMANDS["features"].help, description=FEATURES_HELP,
                       formatter_class=FORMATTER)
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("-o", "--output", required=True, metavar="FILE.parquet")
    p.add_argument("--n-first", type=int, default=N_FIRST, metavar="N",
                   help="length of the first-packets sequence (default: %(default)s)")
    p.add_argument("--drop-first", type=int, default=0, metavar="N",
                   help="withhold each flow's first N packets (default: %(default)s)")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("train", help=COMMANDS["train"].help, description=TRAIN_HELP,
                       formatter_class=FORMATTER)
    p.add_argument("--labels", action="append", required=True, metavar="MANIFEST.csv",
                   help="labelled captures (repeatable)")
    p.add_argument("--out", required=True, metavar="models/NAME.skops")
    p.add_argument("--estimator", choices=("auto", *ESTIMATORS), default="auto",
                   help="auto: best grouped out-of-fold tunnel recall at zero-FP thresholds (default)")
    p.add_argument("--calibration", choices=("auto", *CALIBRATIONS), default="auto",
                   help="sigmoid (CalibratedClassifierCV over grouped folds) or none (the estimator's own "
                   "probabilities; thresholds still come from held-out negatives); auto: compare both (default)")
    p.add_argument("--views", type=_ints, default=VIEWS, metavar="N,N,...",
                   help="packets withheld per flow, one training pass each (default: %(default)s)")
    p.add_argument("--n-first", type=int, default=N_FIRST, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="append", default=[], metavar="LABELS.csv",
                   help="score the new model on these for the card (repeatable)")
    p.add_argument("--eval-drop-first", type=_ints, default=(0, 25), metavar="N,N,...",
                   help="--drop-first values for each --eval (default: %(default)s)")
    p.set_defaults(func=cmd_train)
