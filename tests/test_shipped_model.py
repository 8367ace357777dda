"""The shipped model on the committed corpus: mid-flow recall, no false positives, the card's numbers
are the ones `vpnid eval` prints, and the CLI refuses altered model files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vpnid.classifier.labelling.evaluate import read_labels, score
from vpnid.classifier.labelling.loading import DEFAULT_MODEL
from vpnid.classifier.labelling.model import load
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.families import REFERENCE_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "pcaps" / "corpus" / "manifest.csv"
EXTERNAL = ROOT.parent / "shared" / "corpus" / "external" / "truth.csv"
CARD = DEFAULT_MODEL.with_suffix(".md")

pytestmark = pytest.mark.slow


def vpnid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnid.classifier.cli.main", *args], capture_output=True, text=True, cwd=ROOT)


OBFS4 = "openvpn-tcp-obfs4-high.pcap"  # OpenVPN inside obfs4: random padding, no rule reads it; the model does


def evaluate(labels: Path, drop_first: int, leave_out: frozenset[str] = frozenset()):
    rows, _ = read_labels(labels)
    rows = [r for r in rows if Path(r.pcap).name not in leave_out]
    opts = Options(drop_first=drop_first, model=load(DEFAULT_MODEL))
    return score(rows, lambda p: classify_capture(str(p), opts))


@pytest.mark.parametrize("drop_first", [25, 50])
def test_mid_flow_recall_per_tunnel_family_and_no_label_on_negatives(drop_first: int):
    """The corpus is a recording the shipped model was not trained on (its card says so)."""
    report = evaluate(CORPUS, drop_first)
    for fam in REFERENCE_FAMILIES:
        assert report.families[fam].rows and report.families[fam].recall >= 0.95, fam
    assert not report.false_positives


def test_model_names_openvpn_inside_obfs4_where_signatures_cannot():
    opts = Options(model=load(DEFAULT_MODEL))
    tunnel = [r for r in classify_capture(str(ROOT / "pcaps" / "corpus" / OBFS4), opts) if r.label != "none"]
    assert tunnel and all(r.label == "openvpn" and r.method == "model" for r in tunnel)
    assert not [r for r in classify_capture(str(ROOT / "pcaps" / "corpus" / OBFS4), Options()) if r.label != "none"]


@pytest.mark.skipif(not EXTERNAL.exists(), reason=f"external dev set not present at {EXTERNAL}")
def test_external_set_keeps_every_tunnel_and_no_false_positive_with_the_model():
    report = evaluate(EXTERNAL, 0)
    assert sum(report.families[f].correct for f in REFERENCE_FAMILIES) == 38
    assert not report.false_positives and not report.misses


def test_model_card_shows_what_vpnid_eval_prints():
    res = vpnid("eval", "--drop-first", "25", "pcaps/corpus/manifest.csv")
    assert res.returncode == 0, res.stderr
    card = CARD.read_text(encoding="utf-8")
    block = card.split("### `vpnid eval --drop-first 25 pcaps/corpus/manifest.csv`")[1].split("```")[1]
    printed = "".join(ln for ln in res.stdout.splitlines(True) if not ln.startswith("  line "))  # card: no rows
    assert block.strip() == printed.strip()


def test_cli_refuses_an_altered_model(tmp_path):
    bad = tmp_path / "bad.skops"
    data = bytearray(DEFAULT_MODEL.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    res = vpnid("classify", "--format", "jsonl", "--model", str(bad), "pcaps/corpus/wireguard-keepalive.pcap")
    assert res.returncode == 2 and "bad.skops" in res.stderr and ("altered" in res.stderr or "damaged" in res.stderr)
    assert res.stdout == ""


def test_classify_records_say_which_method_labelled_them():
    import json

    res = vpnid("classify", "--format", "jsonl", "pcaps/corpus/wireguard-keepalive.pcap")
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert recs and {r["method"] for r in recs} <= {"signature", "model", "none"}
    assert any(r["method"] == "signature" and r["label"] == "wireguard" for r in recs)
    res = vpnid("classify", "--format", "jsonl", "--no-model", "--model", "x", "pcaps/corpus/wireguard-keepalive.pcap")
    assert res.returncode == 2  # the two options exclude each other
