"""What `vpnid train` learns from: folds grouped by recording (a trimmed copy goes with its source, two
recordings are two groups), third-party rows that are only port guesses or `other_vpn` left out, and
families with too few long flows left to their signatures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tests.test_model import NAMES, synthetic
from vpnid.classifier.labelling.model import FlowModel
from vpnid.classifier.labelling.train import build_dataset, recording
from vpnid.pcaps.lab import pcapfile

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "pcaps" / "corpus"


def test_a_trimmed_copy_is_the_same_recording_and_other_captures_are_not(tmp_path):
    src = CORPUS / "wireguard-keepalive.pcap"
    copy = tmp_path / "elsewhere.pcap"
    pcapfile.trim(src, copy, head_packets=20, window_s=1.0, period_s=30.0)
    assert copy.read_bytes() != src.read_bytes()
    assert recording(copy) == recording(src)
    others = {recording(p) for p in sorted(CORPUS.glob("*.pcap"))}
    assert len(others) == len(list(CORPUS.glob("*.pcap")))  # every corpus capture is its own recording
    assert recording(tmp_path / "missing.pcap") != recording(src)


def _write_labels(path: Path, rows: list[dict[str, str]]) -> Path:
    cols = ["pcap", "transport", "a_ip", "a_port", "b_ip", "b_port", "family", "confidence"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows({c: r.get(c, "") for c in cols} for r in rows)
    return path


def test_port_guesses_and_other_vpn_rows_teach_nothing(tmp_path):
    cap = CORPUS / "neg-dns-53.pcap"
    flows = build_dataset([_write_labels(tmp_path / "all.csv", [
        {"pcap": str(cap), "transport": "*", "a_ip": "*", "family": "none", "confidence": "DPI"}])], views=(0,))
    assert len(flows.frame) and set(flows.y) == {"none"}
    one = flows.frame.iloc[0]
    named = {"pcap": str(cap), "transport": one.transport, "a_ip": one.src_ip, "a_port": str(one.src_port),
             "b_ip": one.dst_ip, "b_port": str(one.dst_port)}
    whole = {"pcap": str(cap), "transport": "*", "a_ip": "*", "family": "none", "confidence": "DPI"}
    for family, confidence in (("openvpn", "Match by port"), ("other_vpn", "DPI")):
        ds = build_dataset([_write_labels(tmp_path / f"{family}.csv", [
            whole, {**named, "family": family, "confidence": confidence}])], views=(0,))
        assert len(ds.frame) == len(flows.frame) - 1 and set(ds.y) == {"none"}  # that flow is left out
    ds = build_dataset([_write_labels(tmp_path / "dpi.csv", [whole, {**named, "family": "openvpn",
                                                                     "confidence": "DPI"}])], views=(0,))
    assert sorted(ds.y.tolist()).count("openvpn") == 1  # a DPI row is taken


def test_groups_are_recordings_not_names(tmp_path):
    src = CORPUS / "wireguard-keepalive.pcap"
    for d in ("trimmed", "other"):
        (tmp_path / d).mkdir()
    pcapfile.trim(src, tmp_path / "trimmed" / src.name, head_packets=40, window_s=1.0, period_s=30.0)
    (tmp_path / "other" / src.name).write_bytes((CORPUS / "wireguard-default-51820.pcap").read_bytes())
    row = {"pcap": src.name, "transport": "*", "a_ip": "*", "family": "wireguard"}
    manifests = [_write_labels(tmp_path / d / "m.csv", [row]) for d in ("trimmed", "other")]
    ds = build_dataset([*manifests, _write_labels(tmp_path / "m.csv", [{**row, "pcap": str(src)}])], views=(0,))
    by_dir = {Path(p).parent.name: grp for p, grp in zip(ds.frame.pcap, ds.groups)}
    assert len(by_dir) == 3  # the trimmed copy's flows differ from the source's, so neither is deduplicated
    assert by_dir["trimmed"] == by_dir["corpus"] != by_dir["other"]  # one name, two recordings


def test_a_family_with_few_long_flows_is_left_to_its_signatures():
    X, y, g = synthetic()
    rare = np.array([v for v in X[:4]])
    rare[:, NAMES.index("packets")] = 100
    short = np.array([v for v in X[:30]])
    short[:, NAMES.index("packets")] = 12  # many flows, none long enough to be judged
    X = np.vstack([X, rare, short])
    y = np.concatenate([y, ["pptp"] * 4, ["l2tp"] * 30])
    g = np.concatenate([g, ["capx"] * 34])
    m = FlowModel(estimator="hgb", calibration="none", n_splits=4).fit(X, y, g)
    assert m.left_out_ == ["l2tp", "pptp"] and not {"l2tp", "pptp"} & {*m.classes_, *m.thresholds_}
    assert {j.family for j in m.judge(X)} <= {"none", "openvpn", "wireguard"}
