"""Where registrations live: a small interface, and its SQLite implementation.

Everything else (CLI, matcher, trials) talks to `RegistryStore`, so a server database can be added later
as another implementation chosen by URL in `open_store`. SQLite is the default: one file in WAL mode, so
readers never block the writer and see a whole import or none of it; schema versions and migrations are
in `migrate` (the registry is the database's core schema; trial runs add theirs as an extension).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vpnid.classifier.audit.registry import ENV, migrate
from vpnid.classifier.audit.registry.registration import FIELDS, STATUSES, Registration, parse_registration

CORE_STEPS: list[migrate.Step] = [
    # 1: registrations, in their canonical text form (lists space-separated, dates ISO, '' = open end)
    """
    CREATE TABLE registrations (
        registration_id TEXT PRIMARY KEY,
        organization TEXT NOT NULL,
        category TEXT NOT NULL,
        protocol TEXT NOT NULL,
        client_networks TEXT NOT NULL,
        server_endpoints TEXT NOT NULL,
        valid_from TEXT NOT NULL,
        valid_until TEXT NOT NULL,
        status TEXT NOT NULL,
        notes TEXT NOT NULL
    );
    CREATE INDEX registrations_organization ON registrations (organization);
    """,
    # 2: a change log, so `show` tells an analyst when and how a registration changed and a trial can
    # record the registry's state time; rows that predate it are logged as present at migration time
    """
    CREATE TABLE registry_changes (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        registration_id TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX registry_changes_registration ON registry_changes (registration_id);
    INSERT INTO registry_changes (at, registration_id, action, detail)
        SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), registration_id, 'present',
               'registered before the change log existed'
        FROM registrations ORDER BY registration_id;
    """,
    # 3: registrations by subscriber (issue 15): who, as the operator keys subscribers; '' = not named, so
    # every registration from before is one by client network, as it was
    """
    ALTER TABLE registrations ADD COLUMN subscriber_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE registrations ADD COLUMN phone TEXT NOT NULL DEFAULT '';
    ALTER TABLE registrations ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
    CREATE INDEX registrations_subscriber ON registrations (subscriber_id) WHERE subscriber_id != '';
    """,
]
migrate.register(migrate.CORE, CORE_STEPS)

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


class StoreError(Exception):
    """The database cannot be opened or the operation cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Change:
    at: str  # UTC, ISO 8601
    action: str  # present | added | updated | active | suspended | revoked
    detail: str


@dataclass(slots=True)
class Upserted:
    """What an import did, by registration_id."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class RegistryStore(Protocol):
    location: str

    def get(self, registration_id: str) -> Registration | None: ...

    def select(self, organization: str | None = None, status: str | None = None,
               protocol: str | None = None, subscriber: str | None = None) -> list[Registration]:
        """Registrations sorted by id; `organization` matches a case-insensitive substring, `subscriber`
        any of a registration's subscriber keys exactly."""

    def add(self, reg: Registration) -> None:
        """Insert a new registration; StoreError if its id exists."""

    def upsert(self, regs: Iterable[Registration]) -> Upserted:
        """Insert or update in place, all in one transaction (nothing is stored if anything fails)."""

    def set_status(self, registration_id: str, status: str, reason: str = "") -> Registration: ...

    def history(self, registration_id: str) -> list[Change]: ...

    def changed_at(self) -> str | None:
        """Time of the last change to the registry (None when empty): the snapshot a trial saw."""

    def close(self) -> None: ...

    def __enter__(self) -> RegistryStore: ...

    def __exit__(self, *exc: object) -> None: ...


def db_location(explicit: str | None) -> str:
    """--db wins over $VPNID_DB; there is no default file, so nothing is created by surprise."""
    location = explicit or os.environ.get(ENV)
    if not location:
        raise StoreError(f"no registry database given: pass --db PATH or set {ENV}")
    return location


def sqlite_path(location: str) -> Path:
    """The file of a database location: a path, or a URL (`sqlite:///relative.db`, `sqlite:////absolute.db`)."""
    if "://" in location:
        scheme, _, rest = location.partition("://")
        if scheme != "sqlite":
            raise StoreError(f"{location}: unsupported database URL (only sqlite:/// URLs and file paths)")
        location = rest.removeprefix("/")
    return Path(location)


def open_store(location: str, create: bool = True) -> RegistryStore:
    """`location` as `sqlite_path` reads it. With create=False a missing database is an error instead
    of a new empty file."""
    return SqliteStore(sqlite_path(location), create)


def _create_private(path: Path) -> None:
    """An empty database file readable by its owner only, whatever the umask (it holds subscriber
    addresses); SQLite gives its -wal and -shm files the same mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # made meanwhile by another process
        return
    except OSError as e:
        raise StoreError(f"{path}: {e.strerror}") from None
    os.fchmod(fd, 0o600)
    os.close(fd)


class SqliteStore:
    def __init__(self, path: Path, create: bool = True) -> None:
        self.location = str(path)
        if not path.exists():
            if not create:
                raise StoreError(f"{path}: no such registry database (create it with 'vpnid registry import' "
                                 "or 'add')")
            _create_private(path)
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # a read: no lock when it is
                self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe in WAL
            migrate.upgrade(self.conn, self.location)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: {e}") from None
        except migrate.SchemaError as e:
            raise StoreError(str(e)) from None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE) so writers queue instead of deadlocking;
        the trials module writes its tables through it too."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---------------------------------------------------------------- reading
    def _rows(self, where: str = "", params: tuple = ()) -> list[Registration]:
        cur = self.conn.execute(f"SELECT {', '.join(FIELDS)} FROM registrations {where} ORDER BY registration_id",
                                params)
        return [parse_registration(dict(zip(FIELDS, row))) for row in cur]

    def get(self, registration_id: str) -> Registration | None:
        rows = self._rows("WHERE registration_id = ?", (registration_id,))
        return rows[0] if rows else None

    def select(self, organization: str | None = None, status: str | None = None,
               protocol: str | None = None, subscriber: str | None = None) -> list[Registration]:
        conds, params = [], []
        if subscriber:
            conds.append("? IN (subscriber_id, phone, account_id)")
            params.append(subscriber)
        if organization:
            conds.append("instr(lower(organization), lower(?)) > 0")
            params.append(organization)
        for column, value in (("status", status), ("protocol", protocol)):
            if value:
                conds.append(f"{column} = ?")
                params.append(value)
        return self._rows("WHERE " + " AND ".join(conds) if conds else "", tuple(params))

    def history(self, registration_id: str) -> list[Change]:
        cur = self.conn.execute("SELECT at, action, detail FROM registry_changes WHERE registration_id = ? "
                                "ORDER BY id", (registration_id,))
        return [Change(*row) for row in cur]

    def changed_at(self) -> str | None:
        return self.conn.execute("SELECT max(at) FROM registry_changes").fetchone()[0]

    # ---------------------------------------------------------------- writing
    def _log(self, conn: sqlite3.Connection, registration_id: str, action: str, detail: str = "") -> None:
        conn.execute(f"INSERT INTO registry_changes (at, registration_id, action, detail) VALUES ({_NOW}, ?, ?, ?)",
                     (registration_id, action, detail))

    def _write(self, conn: sqlite3.Connection, reg: Registration) -> None:
        row = reg.to_fields()
        conn.execute(f"INSERT OR REPLACE INTO registrations ({', '.join(FIELDS)}) "
                     f"VALUES ({', '.join('?' * len(FIELDS))})", [row[k] for k in FIELDS])

    def add(self, reg: Registration) -> None:
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM registrations WHERE registration_id = ?", (reg.registration_id,)).fetchone():
                raise StoreError(f"registration {reg.registration_id} already exists "
                                 "(import a CSV row with that id to update it)")
            self._write(conn, reg)
            self._log(conn, reg.registration_id, "added")

    def upsert(self, regs: Iterable[Registration]) -> Upserted:
        done = Upserted()
        with self.transaction() as conn:
            for reg in regs:
                rid, new = reg.registration_id, reg.to_fields()
                row = conn.execute(f"SELECT {', '.join(FIELDS)} FROM registrations WHERE registration_id = ?",
                                   (rid,)).fetchone()
                if row is None:
                    done.added.append(rid)
                    self._write(conn, reg)
                    self._log(conn, rid, "added")
                    continue
                old = dict(zip(FIELDS, row))
                changed = [k for k in FIELDS if old[k] != new[k]]
                if not changed:
                    done.unchanged.append(rid)
                    continue
                done.updated.append(rid)
                self._write(conn, reg)
                self._log(conn, rid, "updated", ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed))
        return done

    def set_status(self, registration_id: str, status: str, reason: str = "") -> Registration:
        if status not in STATUSES:
            raise StoreError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        with self.transaction() as conn:
            if conn.execute("UPDATE registrations SET status = ? WHERE registration_id = ?",
                            (status, registration_id)).rowcount == 0:
                raise StoreError(f"no registration {registration_id}")
            self._log(conn, registration_id, status, reason)
        return self.get(registration_id)
