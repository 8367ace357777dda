"""Lease intervals in the registry's database (a `leases` extension of its schema), imported all or
nothing, indexed for interval look-ups (by address and start time), and loaded as a `LeaseIndex`.

Addresses are stored as 16 bytes (IPv4 as ::ffff:a.b.c.d), so the index orders them and the loader
reads them into (hi, lo) halves without parsing text. A file is imported once: its sha256 is kept
with the import, and the same bytes again are refused (they would only duplicate every interval).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from vpnid.classifier.audit.leases.attribute import KINDS, OPEN_END, V4_HI, LeaseColumns, LeaseIndex
from vpnid.classifier.audit.leases.layouts import Address, Lease
from vpnid.classifier.audit.registry import migrate
from vpnid.classifier.audit.registry.store import SqliteStore, StoreError

SCHEMA = "leases"
STEPS: list[migrate.Step] = [
    # 1: imports (which file, when) and their intervals; end_ms NULL = open
    """
    CREATE TABLE lease_imports (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        intervals INTEGER NOT NULL
    );
    CREATE TABLE leases (
        import_id INTEGER NOT NULL REFERENCES lease_imports (id),
        line INTEGER NOT NULL,
        kind TEXT NOT NULL,
        subscriber_id TEXT NOT NULL,
        address BLOB NOT NULL,
        port_first INTEGER,
        port_last INTEGER,
        private_address BLOB,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER
    );
    CREATE INDEX leases_address_start ON leases (address, start_ms);
    CREATE INDEX leases_private_start ON leases (private_address, start_ms) WHERE private_address IS NOT NULL;
    CREATE INDEX leases_start_end ON leases (start_ms, end_ms);
    CREATE INDEX leases_subscriber ON leases (subscriber_id);
    """,
]
migrate.register(SCHEMA, STEPS)
_V4_MAPPED = bytes(10) + b"\xff\xff"


def packed(address: Address) -> bytes:
    """16 bytes that sort as addresses do (IPv4 as an IPv4-mapped IPv6 address)."""
    return _V4_MAPPED + address.packed if address.version == 4 else address.packed


def unpacked(blob: bytes) -> Address:
    return ipaddress.ip_address(blob[12:]) if blob[:12] == _V4_MAPPED else ipaddress.ip_address(blob)


@dataclass(frozen=True, slots=True)
class LeaseImport:
    id: int
    at: str
    kind: str
    source: str
    sha256: str
    intervals: int


@dataclass(frozen=True, slots=True)
class Holder:
    """A lease that held an address at a time (what `vpnid leases who` prints)."""

    kind: str
    subscriber_id: str
    address: Address
    port_first: int | None
    port_last: int | None
    private_address: Address | None
    start_ms: int
    end_ms: int | None
    source: str
    line: int


class LeaseStore:
    """Leases in a registry database (SQLite: it needs the store's connection)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.conn = store.conn

    def imports(self) -> list[LeaseImport]:
        return [LeaseImport(*row) for row in self.conn.execute(
            "SELECT id, at, kind, source, sha256, intervals FROM lease_imports ORDER BY id")]

    def add(self, kind: str, source: str | Path, leases: Sequence[Lease]) -> LeaseImport:
        """Store one file's intervals in one transaction; StoreError if the same bytes were imported."""
        with open(source, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        with self.store.transaction() as conn:
            seen = conn.execute("SELECT id, at, source FROM lease_imports WHERE sha256 = ?", (sha,)).fetchone()
            if seen:
                raise StoreError(f"{source}: these bytes were imported already (import {seen[0]}, {seen[2]}, at "
                                 f"{seen[1]}); nothing imported")
            import_id = conn.execute("INSERT INTO lease_imports (at, kind, source, sha256, intervals) "
                                     "VALUES (?, ?, ?, ?, ?)", (at, kind, str(source), sha, len(leases))).lastrowid
            conn.executemany(
                "INSERT INTO leases (import_id, line, kind, subscriber_id, address, port_first, port_last, "
                "private_address, start_ms, end_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(import_id, x.line, x.kind, x.subscriber_id, packed(x.address), x.port_first, x.port_last,
                  packed(x.private_address) if x.private_address else None, x.start_ms, x.end_ms) for x in leases])
        return LeaseImport(import_id, at, kind, str(source), sha, len(leases))

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM leases").fetchone()[0]

    def holders(self, address: Address, t_ms: int, port: int | None = None) -> list[Holder]:
        """Every lease holding `address` (as the public address of a port block holding `port`, or as a
        CGNAT private address) at t_ms, by the indexes."""
        key = packed(address)
        cur = self.conn.execute(
            "SELECT l.kind, l.subscriber_id, l.address, l.port_first, l.port_last, l.private_address, l.start_ms, "
            "l.end_ms, i.source, l.line FROM leases l JOIN lease_imports i ON i.id = l.import_id "
            "WHERE (l.address = ?1 OR l.private_address = ?1) AND l.start_ms <= ?2 "
            "AND (l.end_ms IS NULL OR l.end_ms > ?2) ORDER BY l.start_ms, l.subscriber_id", (key, t_ms))
        out = []
        for kind, sub, addr, pf, pl, priv, start, end, source, line in cur:
            on_public = addr == key
            if on_public and pf is not None and port is not None and not pf <= port <= pl:
                continue
            out.append(Holder(kind, sub, unpacked(addr), pf, pl, unpacked(priv) if priv else None, start, end,
                              source, line))
        return out

    def index(self, start_ms: int | None = None, end_ms: int | None = None) -> LeaseIndex | None:
        """Every interval meeting [start_ms, end_ms) (None: unbounded) as a LeaseIndex; None when the
        database holds no lease. A CGNAT block's private address is a lease of its own too."""
        conds, params = [], []
        if end_ms is not None:
            conds.append("start_ms < ?")
            params.append(end_ms)
        if start_ms is not None:
            conds.append("(end_ms IS NULL OR end_ms > ?)")
            params.append(start_ms)
        where = f"WHERE {' AND '.join(conds)}" if conds else ""
        rows = self.conn.execute("SELECT kind, subscriber_id, address, coalesce(port_first, -1), "
                                 "coalesce(port_last, -1), private_address, start_ms, coalesce(end_ms, ?) "
                                 f"FROM leases {where}", (OPEN_END, *params)).fetchall()
        if not rows:
            return None
        private = [r for r in rows if r[5] is not None]
        kind, sub, addr, pf, pl, _priv, start, end = zip(*rows, *[(r[0], r[1], r[5], -1, -1, None, r[6], r[7])
                                                               for r in private]) if private else zip(*rows)
        return LeaseIndex.build(columns(kind, sub, addr, pf, pl, start, end))


def columns(kind: Sequence[str], subscriber: Sequence[str], address: Sequence[bytes], port_first: Sequence[int],
            port_last: Sequence[int], start: Sequence[int], end: Sequence[int]) -> LeaseColumns:
    """LeaseColumns from per-interval values (addresses as `packed` bytes, end OPEN_END when open)."""
    names, sub = np.unique(np.array(subscriber, dtype=object).astype(str), return_inverse=True)
    halves = np.frombuffer(b"".join(address), ">u8").reshape(-1, 2).astype(np.uint64)
    hi, lo = halves[:, 0], halves[:, 1]
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    kinds = {k: i for i, k in enumerate(KINDS)}
    return LeaseColumns(np.array([kinds[k] for k in kind], np.int8), sub.reshape(-1).astype(np.int64),
                        tuple(names.tolist()), np.where(v4, V4_HI, hi), np.where(v4, lo & np.uint64(0xFFFFFFFF), lo),
                        np.array(port_first, np.int64), np.array(port_last, np.int64), np.array(start, np.int64),
                        np.array(end, np.int64))
