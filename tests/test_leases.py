"""Lease logs and attribution (issue 15): the CSV layouts and their messages, all-or-nothing imports, and a
lab capture attributed through a lease log whose address changes hands mid-capture and a CGNAT port block."""

from __future__ import annotations

import ipaddress
import json
import sqlite3

import numpy as np
import pytest
from scapy.all import IP, UDP, Ether, Raw, wrpcap

from tests import tunnelbytes as tb
from tests.registry_helpers import HEADER, row
from tests.trialdata import MACS, T0, vpnid
from vpnid.classifier.audit.leases.attribute import BY_CGNAT, BY_LEASE, GAP, NO_ISSUE, OVERLAP, LeaseIndex
from vpnid.classifier.audit.leases.layouts import read_leases
from vpnid.classifier.audit.leases.store import columns, packed
from vpnid.classifier.audit.registry.csvio import CsvError, read_csv
from vpnid.classifier.audit.registry.store import open_store
from vpnid.classifier.audit.trials import TrialStore
from vpnid.classifier.running.pipeline import Options

SERVER = "198.51.100.2"


def iso(t: float) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("kind, text, problems", [
    ("dhcp", "subscriber_id,address,start,end\n,10.0.0.1,2026-01-01T00:00:00Z,\n", ["2: subscriber_id is empty"]),
    ("dhcp", "subscriber_id,address,start,end\na b,10.0.0.256,yesterday,2026-01-01\n",
     ["2: subscriber_id 'a b' must be 1-128 letters, digits or . _ : @ + / - (starting with a letter, digit or +); "
      "address '10.0.0.256' is not an IPv4 or IPv6 address; start 'yesterday' is not an ISO 8601 time (e.g. "
      "2026-11-28T23:00:00Z)"]),
    ("dhcp", "subscriber_id,address,start,end\nal,10.0.0.1,2026-01-02,2026-01-01\n",
     ["2: end '2026-01-01' is not after start '2026-01-02'"]),
    ("cgnat", "subscriber_id,private_address,public_address,port_first,port_last,start,end\n"
              "al,100.64.0.1,203.0.113.5,2000,1999,2026-01-01,\nbo,100.64.0.2,203.0.113.5,70000,1,2026-01-01,\n",
     ["2: port_last 1999 is below port_first 2000", "3: port_first '70000' is not a port from 0 to 65535"]),
    ("radius", "event,time,session_id,subscriber_id,framed_ip\nstop,2026-01-01T00:00:00Z,S1,al,10.0.0.1\n"
               "accounting-on,2026-01-01T00:00:00Z,S2,al,10.0.0.1\nstart,2026-01-01T00:00:00Z,S3,al,10.0.0.1\n"
               "start,2026-01-01T00:01:00Z,S3,al,10.0.0.1\nstop,2026-01-01T00:02:00Z,S3,bo,10.0.0.1\n",
     ["2: stop of session 'S1', which has no start earlier in the file",
      "3: event 'accounting-on' is not one of start, interim-update, stop",
      "5: session 'S3' starts again (it started on line 4 and has not stopped)",
      "6: session 'S3' started on line 4 for al at 10.0.0.1, not bo at 10.0.0.1"]),
    ("radius", "subscriber_id,address,start,end\n",
     [": not a RADIUS accounting CSV (missing columns event, time, session_id, framed_ip; unknown columns address, "
      "start, end); the header must name exactly: event,time,session_id,subscriber_id,framed_ip"]),
])
def test_each_bad_lease_row_is_named_by_its_line(tmp_path, kind, text, problems):
    path = tmp_path / "log.csv"
    path.write_text(text)
    with pytest.raises(CsvError) as e:
        read_leases(path, kind)
    assert e.value.problems == [f"{path}:{p}" if p[0].isdigit() else f"{path}:1{p}" for p in problems]


def test_radius_sessions_pair_start_and_stop_and_a_start_alone_stays_open(tmp_path):
    path = tmp_path / "acct.csv"
    path.write_text("event,time,session_id,subscriber_id,framed_ip\n"
                    "Start,2026-01-01T00:00:00Z,S1,alice,10.0.0.1\nInterim-Update,2026-01-01T00:05:00Z,S1,alice,10.0.0.1\n"
                    "Stop,2026-01-01T00:10:00Z,S1,alice,10.0.0.1\nstart,2026-01-01T00:10:00+00:00,S2,bob,10.0.0.1\n")
    a, b = read_leases(path, "radius")
    assert (a.subscriber_id, a.end_ms - a.start_ms, a.line) == ("alice", 600_000, 2)
    assert (b.subscriber_id, b.end_ms, b.line) == ("bob", None, 5)


def test_a_bad_file_imports_nothing_and_a_file_imports_once(tmp_path):
    db = tmp_path / "r.db"
    bad = tmp_path / "bad.csv"
    bad.write_text("subscriber_id,address,start,end\nal,10.0.0.1,2026-01-01,\nbo,10.0.0.x,2026-01-01,\n")
    res = vpnid("leases", "import", "--db", str(db), "--kind", "dhcp", str(bad))
    assert res.returncode == 1
    assert res.stderr == (f"vpnid: error: {bad}:3: address '10.0.0.x' is not an IPv4 or IPv6 address\n"
                          "vpnid: error: nothing imported (1 problem)\n")
    good = tmp_path / "good.csv"
    good.write_text("subscriber_id,address,start,end\nal,10.0.0.1,2026-01-01,\n")
    assert vpnid("leases", "import", "--db", str(db), "--kind", "dhcp", str(good)).returncode == 0
    again = vpnid("leases", "import", "--db", str(db), "--kind", "dhcp", str(good))
    assert again.returncode == 1 and f"vpnid: error: {good}: these bytes were imported already (import 1, " in again.stderr
    assert sqlite3.connect(db).execute("SELECT count(*) FROM leases").fetchone() == (1,)
    who = vpnid("leases", "who", "--db", str(db), "10.0.0.1", "2026-06-01")
    assert who.stdout.startswith("al  dhcp  10.0.0.1  2026-01-01T00:00:00Z .. open")


def test_untrusted_subscriber_text_is_printed_escaped(tmp_path):
    db = tmp_path / "r.db"
    log = tmp_path / "log.csv"
    log.write_text("event,time,session_id,subscriber_id,framed_ip\nstart,2026-01-01,\x1b[31m,al,10.0.0.1\n")
    assert vpnid("leases", "import", "--db", str(db), "--kind", "radius", str(log)).returncode == 0
    evil = tmp_path / "e\x1b]8;;x\x07.csv"
    evil.write_text("subscriber_id,address,start,end\nal,10.0.0.2,2026-01-01,\n")
    res = vpnid("leases", "import", "--db", str(db), "--kind", "dhcp", str(evil))
    assert "\x1b" not in res.stdout and "e\\x1b]8;;x\\x07.csv" in res.stdout


# ---------------------------------------------------------------------------------------- vectorised
def _index(rows):
    """rows: (kind, subscriber, address, port_first, port_last, start, end or None)."""
    from vpnid.classifier.audit.leases.attribute import OPEN_END
    k, s, a, pf, pl, st, en = zip(*rows)
    return LeaseIndex.build(columns(k, s, [packed(ipaddress.ip_address(x)) for x in a], pf, pl, st,
                                    [OPEN_END if e is None else e for e in en]))


def _ends(addresses, ports, times):
    ips = [ipaddress.ip_address(a) for a in addresses]
    v6 = np.array([ip.version == 6 for ip in ips])
    ints = [int(ip) for ip in ips]
    return (v6, np.array([i >> 64 for i in ints], np.uint64), np.array([i & ((1 << 64) - 1) for i in ints], np.uint64),
            np.array(ports, np.int64), np.array(times, np.int64))


def test_attribution_finds_holders_gaps_and_overlaps_without_guessing():
    idx = _index([
        ("dhcp", "alice", "10.0.0.1", -1, -1, 0, 100), ("dhcp", "bob", "10.0.0.1", -1, -1, 100, 200),
        ("dhcp", "erin", "10.0.0.2", -1, -1, 0, 1000), ("radius", "frank", "10.0.0.2", -1, -1, 50, 60),
        ("dhcp", "gina", "10.0.0.3", -1, -1, 0, 1000), ("radius", "gina", "10.0.0.3", -1, -1, 10, None),
        ("cgnat", "carol", "203.0.113.5", 1024, 2047, 0, None), ("cgnat", "dave", "203.0.113.5", 2048, 3071, 0, 500),
        ("dhcp", "v6", "2001:db8::1", -1, -1, 0, None),
    ])
    names = idx.columns.subscribers
    a = idx.attribute(*_ends(["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3",
                              "203.0.113.5", "203.0.113.5", "203.0.113.5", "203.0.113.5", "192.0.2.1", "2001:db8::1"],
                             [0, 0, 0, 0, 0, 0, 1500, 2048, 2048, 80, 0, 0],
                             [99, 100, 200, 55, 70, 20, 10, 499, 500, 10, 10, 5]))
    got = [(names[s] if s >= 0 else None, int(b), int(i)) for s, b, i in zip(a.subscriber, a.by, a.issue)]
    assert got == [("alice", BY_LEASE, NO_ISSUE), ("bob", BY_LEASE, NO_ISSUE), (None, 0, GAP),
                   (None, 0, OVERLAP), ("erin", BY_LEASE, NO_ISSUE), ("gina", BY_LEASE, NO_ISSUE),
                   ("carol", BY_CGNAT, NO_ISSUE), ("dave", BY_CGNAT, NO_ISSUE), (None, 0, GAP), (None, 0, GAP),
                   (None, 0, NO_ISSUE), ("v6", BY_LEASE, NO_ISSUE)]
    assert a.candidates == {3: ("erin", "frank")}


def test_vectorised_attribution_agrees_with_brute_force():
    rnd = np.random.default_rng(3)
    rows = []
    for i in range(400):
        addr = f"10.0.{rnd.integers(4)}.{rnd.integers(8)}"
        start = int(rnd.integers(0, 1000))
        rows.append(("dhcp", f"s{rnd.integers(12)}", addr, -1, -1, start, start + int(rnd.integers(1, 200))))
    idx = _index(rows)
    addrs = [f"10.0.{rnd.integers(5)}.{rnd.integers(8)}" for _ in range(2000)]
    times = rnd.integers(-10, 1300, 2000)
    a = idx.attribute(*_ends(addrs, [0] * 2000, times))
    for k, (addr, t) in enumerate(zip(addrs, times)):
        holders = {s for _, s, x, _, _, st, en in rows if x == addr and st <= t < en}
        known = any(x == addr for _, _, x, *_ in rows)
        n = len(holders)
        want = (next(iter(holders)) if n == 1 else None, OVERLAP if n > 1 else GAP if known and not n else NO_ISSUE)
        got = (idx.columns.subscribers[a.subscriber[k]] if a.subscriber[k] >= 0 else None, int(a.issue[k]))
        assert got == want, (addr, t)


# ------------------------------------------------------------------------------- lab capture, end to end
CLIENT_DYN, CLIENT_STATIC, CGNAT_PUBLIC, CLIENT_NOBODY = "100.64.0.9", "192.0.2.10", "203.0.113.5", "100.64.0.10"
# (client, source port, server port, start offset s): the dynamic address changes hands at T0 + 300
FLOWS = [(CLIENT_DYN, 40000, 51820, 0), (CLIENT_DYN, 40001, 51820, 600), (CGNAT_PUBLIC, 40500, 51820, 100),
         (CGNAT_PUBLIC, 41500, 51820, 110), (CLIENT_STATIC, 40002, 51820, 120), (CLIENT_DYN, 40003, 51820, 1000),
         (CLIENT_NOBODY, 40004, 51820, 130)]


def _capture(path):
    pkts = []
    for k, (client, sport, dport, offset) in enumerate(FLOWS):
        for i, (direction, payload) in enumerate(tb.wireguard_session(n_data=5, seed=k + 1)):
            src, dst, sp, dp = (client, SERVER, sport, dport) if direction == 0 else (SERVER, client, dport, sport)
            p = Ether(**MACS) / IP(src=src, dst=dst) / UDP(sport=sp, dport=dp) / Raw(payload)
            p.time = T0 + offset + i * 0.01
            pkts.append(p)
    pkts.sort(key=lambda p: p.time)
    wrpcap(str(path), pkts)
    return path


@pytest.fixture(scope="module")
def lab_trial(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leases")
    reg = tmp / "reg.csv"
    reg.write_text(HEADER + row(registration_id="BOB-1", client_networks="", subscriber_id="bob",
                                server_endpoints=f"{SERVER}/32:51820", protocol="wireguard")
                   + row(registration_id="ALICE-OLD", client_networks="", account_id="alice", status="revoked",
                         server_endpoints=f"{SERVER}/32:1194")
                   + row(registration_id="CAROL-1", client_networks="", phone="+15550100007", protocol="any",
                         server_endpoints=f"{SERVER}/32:51820")
                   + row(registration_id="STATIC-1", client_networks=f"{CLIENT_STATIC}/32", protocol="wireguard",
                         server_endpoints=""))
    dhcp = tmp / "dhcp.csv"
    dhcp.write_text("subscriber_id,address,start,end\n"
                    f"alice,{CLIENT_DYN},{iso(T0 - 60)},{iso(T0 + 300)}\nbob,{CLIENT_DYN},{iso(T0 + 300)},{iso(T0 + 900)}\n"
                    f"erin,{CLIENT_NOBODY},{iso(T0)},{iso(T0 + 200)}\n")
    radius = tmp / "acct.csv"
    radius.write_text("event,time,session_id,subscriber_id,framed_ip\n"
                      f"start,{iso(T0 + 50)},S9,frank,{CLIENT_NOBODY}\nstop,{iso(T0 + 150)},S9,frank,{CLIENT_NOBODY}\n")
    cgnat = tmp / "cgnat.csv"
    cgnat.write_text("subscriber_id,private_address,public_address,port_first,port_last,start,end\n"
                     f"+15550100007,100.65.0.7,{CGNAT_PUBLIC},40000,40999,{iso(T0 - 60)},\n"
                     f"dave,100.65.0.8,{CGNAT_PUBLIC},41000,41999,{iso(T0 - 60)},{iso(T0 + 3600)}\n")
    db = tmp / "r.db"
    with open_store(str(db)) as store:
        store.upsert(read_csv(reg))
    for kind, path in (("dhcp", dhcp), ("radius", radius), ("cgnat", cgnat)):
        res = vpnid("leases", "import", "--db", str(db), "--kind", kind, str(path))
        assert res.returncode == 0, res.stderr
    with open_store(str(db)) as store:
        trials = TrialStore(store)
        trials.run("lab", [str(_capture(tmp / "lab.pcap"))], Options())
        results = {(r.record["src_ip"], r.record["src_port"]): r for r in trials.results("lab")}
    return db, results


def test_lab_capture_is_attributed_per_flow_through_dhcp_radius_and_cgnat(lab_trial):
    _, results = lab_trial
    got = {k: (r.record["subscriber_id"], r.record["registry"], r.record["registration_id"], r.attributed_by,
               r.attribution_issue, r.closest_registration) for k, r in results.items()}
    assert got == {
        (CLIENT_DYN, 40000): ("alice", "unregistered", None, "lease", None, "ALICE-OLD"),  # before the hand-over
        (CLIENT_DYN, 40001): ("bob", "registered", "BOB-1", "lease", None, None),  # after it
        (CGNAT_PUBLIC, 40500): ("+15550100007", "registered", "CAROL-1", "cgnat", None, None),  # by phone
        (CGNAT_PUBLIC, 41500): ("dave", "unregistered", None, "cgnat", None, None),
        (CLIENT_STATIC, 40002): (None, "registered", "STATIC-1", "network", None, None),
        (CLIENT_DYN, 40003): (None, "unregistered", None, "none", "gap", None),  # after bob's lease ended
        (CLIENT_NOBODY, 40004): (None, "unregistered", None, "none", "overlap: erin frank", None),
    }


def test_classify_db_attributes_like_the_trial(lab_trial, tmp_path):
    """`vpnid classify --db` loads the same lease logs: each tunnel flow gets the trial's subscriber and verdict."""
    db, results = lab_trial
    res = vpnid("classify", "--db", str(db), "--format", "jsonl", str(_capture(tmp_path / "lab.pcap")))
    assert res.returncode == 0, res.stderr
    got = {(r["src_ip"], r["src_port"]): (r["subscriber_id"], r["registry"], r["registration_id"])
           for r in map(json.loads, res.stdout.splitlines()) if r["label"] != "none"}
    assert got == {k: (r.record["subscriber_id"], r.record["registry"], r.record["registration_id"])
                   for k, r in results.items() if r.record["label"] != "none"}
    assert got[(CLIENT_DYN, 40001)] == ("bob", "registered", "BOB-1")


def test_trial_subscribers_lists_who_ran_unregistered_tunnels_and_exports_csv(lab_trial, tmp_path):
    db, _ = lab_trial
    res = vpnid("trial", "subscribers", "lab", "--db", str(db), "--csv", str(tmp_path / "subs.csv"))
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "subs.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == ("subscriber_id,attributed_by,label,server,verdict,flows,duration_s,bytes,first_seen,"
                        "last_seen,closest_registration")
    assert [ln.split(",")[:6] for ln in lines[1:]] == [["alice", "lease", "wireguard", f"{SERVER}:51820/udp",
                                                         "unregistered", "1"],
                                                        ["dave", "cgnat", "wireguard", f"{SERVER}:51820/udp",
                                                         "unregistered", "1"]]
    assert lines[1].endswith(",ALICE-OLD") and lines[2].endswith(",")
    assert "alice" in res.stdout and "ALICE-OLD" in res.stdout and "2 flagged flows not attributed" in res.stdout
