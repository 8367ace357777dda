"""Trial runs and registry imports against concurrency and sudden death, with real processes: two trial
runs at once lose and duplicate nothing, a run killed with SIGKILL at any point leaves the database
consistent (the earlier trial intact) and a re-run completes, and a registry import is seen whole or
not at all by readers running meanwhile."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import trialdata as td
from tests.capturegen import ICMP_ECHO, sweep_source, write_capture
from tests.registry_helpers import HEADER, row
from vpnid.classifier.audit.registry.csvio import read_csv
from vpnid.classifier.audit.registry.store import open_store
from vpnid.classifier.audit.trials import TrialStore
from vpnid.classifier.running.pipeline import classify_capture

ROOT = Path(__file__).parent.parent
FLOWS = 12_000  # several insert batches (trials.BATCH) per run


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A registry database, a capture of FLOWS flows, and the flow ids a trial of it must hold."""
    d = tmp_path_factory.mktemp("integrity")
    with open_store(str(d / "registry.db")) as store:
        store.upsert(read_csv(td.registry_csv(d / "registry.csv")))
    capture = d / "sweep.pcap"
    with capture.open("wb") as f:
        write_capture(f, FLOWS, ICMP_ECHO, 1000, sweep_source)
    return d / "registry.db", capture, sorted(r.flow_id for r in classify_capture(str(capture)))


def trial_run(db: Path, name: str, capture: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "VPNID_DB"}
    return subprocess.Popen(td.vpnid_argv("trial", "run", name, str(capture), "--db", str(db)),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stored(db: Path, name: str) -> tuple[str | None, list[str]]:
    """The trial's start time and its flow ids, sorted, as a reader sees them."""
    with open_store(str(db)) as store, TrialStore(store).reading() as trials:
        trial = trials.get(name)
        return (trial.started_at if trial else None,
                sorted(r.record["flow_id"] for r in trials.results(name)) if trial else [])


def consistent(db: Path) -> None:
    """SQLite's own check, and no flow row belongs to a trial that does not exist."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM trial_flows WHERE trial_id NOT IN (SELECT id FROM trials)"
                            ).fetchone() == (0,)
    finally:
        conn.close()


def test_two_trial_runs_at_once_lose_and_duplicate_nothing(setup):
    db, capture, expected = setup
    procs = {name: trial_run(db, name, capture) for name in ("at-once-a", "at-once-b")}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for name in procs:
        assert stored(db, name)[1] == expected
    consistent(db)


def test_the_same_trial_run_twice_at_once_is_stored_once_whole(setup):
    db, capture, expected = setup
    procs = [trial_run(db, "same", capture) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    assert any(rc == 0 for rc, _ in outcomes), outcomes
    for rc, err in outcomes:
        assert rc == 0 or "trial 'same' was started again while this run was writing it" in err, err
    assert stored(db, "same")[1] == expected
    consistent(db)


@pytest.mark.slow
def test_a_trial_run_killed_at_any_point_leaves_the_earlier_trial_and_a_rerun_completes(setup):
    db, capture, expected = setup
    began = time.monotonic()
    assert trial_run(db, "killed", capture).wait(timeout=300) == 0
    duration = time.monotonic() - began
    before = stored(db, "killed")
    assert before[1] == expected
    for k in range(1, 9):  # from interpreter start-up to the final transaction
        proc = trial_run(db, "killed", capture)
        time.sleep(duration * k / 9)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        consistent(db)
        now = stored(db, "killed")
        # The earlier trial as it was, or (killed after the final commit) the new one whole.
        assert now == before or (now[0] != before[0] and now[1] == expected), f"killed after {k}/9 of a run"
        before = now
    assert trial_run(db, "killed", capture).wait(timeout=300) == 0
    assert stored(db, "killed")[1] == expected
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM trials WHERE name = 'killed' AND state = 'running'").fetchone() == (0,)
    conn.close()
    consistent(db)


def registrations_csv(path: Path, n: int, status: str) -> Path:
    path.write_text(HEADER + "".join(row(registration_id=f"B{i}", organization=f"Org {i}", status=status,
                                         client_networks=f"10.{i // 256}.{i % 256}.0/24") for i in range(n)))
    return path


def test_a_registry_import_is_seen_whole_or_not_at_all_by_concurrent_readers(tmp_path):
    """Readers poll the registry while imports add 3,000 registrations, then change all of them, then an
    import is killed: every read sees 0 or 3,000 registrations, all with one status."""
    db = tmp_path / "registry.db"
    open_store(str(db)).close()
    seen: set[tuple[int, frozenset[str]]] = set()
    stop = threading.Event()

    def read() -> None:
        with open_store(str(db), create=False) as store:
            while not stop.is_set():
                regs = store.select()
                seen.add((len(regs), frozenset(r.status for r in regs)))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for status in ("active", "suspended"):
            csv_path = registrations_csv(tmp_path / f"{status}.csv", 3000, status)
            done = subprocess.run(td.vpnid_argv("registry", "import", str(csv_path), "--db", str(db)), cwd=ROOT,
                                  capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, done.stderr
        killed = subprocess.Popen(td.vpnid_argv("registry", "import", str(registrations_csv(
            tmp_path / "revoked.csv", 3000, "revoked")), "--db", str(db)), cwd=ROOT)
        time.sleep(1.5)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert seen <= {(0, frozenset()), (3000, frozenset({"active"})), (3000, frozenset({"suspended"})),
                    (3000, frozenset({"revoked"}))}, seen
    assert (3000, frozenset({"suspended"})) in seen
