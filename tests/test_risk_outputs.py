"""Risks where users see them (issue #14): `--risk` selects flows in `vpnid classify` (every format) and
`vpnid batch`, an unknown name is refused with the known ones, and the trial report counts and lists them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pytest
from scapy.all import IP, UDP, Ether, Raw, wrpcap

from tests import trialdata as td
from tests import vpnbytes_wg_ipsec as b
from tests.test_malformed_header import I_SPI, trailing
from vpnid.classifier.audit.registry.csvio import read_csv
from vpnid.classifier.audit.registry.store import open_store
from vpnid.classifier.audit.report.trial_report import write_report
from vpnid.classifier.audit.trials import TrialStore
from vpnid.classifier.cli.main import main
from vpnid.classifier.running.pipeline import Options
from vpnid.classifier.running.records import with_risks
from vpnid.features.packets import IPPROTO_ESP
from vpnid.features.risks import MALFORMED_HEADER, RESERVED_SPI, known

A, B = "198.18.0.1", "198.18.0.2"


@pytest.fixture(scope="module")
def risky(tmp_path_factory) -> Path:
    """Three flows: IKE with trailing bytes (malformed_header, none), raw ESP under SPI 10 (reserved_spi,
    ipsec), and a plain UDP exchange (no risk)."""
    frames = [Ether() / IP(src=A, dst=B) / UDP(sport=40000, dport=500) / Raw(trailing(b.ikev2_sa_init_request(I_SPI))),
              Ether() / IP(src=A, dst=B, proto=IPPROTO_ESP) / Raw(b.esp(10, 1, 120)),
              Ether() / IP(src=A, dst=B) / UDP(sport=40001, dport=9999) / Raw(b"hello"),
              Ether() / IP(src=B, dst=A) / UDP(sport=9999, dport=40001) / Raw(b"hi")]
    for i, f in enumerate(frames):
        f.time = td.T0 + i
    path = tmp_path_factory.mktemp("risky") / "risky.pcap"
    wrpcap(str(path), frames)
    return path


def classify(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["classify", "--no-model", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("risks, want", [
    ((), [[MALFORMED_HEADER], [RESERVED_SPI], []]),
    ((MALFORMED_HEADER,), [[MALFORMED_HEADER]]),
    ((MALFORMED_HEADER, RESERVED_SPI), [[MALFORMED_HEADER], [RESERVED_SPI]]),
    (("blocked_attempt",), []),
])
def test_classify_keeps_the_flows_carrying_any_risk_named(risky, capsys, risks, want):
    flags = [a for r in risks for a in ("--risk", r)]
    rc, out, _ = classify(capsys, "--format", "jsonl", *flags, str(risky))
    assert rc == 0 and sorted(json.loads(line)["risks"] for line in out.splitlines()) == sorted(want)
    rc, out, _ = classify(capsys, "--format", "csv", *flags, str(risky))
    assert sorted(row["risks"] for row in csv.DictReader(io.StringIO(out))) == sorted(" | ".join(w) for w in want)


def test_the_table_shows_every_selected_flow_with_its_risks(risky, capsys, tmp_path):
    table = tmp_path / "table.txt"
    assert classify(capsys, "--format", "table", "-o", str(table), "--risk", MALFORMED_HEADER, str(risky))[0] == 0
    out = table.read_text()
    assert "none" in out and MALFORMED_HEADER in out and "1 flows (none: 1)" in out
    assert classify(capsys, "--format", "table", "-o", str(table), str(risky))[0] == 0
    out = table.read_text()
    assert RESERVED_SPI in out and MALFORMED_HEADER not in out  # without --risk: tunnel flows only, as before


def test_an_unknown_risk_is_refused_with_the_known_names(risky, capsys):
    with pytest.raises(SystemExit) as e:
        main(["classify", "--risk", "fully-encrypted", str(risky)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown risk 'fully-encrypted'" in err
    assert all(name in err for name in known()) and MALFORMED_HEADER in known()


def test_batch_writes_only_the_flows_carrying_the_risk(risky, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(risky), "--out", str(out), "--workers", "1", "--no-model", "--risk", RESERVED_SPI]) == 0
    rows = [json.loads(line) for p in out.glob("*.jsonl") for line in p.read_text().splitlines()]
    assert [(r["label"], r["risks"]) for r in rows] == [("ipsec", [RESERVED_SPI])]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["flows"] for c in manifest.values()] == [1]


def test_with_risks_on_batches_and_chunked_tables():
    batch = pa.RecordBatch.from_pylist([{"risks": ["a", "b"]}, {"risks": []}, {"risks": None}, {"risks": ["b"]}],
                                       schema=pa.schema([("risks", pa.list_(pa.string()))]))
    assert with_risks(batch, frozenset({"b"})).column("risks").to_pylist() == [["a", "b"], ["b"]]
    assert with_risks(batch, frozenset()) is batch
    table = pa.Table.from_batches([batch.slice(2), batch.slice(0, 2)])
    assert with_risks(table, frozenset({"a", "c"})).column("risks").to_pylist() == [["a", "b"]]


def test_the_trial_report_counts_risks_over_all_flows_and_lists_those_of_flagged_tunnels(risky, tmp_path):
    db = tmp_path / "registry.db"
    with open_store(str(db)) as store:
        store.upsert(read_csv(td.registry_csv(tmp_path / "registry.csv")))
        trials = TrialStore(store)
        trials.run("risky", [str(risky)], Options())
        write_report(trials, "risky", tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["flows_by_risk"] == {MALFORMED_HEADER: 1, RESERVED_SPI: 1}
    assert summary["flagged_by_risk"] == {RESERVED_SPI: 1}  # the ESP tunnel is unregistered; the IKE flow is none
    html = (tmp_path / "report" / "report.html").read_text()
    assert '<table id="risks">' in html and f'<td class="risks"><code>{RESERVED_SPI}</code></td>' in html
