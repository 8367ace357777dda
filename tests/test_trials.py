"""Registry cross-check in the pipeline, trial runs, reports with flagged.pcap, and trial comparison."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dpkt
import pytest

from tests import trialdata as td
from vpnid.classifier.audit.registry.csvio import read_csv
from vpnid.classifier.audit.registry.store import open_store
from vpnid.classifier.audit.report.trial_report import write_report
from vpnid.classifier.audit.trials import TrialStore, Window
from vpnid.classifier.running.pipeline import Options
from vpnid.features.packets import CaptureError

vpnid = td.vpnid


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("trials")
    db = d / "registry.db"
    with open_store(str(db)) as store:
        store.upsert(read_csv(td.registry_csv(d / "registry.csv")))
    return {"db": db, "v4": td.write_capture(d / "v4.pcap", 4),
            "v6": td.write_capture(d / "v6.pcap", 6, start=td.T0 + 3600)}


def test_classify_db_gives_every_verdict_on_ipv4_and_ipv6_flows(data):
    res = vpnid("classify", "--format", "jsonl", "--db", str(data["db"]), str(data["v4"]), str(data["v6"]))
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    got = {(r["dst_port"], ":" in r["src_ip"]): (r["label"], r["registry"], r["registration_id"]) for r in recs}
    for family in (4, 6):
        for verdict, port in td.VERDICT_PORTS.items():
            rid = None if verdict == "unregistered" else f"R{family}-{verdict}"
            assert got[(port, family == 6)] == ("wireguard", verdict, rid)
    dns = [r for r in recs if r["dst_port"] == 53]
    assert len(dns) == 2 and all(r["label"] == "none" and r["registry"] is None for r in dns)


def test_registry_fields_only_when_a_registry_is_used(data):
    plain = vpnid("classify", "--format", "csv", str(data["v4"]))
    by_env = vpnid("classify", "--format", "csv", str(data["v4"]), env={"VPNID_DB": str(data["db"])})
    assert plain.returncode == by_env.returncode == 0, plain.stderr + by_env.stderr
    plain_header, env_header = plain.stdout.splitlines()[0].split(","), by_env.stdout.splitlines()[0].split(",")
    assert "registry" not in plain_header and env_header[-3:] == ["registry", "registration_id", "subscriber_id"]
    missing = vpnid("classify", "--db", str(data["db"].with_name("nope.db")), str(data["v4"]))
    assert missing.returncode == 2 and "no such registry database" in missing.stderr


def _ids(trials: TrialStore, name: str) -> set[str]:
    with trials.reading():
        return {r.record["flow_id"] for r in trials.results(name)}


def test_rerunning_a_trial_replaces_it_atomically(data, tmp_path):
    with open_store(str(data["db"])) as store, open_store(str(data["db"])) as other:
        trials, reader = TrialStore(store), TrialStore(other)
        first = trials.run("atomic", [str(data["v4"])])
        old = _ids(reader, "atomic")
        assert first.flows == len(old) == 7 and first.flagged == 5

        seen_during: list[set[str]] = []
        trials.run("atomic", [str(data["v6"])], progress=lambda _p, _n: seen_during.append(_ids(reader, "atomic")))
        new = _ids(reader, "atomic")
        assert seen_during and all(ids == old for ids in seen_during)  # new flows were written, not visible
        assert new and not new & old and [t.name for t in reader.list()].count("atomic") == 1

        bad = tmp_path / "bad.pcap"
        bad.write_bytes(b"not a capture at all")
        with pytest.raises(CaptureError):
            trials.run("atomic", [str(data["v4"]), str(bad)])
        assert _ids(reader, "atomic") == new  # a failed run leaves the stored trial as it was
        assert store.conn.execute("SELECT count(*) FROM trials WHERE state = 'running'").fetchone()[0] == 0


def test_time_window_keeps_flows_by_first_seen(data):
    with open_store(str(data["db"])) as store:
        trial = TrialStore(store).run("window", [str(data["v4"])], window=Window(td.T0 + 15, td.T0 + 35))
        with TrialStore(store).reading() as trials:
            ports = sorted(r.record["dst_port"] for r in trials.results("window"))
    assert ports == [51822, 51823] and trial.flows == 2  # sessions start at T0 + 0, 10, 20, 30, 40, 50


def test_report_files_and_flagged_pcap_holds_exactly_the_flagged_flows(data, tmp_path):
    with open_store(str(data["db"])) as store:
        trials = TrialStore(store)
        trials.run("report", [str(data["v4"]), str(data["v6"])], Options())
        written = write_report(trials, "report", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["flagged.csv", "flagged.pcap", "report.html", "summary.json"]
    with open(out / "flagged.csv", newline="", encoding="utf-8") as f:
        flagged = list(csv.DictReader(f))
    assert len(flagged) == written.flagged_flows == 10  # five non-registered verdicts, two families
    assert {r["registry"] for r in flagged} == set(td.VERDICT_PORTS) - {"registered"}

    want = {(r["src_ip"], int(r["src_port"]), r["dst_ip"], int(r["dst_port"])) for r in flagged}
    with open(out / "flagged.pcap", "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        got = []
        for _ts, buf in reader:
            ip = dpkt.ethernet.Ethernet(buf).data
            src, dst = (dpkt.utils.inet_to_str(a) for a in (ip.src, ip.dst))
            got.append((src, ip.data.sport, dst, ip.data.dport))
    flows = {t if t in want else (t[2], t[3], t[0], t[1]) for t in got}
    assert flows == want  # every flagged flow, and nothing else (the registered one, DNS) slipped in
    assert len(got) == written.pcap_frames == sum(int(r["src2dst_packets"]) + int(r["dst2src_packets"])
                                                  for r in flagged)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial"]["flagged"] == 10 and summary["tunnels_by_verdict"]["registered"] == 2
    assert [e["endpoint"] for e in summary["top_unregistered_endpoints"]] == \
        [f"{td.server(4)}:51825/udp", f"[{td.server(6)}]:51825/udp"]
    html = (out / "report.html").read_text()
    assert all(f"--flow {r['flow_id']}" in html for r in flagged)
    assert "Org revoked v6" in html and "http" not in html.replace("http-equiv", "")  # nothing fetched


def test_compare_names_new_persisting_and_gone_unregistered_tunnels(data):
    db = str(data["db"])
    for name, captures in (("before", [data["v4"]]), ("after", [data["v4"], data["v6"]]), ("later", [data["v6"]])):
        assert vpnid("trial", "run", name, "--db", db, *map(str, captures)).returncode == 0
    res = vpnid("trial", "compare", "before", "after", "--db", db, "--json")
    assert res.returncode == 0, res.stderr
    diff = json.loads(res.stdout)
    unreg4 = f"wireguard {td.client(4, 'unregistered')} -> {td.server(4)}:51825/udp"
    unreg6 = f"wireguard {td.client(6, 'unregistered')} -> [{td.server(6)}]:51825/udp"
    assert [[e["text"] for e in diff[k]] for k in ("new", "persisting", "gone")] == [[unreg6], [unreg4], []]
    text = vpnid("trial", "compare", "after", "later", "--db", db).stdout
    assert f"gone (1):\n  {unreg4}" in text and f"persisting (1):\n  {unreg6}" in text
    listed = json.loads(vpnid("trial", "list", "--db", db, "--json").stdout)
    assert {"before", "after", "later"} <= {t["name"] for t in listed}
    missing = vpnid("trial", "compare", "before", "nope", "--db", db)
    assert missing.returncode == 2 and "no trial named 'nope'" in missing.stderr
