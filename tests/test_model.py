"""Flow model: thresholds keep validation negatives unlabelled, training is reproducible, the model file
refuses what is not a vpnid model, and labels say which method decided them."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import skops.io as sio

from vpnid.classifier.labelling.labels import label
from vpnid.classifier.labelling.model import MARKER, FlowModel, Judgement, ModelError, load, save
from vpnid.features.flows import Flow, Verdict
from vpnid.features.vectors import feature_names

NAMES = feature_names()


def synthetic(seed: int = 0, per_group: int = 8, groups: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tunnel rows have stable headers and stepping counters; negatives do not (plus noise)."""
    rng = np.random.default_rng(seed)
    rows, ys, gs = [], [], []
    for g in range(groups):
        fam = ("openvpn", "wireguard", "none", "none")[g % 4]
        for _ in range(per_group):
            x = rng.normal(0, 1, len(NAMES))
            x[NAMES.index("packets")] = rng.integers(30, 500)
            if fam == "wireguard":
                x[NAMES.index("fwd_ctr_le32_at8")] += 4
            if fam == "openvpn":
                x[NAMES.index("fwd_ctr_be32_at4")] += 4
            rows.append(x)
            ys.append(fam)
            gs.append(f"cap{g}")
    return np.array(rows), np.array(ys), np.array(gs)


@pytest.fixture(scope="module")
def fitted() -> tuple[FlowModel, np.ndarray, np.ndarray]:
    X, y, g = synthetic()
    return FlowModel(estimator="rf", n_splits=4).fit(X, y, g), X, y


def test_thresholds_sit_above_every_out_of_fold_negative(fitted):
    model, _, _ = fitted
    neg = model.oof_y_ == "none"
    for j, fam in enumerate(model.classes_):
        if fam != "none":
            assert model.thresholds_[fam] > model.oof_proba_[neg, j].max()
            assert model.thresholds_[fam] >= model.min_threshold


def test_model_names_the_family_only_above_threshold_and_skips_short_flows(fitted):
    model, X, y = fitted
    judged = model.judge(X)
    assert [j.family for j in judged if j.family != "none"] and all(
        j.probability >= model.thresholds_[j.family] for j in judged if j.family != "none")
    short = X[:1].copy()
    short[0, NAMES.index("packets")] = model.min_packets - 1
    (j,) = model.judge(short)
    assert j.family == "none" and "not asked" in j.evidence


def test_same_data_same_seed_gives_identical_predictions(tmp_path):
    X, y, g = synthetic(1)
    a = FlowModel(estimator="hgb", n_splits=4).fit(X, y, g)
    b = FlowModel(estimator="hgb", n_splits=4).fit(X, y, g)
    save(a, tmp_path / "a.skops")
    save(b, tmp_path / "b.skops")
    pa = load(tmp_path / "a.skops").predict_proba(X)
    pb = load(tmp_path / "b.skops").predict_proba(X)
    assert pa.tobytes() == pb.tobytes()
    assert a.thresholds_ == b.thresholds_


def test_round_trip_keeps_predictions(fitted, tmp_path):
    model, X, _ = fitted
    save(model, tmp_path / "m.skops")
    again = load(tmp_path / "m.skops")
    assert again.predict_proba(X).tobytes() == model.predict_proba(X).tobytes()


def _rewrite(src, dst, change) -> None:
    """Copy a zip archive, passing each member's bytes through `change(name, data)`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info)))


def test_altered_model_is_refused_with_a_clear_message(fitted, tmp_path):
    model, _, _ = fitted
    good = tmp_path / "m.skops"
    save(model, good)
    with zipfile.ZipFile(good) as z:
        inner_member = next(n for n in z.namelist() if n != "schema.json")
    bad = tmp_path / "altered.skops"
    _rewrite(good, bad, lambda name, data: data[:-1] + bytes([data[-1] ^ 1]) if name == inner_member else data)
    with pytest.raises(ModelError, match="altered"):
        load(bad)


def test_file_that_is_not_a_vpnid_model_is_refused(tmp_path):
    other = tmp_path / "other.skops"
    sio.dump({"some": "dict"}, other)
    with pytest.raises(ModelError, match="not a vpnid model"):
        load(other)
    junk = tmp_path / "junk.skops"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="not a vpnid model"):
        load(junk)
    with pytest.raises(ModelError, match="no such model file"):
        load(tmp_path / "missing.skops")


class Smuggled:
    """A type no vpnid model holds."""

    def __init__(self) -> None:
        self.payload = "anything"


def test_inner_archive_with_untrusted_types_is_refused(tmp_path):
    import hashlib

    inner = sio.dumps(Smuggled())
    sio.dump({"marker": MARKER, "format": 1, "schema_version": 1, "sha256": hashlib.sha256(inner).hexdigest(),
              "model": inner}, tmp_path / "evil.skops")
    with pytest.raises(ModelError, match="does not trust|not a vpnid model"):
        load(tmp_path / "evil.skops")


def _flow(verdict: Verdict | None) -> Flow:
    f = Flow(proto=17, src=b"\0" * 16, sport=1, dst=b"\0" * 16, dport=2, first_ns=0, last_ns=0, first_frame=1)
    f.packets = [30, 30]
    f.verdict = verdict
    return f


def test_label_method_is_signature_then_model_then_none(fitted):
    model, X, y = fitted
    sig = label(_flow(Verdict("wireguard", 0.99, ["handshake"], {}, 2)), model.judge(X[:1])[0])
    assert (sig["label"], sig["method"], sig["evidence"]) == ("wireguard", "signature", ["handshake"])
    tunnel = next(j for j in model.judge(X) if j.family != "none")
    by_model = label(_flow(None), tunnel)
    assert by_model["method"] == "model" and by_model["label"] == tunnel.family
    assert by_model["evidence"][0].startswith(f"model p({tunnel.family})=") and "top features" in by_model["evidence"][0]
    nothing = label(_flow(None), None)
    assert (nothing["label"], nothing["method"], nothing["confidence"]) == ("none", "none", 0.0)


def test_the_model_alone_names_no_shadowsocks_flow():
    """Its Shadowsocks class was learnt from entropy and flow shape, which ordinary protocols share."""
    j = Judgement("shadowsocks", 0.97, "shadowsocks", 0.8, "model p(shadowsocks)=0.970 >= threshold 0.800")
    f = _flow(None)
    f.risks = {"fully_encrypted"}
    rec = label(f, j)
    assert (rec["label"], rec["method"], rec["confidence"], rec["risks"]) == ("none", "none", 0.0, ["fully_encrypted"])
    assert rec["evidence"] == [f"{j.evidence}; not taken: shadowsocks is named by its signature only"]


def test_the_model_alone_names_no_openconnect_flow():
    """Held out, a FIX trading session scored 0.85 for openconnect; the rules name OpenConnect's flows."""
    j = Judgement("openconnect", 0.95, "openconnect", 0.909, "model p(openconnect)=0.950 >= threshold 0.909")
    rec = label(_flow(None), j)
    assert (rec["label"], rec["method"], rec["confidence"]) == ("none", "none", 0.0)
    assert rec["evidence"] == [f"{j.evidence}; not taken: openconnect is named by its signature only"]
