"""Issue 13, "an audit you can trust": each numbered case of the issue, as the user now meets it.

Each test is named after its case; together they check that registry imports, everything printed from
the registry and from captures, the files the tool writes, trial records and the model path hold
under hostile text and careless use.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import os
import re
import shlex
import sqlite3
import stat
import subprocess
import time
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import skops.io as sio

from tests import trialdata as td
from tests.registry_helpers import HEADER, row, vpnid_registry
from vpnid.classifier.audit import trials
from vpnid.classifier.audit.registry import migrate
from vpnid.classifier.audit.registry.csvio import read_csv
from vpnid.classifier.audit.registry.store import open_store
from vpnid.classifier.audit.trials import TrialStore
from vpnid.classifier.cli.main import main
from vpnid.classifier.labelling import loading
from vpnid.classifier.labelling.compiled import CompiledModel
from vpnid.classifier.labelling.loading import DEFAULT_MODEL
from vpnid.classifier.labelling.model import FILE_FORMAT, MARKER, FlowModel
from vpnid.classifier.running.live import tcpdump_command
from vpnid.features.vectors import SCHEMA_VERSION

HOSTILE_ORG = "Acme [/x] Ltd \x1b[31mred\x1b]8;;http://evil.example/\x07[link=http://evil.example/]click[/link]\u202e"
SHOWN_ORG = ("Acme [/x] Ltd \\x1b[31mred\\x1b]8;;http://evil.example/\\x07[link=http://evil.example/]click[/link]"
             "\\u202e")
FORMULA = '=HYPERLINK("http://evil.example/","click")'


def _registry(db, tmp_path, *rows: str) -> None:
    csv_file = tmp_path / "setup.csv"
    csv_file.write_text(HEADER + "".join(rows), encoding="utf-8")
    assert vpnid_registry("import", "--db", str(db), str(csv_file)) == 0


def _status(db) -> dict[str, str]:
    with open_store(str(db)) as store:
        return {r.registration_id: r.status for r in store.select()}


# --- 1 --------------------------------------------------------------------------------------------------
def test_1_an_unbalanced_quote_or_a_whole_internet_registration_is_refused_and_overlaps_are_named(tmp_path, capsys):
    db = tmp_path / "r.db"
    q1 = row(registration_id="Q-1", client_networks="198.18.1.0/24")
    _registry(db, tmp_path, q1, row(registration_id="Q-3", client_networks="198.18.3.0/24"))
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + q1.replace(",\n", ',"see ticket #42\n')
                   + row(registration_id="Q-3", client_networks="198.18.3.0/24", status="revoked"))
    capsys.readouterr()
    assert vpnid_registry("import", "--db", str(db), str(bad)) == 1
    assert capsys.readouterr().err == (f'vpnid: error: {bad}:2: a quoted cell opens in this row and never closes '
                                       '(an unbalanced ")\nvpnid: error: nothing imported (1 problem)\n')
    # closed again rows later, the quote would swallow the rows between; that is refused too
    bad.write_text(HEADER + q1.replace(",\n", ',"see ticket #42\n')
                   + row(registration_id="Q-3", client_networks="198.18.3.0/24", status="revoked", notes='x"'))
    assert vpnid_registry("import", "--db", str(db), str(bad)) == 1
    assert "bad.csv:2: a quoted cell runs over into a line that reads like a row ('Q-3,First Bank" in \
        capsys.readouterr().err
    assert _status(db) == {"Q-1": "active", "Q-3": "active"}

    everything = tmp_path / "all.csv"
    everything.write_text(HEADER + row(registration_id="Q-9", protocol="any", client_networks="0.0.0.0/0 ::/0",
                                       server_endpoints=""))
    assert vpnid_registry("import", "--db", str(db), str(everything)) == 1
    assert capsys.readouterr().err == (
        f"vpnid: error: {everything}:2: client_networks: 0.0.0.0/0 ::/0 are broader than /8 (IPv4) or /32 (IPv6); "
        "pass --allow-broad if that is meant\nvpnid: error: nothing imported (1 problem)\n")
    assert vpnid_registry("import", "--db", str(db), "--allow-broad", str(everything)) == 0
    assert capsys.readouterr().err == ("vpnid: warning: Q-9 changes the verdict of Q-1, Q-3 for flows both cover "
                                       "(the better verdict decides: registered > protocol_mismatch > expired > "
                                       "suspended > revoked)\n")


# --- 2 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, content, message", [
    ("latin1", (HEADER + row(organization="Caf\xe9")).encode("latin-1"),
     "2: byte 0xe9 is not UTF-8 (a latin-1 or UTF-16 file?); save the file as UTF-8"),
    ("utf16", (HEADER + row()).encode("utf-16"), "1: the file is UTF-16; save it as UTF-8"),
    ("oversize", (HEADER + row(notes="x" * 140_000)).encode(), "2: a cell is longer than 131072 characters"),
    ("nul", (HEADER + row(notes="a\0b")).encode(), "2: NUL character (a binary or UTF-16 file?)"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 10 else "")
def test_2_undecodable_oversize_and_nul_files_are_refused_by_line_without_a_traceback(name, content, message,
                                                                                    tmp_path):
    db, bad = tmp_path / "r.db", tmp_path / f"{name}.csv"
    _registry(db, tmp_path, row(registration_id="KEEP"))
    bad.write_bytes(content)
    res = td.vpnid("registry", "import", "--db", str(db), str(bad))
    assert (res.returncode, res.stdout, res.stderr) == (
        1, "", f"vpnid: error: {bad}:{message}\nvpnid: error: nothing imported (1 problem)\n")
    assert _status(db) == {"KEEP": "active"}


# --- 3 --------------------------------------------------------------------------------------------------
def test_3_stored_and_captured_text_is_printed_as_text_never_as_markup_or_escapes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    db = tmp_path / "r.db"
    _registry(db, tmp_path, row(registration_id="R1", organization=HOSTILE_ORG, notes="[red]n[/]"))
    capsys.readouterr()
    for argv in (("list",), ("show", "R1")):
        assert vpnid_registry(*argv, "--db", str(db)) == 0
        out = capsys.readouterr().out
        assert SHOWN_ORG in out and "\x1b" not in out and "\u202e" not in out, out
    assert "[red]n[/]" in out

    (tmp_path / "cap[").mkdir()
    capture = td.write_capture(tmp_path / "cap[" / "x]cap[red]y\x1b[2J.pcap", 4)  # the path holds [/x] and [red]
    res = td.vpnid("trial", "run", "wk[/x]\x1b[2J", "--db", str(db), "--no-model", str(capture))
    assert res.returncode == 0 and "trial wk[/x]\\x1b[2J: 7 flows" in res.stderr and "\x1b" not in res.stderr
    res = td.vpnid("trial", "list", "--db", str(db), env={"COLUMNS": "400"})
    assert res.returncode == 0 and "wk[/x]\\x1b[2J" in res.stdout and "\x1b" not in res.stdout, res.stderr

    flow = json.loads(td.vpnid("classify", "--no-model", "--format", "jsonl", str(capture)).stdout.splitlines()[0])
    res = td.vpnid("explain", str(capture), "--no-model", "--flow", flow["flow_id"])
    shown = str(capture).replace("\x1b", "\\x1b")
    assert res.returncode == 0, res.stderr
    assert f"in {shown}\n" in res.stdout and f"open {shown} with" in res.stdout and "\x1b" not in res.stdout


# --- 4, 5, 7: one trial over captures with hostile names and a registry with a formula ------------------
@pytest.fixture(scope="module")
def hostile_trial(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("hostile")
    db = d / "registry.db"
    regs = read_csv(td.registry_csv(d / "registry.csv"))
    with open_store(str(db)) as store:
        store.upsert([replace(r, organization=FORMULA) if r.registration_id == "R4-revoked" else r for r in regs])
    capture = td.write_capture(d / "$(touch PWNED) a;b.pcap", 4)
    res = td.vpnid("trial", "run", "hostile", "--db", str(db), str(capture))
    assert res.returncode == 0, res.stderr
    return {"dir": d, "db": db, "capture": capture}


def test_4_csv_outputs_hold_no_live_formula_and_the_registry_round_trip_stays_exact(hostile_trial, tmp_path):
    out = tmp_path / "report"
    assert td.vpnid("trial", "report", "hostile", "--db", str(hostile_trial["db"]), "-o", str(out)).returncode == 0
    with open(out / "flagged.csv", newline="", encoding="utf-8") as f:
        orgs = {r["organization"] for r in csv.DictReader(f)}
    assert "'" + FORMULA in orgs and FORMULA not in orgs

    export = tmp_path / "export.csv"
    assert td.vpnid("registry", "export", "--db", str(hostile_trial["db"]), str(export)).returncode == 0
    assert f"'{FORMULA}".replace('"', '""') in export.read_text()
    again, export2 = tmp_path / "again.db", tmp_path / "export2.csv"
    assert td.vpnid("registry", "import", "--db", str(again), str(export)).returncode == 0
    assert td.vpnid("registry", "export", "--db", str(again), str(export2)).returncode == 0
    assert export.read_bytes() == export2.read_bytes()
    with open_store(str(again)) as store:
        assert store.get("R4-revoked").organization == FORMULA

    named = hostile_trial["dir"] / "=1+2.pcap"
    named.write_bytes(hostile_trial["capture"].read_bytes())
    res = subprocess.run(td.vpnid_argv("classify", "--no-model", "--format", "csv", named.name), cwd=named.parent,
                         capture_output=True, text=True, timeout=300)
    cells = [r[0] for r in csv.reader(res.stdout.splitlines()[1:])]
    assert res.returncode == 0 and cells and set(cells) == {"'=1+2.pcap"}


def test_5_the_report_s_explain_command_is_shell_quoted(hostile_trial, tmp_path):
    out = tmp_path / "report"
    assert td.vpnid("trial", "report", "hostile", "--db", str(hostile_trial["db"]), "-o", str(out)).returncode == 0
    commands = [html.unescape(c) for c in re.findall(r'<code class="explain">(.*?)</code>', (out / "report.html")
                                                     .read_text())]
    assert commands and all(shlex.split(c)[:3] == ["vpnid", "explain", str(hostile_trial["capture"])]
                            for c in commands)
    res = subprocess.run(["bash", "-c", f"vpnid() {{ :; }}; {commands[0]}"], cwd=tmp_path, capture_output=True)
    assert res.returncode == 0 and not (tmp_path / "PWNED").exists()  # pasted, it runs nothing but vpnid


# --- 6 --------------------------------------------------------------------------------------------------
def test_6_outputs_never_replace_an_input_or_follow_a_planted_link_and_are_private(tmp_path):
    victim = td.write_capture(tmp_path / "victim.pcap", 4)
    before = victim.read_bytes()
    res = td.vpnid("classify", "--no-model", "-o", str(victim), str(victim))
    assert (res.returncode, res.stderr) == (
        2, f"vpnid: error: {victim}: is also an input ({victim}); refusing to overwrite it\n")
    link = tmp_path / "link.pcap"
    link.symlink_to(victim)
    res = td.vpnid("classify", "--no-model", "-o", str(link), str(victim))
    assert res.returncode == 2 and victim.read_bytes() == before

    db = tmp_path / "reg.db"
    old_umask = os.umask(0)
    try:
        _registry(db, tmp_path, row(registration_id="R1"))
        res = td.vpnid("registry", "export", "--db", str(db), str(db))
        assert (res.returncode, res.stderr) == (
            1, f"vpnid: error: {db}: is also an input ({db}); refusing to overwrite it\n")
        assert _status(db) == {"R1": "active"}

        assert td.vpnid("trial", "run", "t", "--db", str(db), "--no-model", str(victim)).returncode == 0
        out = tmp_path / "report"
        out.mkdir()
        elsewhere = tmp_path / "precious.txt"
        elsewhere.write_text("keep me")
        (out / "flagged.csv").symlink_to(elsewhere)
        assert td.vpnid("trial", "report", "t", "--db", str(db), "-o", str(out)).returncode == 0
        assert elsewhere.read_text() == "keep me" and not (out / "flagged.csv").is_symlink()
        fresh = tmp_path / "fresh"
        assert td.vpnid("trial", "report", "t", "--db", str(db), "-o", str(fresh)).returncode == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600 and stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in [*out.iterdir(), *fresh.iterdir()]} == {0o600}

    res = td.vpnid("trial", "report", "t", "--db", str(db), "-o", str(elsewhere))
    assert (res.returncode, res.stderr) == (
        2, f"vpnid: error: {elsewhere}: exists and is not a folder; name a folder (new or existing)\n")
    assert elsewhere.read_text() == "keep me"


# --- 7 --------------------------------------------------------------------------------------------------
def test_7_a_trial_records_its_model_registry_snapshot_and_captures_and_its_report_sees_a_changed_capture(
        hostile_trial, tmp_path):
    db, capture = hostile_trial["db"], hostile_trial["capture"]
    [trial] = [t for t in json.loads(td.vpnid("trial", "list", "--db", str(db), "--json").stdout)
               if t["name"] == "hostile"]
    assert (trial["model_version"], trial["model_sha256"]) == (
        "vpnid.skops", hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest())
    with open_store(str(db)) as store:
        assert trial["registry_snapshot"] == store.changed_at()
        assert [(c.path, c.size, c.sha256) for c in TrialStore(store).captures("hostile")] == [
            (str(capture), capture.stat().st_size, hashlib.sha256(capture.read_bytes()).hexdigest())]

    out = tmp_path / "report"
    assert td.vpnid("trial", "report", "hostile", "--db", str(db), "-o", str(out)).returncode == 0
    assert f"model vpnid.skops (sha256 {trial['model_sha256']})" in (out / "report.html").read_text()
    assert (out / "flagged.pcap").is_file()

    original = capture.read_bytes()
    try:
        td.write_capture(capture, 4, start=td.T0 + 5)  # the same path now holds another capture
        res = td.vpnid("trial", "report", "hostile", "--db", str(db), "-o", str(out))
    finally:
        capture.write_bytes(original)
    assert res.returncode == 0 and res.stderr == (f"vpnid: warning: {capture}: capture changed since the trial read "
                                                  "it; its 5 flagged flows are not in flagged.pcap\n")
    assert not (out / "flagged.pcap").exists()  # neither a misleading new one nor the earlier report's
    assert json.loads((out / "summary.json").read_text())["missing_captures"] == [str(capture)]


def test_7_a_capture_that_changes_while_a_trial_reads_it_aborts_the_run(tmp_path, monkeypatch):
    capture = td.write_capture(tmp_path / "c.pcap", 4)
    real = trials.classify_capture

    def rewritten_meanwhile(path, *args, **kwargs):
        yield from real(path, *args, **kwargs)
        os.utime(path, ns=(0, 0))

    monkeypatch.setattr(trials, "classify_capture", rewritten_meanwhile)
    with open_store(str(tmp_path / "r.db")) as store, pytest.raises(trials.TrialError) as e:
        TrialStore(store).run("t", [str(capture)])
    assert str(e.value) == f"{capture}: the capture changed while the trial read it; run the trial again"
    with open_store(str(tmp_path / "r.db")) as store:
        assert TrialStore(store).list() == []


def test_7_a_database_from_before_trial_records_opens_and_its_old_trials_report_as_unverified(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate.upgrade(conn, upto={"trials": 1})
    conn.execute("INSERT INTO trials (id, name, state, started_at, finished_at, parameters) VALUES (1, 'old', 'done', "
                 "'2024-01-01T00:00:00Z', '2024-01-01T00:00:01Z', ?)",
                 (json.dumps({"captures": [], "from": None, "to": None, "idle_timeout": 120.0,
                              "active_timeout": 1800.0, "max_flows": 1000}),))
    conn.close()
    res = td.vpnid("trial", "report", "old", "--db", str(db), "-o", str(tmp_path / "r"))
    assert res.returncode == 0 and res.stderr.startswith(
        "vpnid: warning: trial 'old' did not record its captures' sha256 (run before vpnid kept them): flagged.pcap "
        "comes from the files now at their paths, unverified\n")
    assert "none (signatures only)" in (tmp_path / "r" / "report.html").read_text()


# --- 8 --------------------------------------------------------------------------------------------------
def test_8_readers_do_not_wait_on_an_import_holding_the_write_lock(tmp_path):
    db = tmp_path / "r.db"
    _registry(db, tmp_path, row(registration_id="R1"))
    capture = td.write_capture(tmp_path / "c.pcap", 4)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # what an import holds for its whole transaction
    writer.execute("UPDATE registrations SET notes = 'importing'")
    try:
        for argv in (("registry", "list", "--db", str(db)),
                     ("classify", "--no-model", "--format", "jsonl", "--db", str(db), str(capture))):
            t0 = time.monotonic()
            res = td.vpnid(*argv)
            assert res.returncode == 0 and time.monotonic() - t0 < 15, res.stderr  # a wait is 30 s, then 'locked'
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# --- 9 --------------------------------------------------------------------------------------------------
def test_9_an_edited_or_foreign_cache_entry_is_rebuilt_from_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    first = loading.load(DEFAULT_MODEL)
    (entry,) = (tmp_path / "cache").glob("model-*.npz")
    with np.load(entry) as z:
        arrays = dict(z)
    arrays["family_thresholds"] = np.zeros_like(arrays["family_thresholds"])  # every flow a tunnel
    np.savez(entry, **arrays)
    assert loading.load(DEFAULT_MODEL).thresholds == first.thresholds  # rebuilt, not trusted
    entry.chmod(0o666)  # writable by others: not used, whatever it holds
    with np.load(entry) as z:
        assert CompiledModel.read(entry, str(z["sha256"])) is not None
    monkeypatch.setattr(CompiledModel, "read", lambda *_a: pytest.fail("read a cache entry others can write"))
    assert loading.load(DEFAULT_MODEL).thresholds == first.thresholds


def _model_file(path, inner: bytes) -> None:
    sio.dump({"marker": MARKER, "format": FILE_FORMAT, "schema_version": SCHEMA_VERSION,
              "sha256": hashlib.sha256(inner).hexdigest(), "model": inner}, path)


def test_9_unfitted_models_archive_bombs_and_filter_options_are_refused_in_one_line(tmp_path, capsys):
    capture = td.write_capture(tmp_path / "c.pcap", 4)
    unfitted = tmp_path / "unfitted.skops"
    _model_file(unfitted, sio.dumps(FlowModel()))
    assert main(["classify", "--format", "jsonl", "-o", os.devnull, "--model", str(unfitted), str(capture)]) == 2
    assert capsys.readouterr().err == (
        f"vpnid: error: {unfitted}: model is not fitted (it has no classes_, estimator_, thresholds_, columns_, "
        "importances_, feature_names_, packets_column_, n_features_in_, schema_version_)\n")

    bomb = tmp_path / "bomb.skops"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z, z.open("schema.json", "w") as member:
        for _ in range(300):
            member.write(bytes(2**20))
    assert bomb.stat().st_size < 2**20
    assert main(["classify", "--format", "jsonl", "-o", os.devnull, "--model", str(bomb), str(capture)]) == 2
    assert capsys.readouterr().err == (f"vpnid: error: {bomb}: model file would unpack to 300 MB in 1 files (at "
                                       "most 256 MB and 100000 files); refused\n")

    assert tcpdump_command("eth0", ["udp", "port", "53"], None)[-2:] == ["--", "udp port 53"]
    res = td.vpnid("live", "--no-model", "lo", "--", "udp", "-w", str(tmp_path / "x"))
    assert (res.returncode, res.stderr) == (1, "vpnid: error: '-w' starts with '-': an interface or filter word "
                                               "never does (tcpdump would take it for an option)\n")
    assert not (tmp_path / "x").exists()
