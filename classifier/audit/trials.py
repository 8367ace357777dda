"""Trial runs: classify captures, cross-check every tunnel against the registry, and keep the result.

A trial is stored in the registry's own database (its schema is a `trials` extension of it), with what
an audit must be able to show later: its parameters, the registry's state time (`changed_at`, read in
the same transaction as the registrations it used), the model file's name and sha256 (or none:
signatures only), each capture's size, mtime and sha256 as it was read, every flow's record and
verdict, and which tunnels it flagged (a tunnel flow whose registry verdict is anything but
`registered`).

Re-running a trial replaces it atomically without holding the database's write lock while captures
are read: the new run's flows are written under a `running` row that no reader looks at, and one short
transaction then deletes the old trial and marks the new one `done`. Readers that read inside
`TrialStore.reading()` see the old trial or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from vpnid.classifier.audit.leases.store import LeaseStore
from vpnid.classifier.audit.registry import migrate
from vpnid.classifier.audit.registry.match import Matcher, RegistryVerdict
from vpnid.classifier.audit.registry.registration import Registration
from vpnid.classifier.audit.registry.store import SqliteStore
from vpnid.classifier.running.pipeline import Options, Warn, classify_capture
from vpnid.classifier.running.records import FlowRecord
from vpnid.features.families import NONE
from vpnid.features.packets import CaptureError

SCHEMA = "trials"
STEPS: list[migrate.Step] = [
    # 1: trials and their per-flow results; a run writes under state 'running' and becomes 'done' at once
    """
    CREATE TABLE trials (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'done')),
        started_at TEXT NOT NULL,
        finished_at TEXT,
        parameters TEXT NOT NULL,
        registry_snapshot TEXT,
        model_version TEXT,
        flows INTEGER NOT NULL DEFAULT 0,
        tunnels INTEGER NOT NULL DEFAULT 0,
        flagged INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX trials_done_name ON trials (name) WHERE state = 'done';
    CREATE TABLE trial_flows (
        trial_id INTEGER NOT NULL REFERENCES trials (id),
        seq INTEGER NOT NULL,
        flow_id TEXT NOT NULL,
        label TEXT NOT NULL,
        registry TEXT,
        registration_id TEXT,
        organization TEXT,
        client_network TEXT,
        flagged INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (trial_id, seq)
    );
    CREATE INDEX trial_flows_flagged ON trial_flows (trial_id, flagged);
    """,
    # 2: what a report must be able to check later: the model file's sha256 (model_version holds its
    # name) and each capture as it was read; trials from before have neither (NULL, no rows)
    """
    ALTER TABLE trials ADD COLUMN model_sha256 TEXT;
    CREATE TABLE trial_captures (
        trial_id INTEGER NOT NULL REFERENCES trials (id),
        seq INTEGER NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (trial_id, seq)
    );
    """,
    # 3: attribution through lease logs (issue 15); trials from before have NULLs (attributed by network)
    """
    ALTER TABLE trial_flows ADD COLUMN subscriber_id TEXT;
    ALTER TABLE trial_flows ADD COLUMN attributed_by TEXT;
    ALTER TABLE trial_flows ADD COLUMN attribution_issue TEXT;
    ALTER TABLE trial_flows ADD COLUMN closest_registration TEXT;
    CREATE INDEX trial_flows_subscriber ON trial_flows (trial_id, subscriber_id) WHERE subscriber_id IS NOT NULL;
    """,
]
migrate.register(SCHEMA, STEPS)

REGISTERED = "registered"
STARTED_AGAIN = "trial {!r} was started again while this run was writing it"
BATCH = 5000  # flows per insert transaction while a run is writing
# Client end of an unregistered tunnel, summarised for the report: /24 for IPv4, /64 for IPv6.
CLIENT_PREFIX = {4: 24, 6: 64}


class TrialError(Exception):
    """The trial cannot be run or found; the message says why."""


@dataclass(frozen=True, slots=True)
class Trial:
    name: str
    started_at: str  # UTC ISO 8601
    finished_at: str
    parameters: dict  # captures, time window, flow options
    registry_snapshot: str | None  # the registry's last change before the run (None: empty registry)
    model_version: str | None  # the model file's name; None: signatures only
    flows: int
    tunnels: int
    flagged: int
    model_sha256: str | None  # of the model file (None: signatures only, or a trial from before it was kept)


@dataclass(frozen=True, slots=True)
class Capture:
    """A capture as a trial read it, so a report can tell whether the file is still the same."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: str) -> Capture:
        """The file's size, mtime and sha256 (OSError if it cannot be read)."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return cls(path, st.st_size, st.st_mtime_ns, hashlib.file_digest(f, "sha256").hexdigest())

    def unchanged(self) -> bool:
        """Is the file at `path` still this one, byte for byte?"""
        try:
            return Capture.of(self.path) == self
        except OSError:
            return False

    def still_as_read(self) -> bool:
        """The cheap check after a read: same size and mtime."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


@dataclass(frozen=True, slots=True)
class FlowResult:
    """One flow of a trial: its record (as JSONL has it, registry fields included) and attribution."""

    record: dict
    organization: str | None  # of the deciding registration, as the registry named it at run time
    # that registration's client network holding the flow's client end; for an unregistered tunnel the
    # initiator's CLIENT_PREFIX network
    client_network: str | None
    flagged: bool
    attributed_by: str | None = None  # network | lease | cgnat | none (None: a trial from before leases)
    attribution_issue: str | None = None  # 'gap', 'overlap: A B' or None
    closest_registration: str | None = None  # for a flow no registration covers: the nearest one


@dataclass(frozen=True, slots=True)
class Window:
    """Flows kept by a trial: first_seen within [start, end) (epoch seconds; None: unbounded)."""

    start: float | None = None
    end: float | None = None

    def __contains__(self, first_seen: float) -> bool:
        return (self.start is None or first_seen >= self.start) and (self.end is None or first_seen < self.end)


def parse_time(text: str) -> float:
    """An ISO 8601 date or time as epoch seconds; without a zone it is UTC (captures' clocks are)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise TrialError(f"{text!r} is not an ISO time (e.g. 2025-03-01 or 2025-03-01T12:00:00+05:00)") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _attributed(v: RegistryVerdict | None) -> tuple[str | None, str | None, str | None, str | None]:
    """subscriber_id, attributed_by, attribution_issue, closest_registration, as trial_flows keeps them."""
    return (None, None, None, None) if v is None else (v.subscriber_id, v.attributed_by, v.attribution_issue,
                                                       v.closest)


def _attribution(r: FlowRecord, regs: dict[str, Registration]) -> tuple[str | None, str | None]:
    if r.registration_id is not None:
        reg = regs[r.registration_id]
        ends = [ipaddress.ip_address(r.src_ip), ipaddress.ip_address(r.dst_ip)]
        net = next((n for n in reg.client_networks for a in ends if a.version == n.version and a in n), None)
        return reg.organization, str(net) if net else None
    if r.registry is None:
        return None, None
    client = ipaddress.ip_address(r.src_ip)
    return None, str(ipaddress.ip_network(f"{client}/{CLIENT_PREFIX[client.version]}", strict=False))


class TrialStore:
    """Trials in a registry database (SQLite: it needs the store's connection)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.conn = store.conn

    @contextmanager
    def reading(self) -> Iterator[TrialStore]:
        """One read transaction: every read inside sees the same state of the database."""
        self.conn.execute("BEGIN")
        try:
            yield self
        finally:
            self.conn.execute("COMMIT")

    # ---------------------------------------------------------------- running
    def run(self, name: str, captures: Sequence[str], opts: Options | None = None, window: Window = Window(),
            model: tuple[str, str | None] | None = None, progress: Callable[[str, int], None] = lambda _p, _n: None,
            warn: Warn = lambda _m: None) -> Trial:
        """Classify `captures` with the registry's current registrations and store the trial as `name`,
        replacing a trial of that name only once the run has finished. `model`: the (file name, sha256)
        of `opts.model`. `progress(capture, flows)` is called as flows are stored. A capture that cannot
        be read, or changes while it is read, aborts the run (CaptureError, TrialError) and leaves any
        earlier trial of that name as it was."""
        opts = opts or Options()
        if opts.model is not None and model is None:
            model = ("unidentified model", None)  # a model ran: never 'signatures only'
        leases = LeaseStore(self.store)
        with self.reading():  # the snapshot time of exactly the registrations (and leases) used
            regs = {r.registration_id: r for r in self.store.select()}
            snapshot = self.store.changed_at()
            index = leases.index(*(None if t is None else int(t * 1000) for t in (window.start, window.end)))
            lease_imports = [i.id for i in leases.imports()]
        # the trial checks each batch itself (not the pipeline): it keeps the attribution too
        matcher = Matcher.build(list(regs.values()), index)
        opts = replace(opts, matcher=None)
        captures = [str(Path(c).resolve()) for c in captures]
        parameters = {"captures": captures, "from": window.start, "to": window.end,
                      "idle_timeout": opts.idle_timeout, "active_timeout": opts.active_timeout,
                      "max_flows": opts.max_flows, "drop_first": opts.drop_first, "lease_imports": lease_imports}
        trial_id = self._begin(name, parameters, snapshot, model)
        try:
            *counts, read = self._store_flows(trial_id, name, captures, opts, window, regs, matcher, progress, warn)
            return self._finish(trial_id, name, *counts, read)
        except BaseException:
            with self.store.transaction() as conn:
                self._delete(conn, "id = ?", (trial_id,))
            raise

    def _begin(self, name: str, parameters: dict, snapshot: str | None, model: tuple[str, str | None] | None) -> int:
        # A random id, never a recycled one: a run of the same name still writing (its row deleted below)
        # must find its trial gone, not write into this one.
        trial_id = secrets.randbits(62)
        with self.store.transaction() as conn:
            self._delete(conn, "name = ? AND state = 'running'", (name,))  # left by a run that was killed
            conn.execute("INSERT INTO trials (id, name, state, started_at, parameters, registry_snapshot, "
                         "model_version, model_sha256) VALUES (?, ?, 'running', ?, ?, ?, ?, ?)",
                         (trial_id, name, _now(), json.dumps(parameters), snapshot, *(model or (None, None))))
        return trial_id

    def _store_flows(self, trial_id: int, name: str, captures: list[str], opts: Options, window: Window,
                     regs: dict[str, Registration], matcher: Matcher, progress: Callable[[str, int], None],
                     warn: Warn) -> tuple[int, int, int, list[Capture]]:
        flows = tunnels = flagged = 0
        read = []
        pending: list[FlowRecord] = []

        def store(path: str) -> None:
            nonlocal flows, tunnels, flagged
            batch: list[tuple] = []
            for r, v in zip(pending, matcher.check(pending)):
                if v is not None:
                    r.registry, r.registration_id, r.subscriber_id = v.registry, v.registration_id, v.subscriber_id
                is_flagged = r.label != NONE and r.registry != REGISTERED
                batch.append((trial_id, flows, r.flow_id, r.label, r.registry, r.registration_id,
                              *_attribution(r, regs), is_flagged, r.first_seen, json.dumps(r.as_dict()),
                              *_attributed(v)))
                flows, tunnels, flagged = flows + 1, tunnels + (r.label != NONE), flagged + is_flagged
            pending.clear()
            self._insert(trial_id, name, batch)
            progress(path, flows)

        for path in captures:
            try:
                read.append(capture := Capture.of(path))
            except OSError as e:
                raise CaptureError(f"{path}: {e.strerror}") from None
            for r in classify_capture(path, opts, warn=warn):
                if r.first_seen not in window:
                    continue
                pending.append(r)
                if len(pending) >= BATCH:
                    store(path)
            store(path)
            if not capture.still_as_read():
                raise TrialError(f"{path}: the capture changed while the trial read it; run the trial again")
        return flows, tunnels, flagged, read

    def _insert(self, trial_id: int, name: str, rows: list[tuple]) -> None:
        with self.store.transaction() as conn:
            if conn.execute("SELECT 1 FROM trials WHERE id = ?", (trial_id,)).fetchone() is None:
                raise TrialError(STARTED_AGAIN.format(name))
            conn.executemany("INSERT INTO trial_flows (trial_id, seq, flow_id, label, registry, registration_id, "
                             "organization, client_network, flagged, first_seen, record, subscriber_id, "
                             "attributed_by, attribution_issue, closest_registration) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        rows.clear()

    def _finish(self, trial_id: int, name: str, flows: int, tunnels: int, flagged: int,
                read: list[Capture]) -> Trial:
        with self.store.transaction() as conn:
            self._delete(conn, "name = ? AND state = 'done'", (name,))
            conn.executemany("INSERT INTO trial_captures (trial_id, seq, path, size, mtime_ns, sha256) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             [(trial_id, i, c.path, c.size, c.mtime_ns, c.sha256) for i, c in enumerate(read)])
            if conn.execute("UPDATE trials SET state = 'done', finished_at = ?, flows = ?, tunnels = ?, flagged = ? "
                            "WHERE id = ? AND state = 'running'",
                            (_now(), flows, tunnels, flagged, trial_id)).rowcount != 1:
                raise TrialError(STARTED_AGAIN.format(name))
        trial = self.get(name)
        assert trial is not None
        return trial

    @staticmethod
    def _delete(conn: sqlite3.Connection, where: str, params: tuple) -> None:
        ids = [row[0] for row in conn.execute(f"SELECT id FROM trials WHERE {where}", params)]
        for table in ("trial_flows", "trial_captures"):
            conn.executemany(f"DELETE FROM {table} WHERE trial_id = ?", [(i,) for i in ids])
        conn.executemany("DELETE FROM trials WHERE id = ?", [(i,) for i in ids])

    # ---------------------------------------------------------------- reading
    _DONE_FLOWS = "trial_flows f JOIN trials t ON t.id = f.trial_id WHERE t.name = ? AND t.state = 'done'"
    _COLUMNS = ("name, started_at, finished_at, parameters, registry_snapshot, model_version, flows, tunnels, flagged, "
                "model_sha256")

    def _trial(self, row: tuple) -> Trial:
        return Trial(*row[:3], json.loads(row[3]), *row[4:])

    def list(self) -> list[Trial]:
        return [self._trial(row) for row in self.conn.execute(
            f"SELECT {self._COLUMNS} FROM trials WHERE state = 'done' ORDER BY name")]

    def get(self, name: str) -> Trial | None:
        row = self.conn.execute(f"SELECT {self._COLUMNS} FROM trials WHERE state = 'done' AND name = ?",
                                (name,)).fetchone()
        return self._trial(row) if row else None

    def require(self, name: str) -> Trial:
        trial = self.get(name)
        if trial is None:
            known = ", ".join(t.name for t in self.list()) or "none yet"
            raise TrialError(f"no trial named {name!r} in {self.store.location} (trials: {known})")
        return trial

    def results(self, name: str, flagged_only: bool = False) -> Iterator[FlowResult]:
        """The trial's flows in the order they were classified."""
        cur = self.conn.execute(
            f"SELECT f.record, f.organization, f.client_network, f.flagged, f.attributed_by, f.attribution_issue, "
            f"f.closest_registration FROM {self._DONE_FLOWS} {'AND f.flagged' if flagged_only else ''} "
            "ORDER BY f.seq", (name,))
        for record, organization, network, flagged, by, issue, closest in cur:
            yield FlowResult(json.loads(record), organization, network, bool(flagged), by, issue, closest)

    def captures(self, name: str) -> list[Capture]:
        """The captures as the trial read them (none for a trial from before they were kept)."""
        return [Capture(*row) for row in self.conn.execute(
            "SELECT c.path, c.size, c.mtime_ns, c.sha256 FROM trial_captures c JOIN trials t ON t.id = c.trial_id "
            "WHERE t.name = ? AND t.state = 'done' ORDER BY c.seq", (name,))]

    def mix(self, name: str) -> list[tuple[str, str | None, int]]:
        """(label, registry verdict, flows) over the whole trial."""
        return self.conn.execute(f"SELECT f.label, f.registry, count(*) FROM {self._DONE_FLOWS} "
                                 "GROUP BY f.label, f.registry ORDER BY f.label, f.registry", (name,)).fetchall()

    def risks(self, name: str) -> dict[str, int]:
        """Flows per risk over the whole trial, tunnels or not (a record lists each of its risks once)."""
        rows = self.conn.execute(
            "SELECT r.value, count(*) FROM trial_flows f JOIN trials t ON t.id = f.trial_id, "
            "json_each(f.record, '$.risks') r WHERE t.name = ? AND t.state = 'done' "
            "GROUP BY r.value ORDER BY r.value", (name,)).fetchall()
        return dict(rows)


# ------------------------------------------------------------------------------------------ subscribers
@dataclass(frozen=True, slots=True)
class SubscriberUse:
    """One subscriber's use of one flagged tunnel (label and server end) in a trial."""

    subscriber_id: str
    attributed_by: str  # lease | cgnat
    label: str
    server: str  # address:port/transport
    verdict: str  # the worst-named verdict seen: unregistered, else the first flagged one
    flows: int
    duration_s: float  # summed over the flows
    bytes: int  # both directions
    first_seen: float
    last_seen: float
    closest_registration: str | None  # the deciding registration (expired, revoked...) or the nearest one


@dataclass(frozen=True, slots=True)
class SubscriberView:
    uses: list[SubscriberUse]  # by subscriber, then first seen
    unattributed: int  # flagged flows no subscriber was found for
    gaps: int  # of them: the address was known to the lease logs but nobody held it then
    overlaps: int  # of them: several subscribers held it at once


def _server_end(r: dict) -> str:
    host = f"[{r['dst_ip']}]" if ":" in r["dst_ip"] else r["dst_ip"]
    return f"{host}:{r['dst_port']}/{r['transport']}" if r["dst_port"] else f"{host}/{r['transport']}"


def subscriber_view(results: Iterable[FlowResult]) -> SubscriberView:
    """Flagged flows by subscriber and tunnel (from `results`, normally `results(name, flagged_only=True)`)."""
    groups: dict[tuple[str, str, str], list[FlowResult]] = {}
    unattributed = gaps = overlaps = 0
    for res in results:
        r = res.record
        if not res.flagged:
            continue
        if r.get("subscriber_id") is None:
            unattributed += 1
            issue = res.attribution_issue or ""
            gaps += issue == "gap"
            overlaps += issue.startswith("overlap")
            continue
        groups.setdefault((r["subscriber_id"], r["label"], _server_end(r)), []).append(res)
    uses = []
    for (sub, label, server), rs in groups.items():
        recs = [x.record for x in rs]
        verdicts = [r["registry"] for r in recs]
        closest = next((x.record["registration_id"] or x.closest_registration for x in rs
                        if x.record["registration_id"] or x.closest_registration), None)
        uses.append(SubscriberUse(
            sub, rs[0].attributed_by or "none", label, server,
            "unregistered" if "unregistered" in verdicts else verdicts[0], len(rs),
            sum(r["last_seen"] - r["first_seen"] for r in recs),
            sum(r["src2dst_bytes"] + r["dst2src_bytes"] for r in recs),
            min(r["first_seen"] for r in recs), max(r["last_seen"] for r in recs), closest))
    uses.sort(key=lambda u: (u.subscriber_id, u.first_seen, u.label, u.server))
    return SubscriberView(uses, unattributed, gaps, overlaps)


# ---------------------------------------------------------------------------------------------- compare
@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """An unregistered tunnel as the registry would have to list it: client address to server end."""

    label: str
    transport: str
    client: str
    server: str
    port: int  # 0 for portless transports (ESP, AH)

    def __str__(self) -> str:
        server = f"[{self.server}]" if ":" in self.server else self.server
        return f"{self.label} {self.client} -> {server}{f':{self.port}' if self.port else ''}/{self.transport}"


@dataclass(frozen=True, slots=True)
class Comparison:
    new: list[Endpoint]  # unregistered in B only
    persisting: list[Endpoint]  # in both
    gone: list[Endpoint]  # in A only
    new_subscribers: list[str] = field(default_factory=list)  # with a flagged tunnel in B only
    persisting_subscribers: list[str] = field(default_factory=list)  # in both
    gone_subscribers: list[str] = field(default_factory=list)  # in A only

    def as_json(self) -> dict:
        return {k: [asdict(e) | {"text": str(e)} for e in v] for k, v in
                (("new", self.new), ("persisting", self.persisting), ("gone", self.gone))} | {
            "subscribers": {"new": self.new_subscribers, "persisting": self.persisting_subscribers,
                            "gone": self.gone_subscribers}}


def unregistered_endpoints(results: Iterable[FlowResult]) -> set[Endpoint]:
    return {Endpoint(r["label"], r["transport"], r["src_ip"], r["dst_ip"], r["dst_port"])
            for r in (res.record for res in results) if r.get("registry") == "unregistered"}


def flagged_subscribers(results: Iterable[FlowResult]) -> set[str]:
    return {s for s in (res.record.get("subscriber_id") for res in results if res.flagged) if s is not None}


def compare(trials: TrialStore, a: str, b: str) -> Comparison:
    with trials.reading():
        trials.require(a), trials.require(b)
        flagged_a, flagged_b = list(trials.results(a, flagged_only=True)), list(trials.results(b, flagged_only=True))
    before, after = unregistered_endpoints(flagged_a), unregistered_endpoints(flagged_b)
    sub_a, sub_b = flagged_subscribers(flagged_a), flagged_subscribers(flagged_b)
    return Comparison(sorted(after - before), sorted(after & before), sorted(before - after),
                      sorted(sub_b - sub_a), sorted(sub_a & sub_b), sorted(sub_a - sub_b))
