"""The scikit-learn-free predictor: the same probabilities (to the bit) and judgements as the model it was
compiled from, a cache that only ever speaks for the exact file it was made from, and a classify run
that never imports scikit-learn once the model is cached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_model import synthetic
from vpnid.classifier.labelling import loading, model
from vpnid.classifier.labelling.compiled import CompiledModel, compile_model
from vpnid.classifier.labelling.judgement import ModelError
from vpnid.classifier.labelling.loading import DEFAULT_MODEL
from vpnid.classifier.labelling.model import FlowModel, save
from vpnid.features.vectors import extract

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hgb() -> tuple[FlowModel, np.ndarray]:
    X, y, g = synthetic()
    return FlowModel(estimator="hgb", n_splits=4).fit(X, y, g), X


def test_compiled_shipped_model_predicts_bit_for_bit_like_scikit_learn():
    m = model.load(DEFAULT_MODEL)
    compiled = compile_model(m)
    assert compiled is not None
    frame = extract(sorted((ROOT / "pcaps" / "corpus").glob("*.pcap"))[:12])
    X = frame.iloc[:, 7:].to_numpy(np.float64)
    X = np.vstack([X, X * 1.5, np.where(np.arange(X.size).reshape(X.shape) % 7 == 0, np.nan, X)])
    assert compiled.predict_proba(X).tobytes() == m.predict_proba(X).tobytes()
    assert compiled.judge(X) == m.judge(X)


def test_small_hgb_compiles_and_other_estimators_stay_with_scikit_learn(hgb):
    m, X = hgb
    compiled = compile_model(m)
    assert compiled is not None and compiled.predict_proba(X).tobytes() == m.predict_proba(X).tobytes()
    assert compiled.judge(X) == m.judge(X)
    Xs, y, g = synthetic()
    assert compile_model(FlowModel(estimator="rf", n_splits=4).fit(Xs, y, g)) is None


def test_uncalibrated_hgb_compiles_to_the_same_softmax_and_survives_the_cache(tmp_path, monkeypatch):
    X, y, g = synthetic(2)
    m = FlowModel(estimator="hgb", calibration="none", n_splits=4).fit(X, y, g)
    compiled = compile_model(m)
    assert compiled is not None and not compiled.calibrated
    rows = np.vstack([X, X * 3.0, np.where(np.arange(X.size).reshape(X.shape) % 5 == 0, np.nan, X)])
    assert compiled.predict_proba(rows).tobytes() == m.predict_proba(rows).tobytes()
    assert compiled.judge(rows) == m.judge(rows)
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    save(m, tmp_path / "raw.skops")
    loading.load(tmp_path / "raw.skops")  # compiles and caches
    cached = loading.load(tmp_path / "raw.skops")
    assert isinstance(cached, CompiledModel) and not cached.calibrated
    assert cached.predict_proba(rows).tobytes() == m.predict_proba(rows).tobytes()


def test_cache_serves_only_the_file_it_was_compiled_from(hgb, tmp_path, monkeypatch):
    m, X = hgb
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    path = tmp_path / "m.skops"
    save(m, path)
    first = loading.load(path)
    assert isinstance(first, CompiledModel) and len(list((tmp_path / "cache").glob("model-*.npz"))) == 1

    def audited(*_a):
        raise AssertionError("audited again although cached")

    monkeypatch.setattr(model, "load", audited)
    again = loading.load(path)
    assert isinstance(again, CompiledModel) and again.predict_proba(X).tobytes() == m.predict_proba(X).tobytes()
    monkeypatch.undo()

    # Another file (here: the same one, altered) misses the cache and is audited, and refused.
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.skops"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="bad.skops"):
        loading.load(bad)


def test_a_cache_entry_not_made_for_this_file_is_ignored(hgb, tmp_path, monkeypatch):
    m, _ = hgb
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    path = tmp_path / "m.skops"
    save(m, path)
    loading.load(path)
    (entry,) = tmp_path.glob("model-*.npz")
    with np.load(entry) as z:
        arrays = dict(z)
    arrays["sha256"] = np.str_("0" * 64)  # an entry copied from another model's name
    np.savez(entry, **arrays)
    assert CompiledModel.read(entry, entry.stem.removeprefix("model-")) is None
    good = entry.read_bytes()
    for damaged in (b"not a zip", good[: len(good) // 2]):
        entry.write_bytes(damaged)
        assert CompiledModel.read(entry, entry.stem.removeprefix("model-")) is None
    assert isinstance(loading.load(path), CompiledModel)  # audited and cached again


def test_classify_with_a_cached_model_never_imports_scikit_learn(tmp_path):
    code = ("import os, sys; from vpnid.classifier.cli.main import main; "
            "rc = main(['classify', '--format', 'jsonl', '-o', os.devnull, 'pcaps/corpus/wireguard-keepalive.pcap']); "
            "print(rc, 'sklearn' in sys.modules)")
    env = {**os.environ, loading.CACHE_ENV: str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
            for _ in range(2)]
    assert [r.stdout.split() for r in runs] == [["0", "True"], ["0", "False"]], [r.stderr for r in runs]
