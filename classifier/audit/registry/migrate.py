"""Forward-only schema migrations for the one vpnid SQLite database, shared by several modules.

The database has a *core* schema (the registry, which owns the file), versioned by `PRAGMA user_version`,
and any number of named *extensions* (the trial runs, later others), each versioned by a row of the
`schema_extensions` table. A schema is a list of steps; step i takes it from version i to i+1, so a
step once released is never edited, only followed by new ones. A module adds its schema with
`register("name", [steps])` at import time; `upgrade` brings every registered schema up to date.

Versions are read first without a lock, so opening a current database never waits on a writer. A schema
that is behind upgrades inside one `BEGIN IMMEDIATE` transaction that re-reads the version first, so two
processes opening an old database at once migrate it once, and a failing step leaves it untouched.
A database newer than this code (a version above the number of known steps) is refused, not guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

Step = str | Callable[[sqlite3.Connection], None]  # a SQL script, or a function for data migrations

CORE = "registry"
_SCHEMAS: dict[str, tuple[Step, ...]] = {}


class SchemaError(Exception):
    """The database's schema cannot be used by this version of vpnid."""


def register(name: str, steps: Sequence[Step]) -> None:
    """Declare a schema's full list of steps. Re-registering a name replaces its list (a module reloaded)."""
    _SCHEMAS[name] = tuple(steps)


def version(conn: sqlite3.Connection, name: str) -> int:
    """A schema's version, by reads only (0: not there yet)."""
    if name == CORE:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_extensions'").fetchone():
        return 0
    row = conn.execute("SELECT version FROM schema_extensions WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


def _set_version(conn: sqlite3.Connection, name: str, v: int) -> None:
    if name == CORE:
        conn.execute(f"PRAGMA user_version = {int(v)}")
    else:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_extensions (name TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_extensions (name, version) VALUES (?, ?) "
                     "ON CONFLICT (name) DO UPDATE SET version = excluded.version", (name, v))


def _statements(script: str) -> list[str]:
    """Split a script at the ';' that end statements (not those inside literals or trigger bodies)."""
    out, buf = [], ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\n;"):
                out.append(buf)
            buf = ""
    return out


def _run(conn: sqlite3.Connection, step: Step) -> None:
    if isinstance(step, str):
        for statement in _statements(step):
            conn.execute(statement)  # not executescript: it would commit the open transaction
    else:
        step(conn)


def _behind(conn: sqlite3.Connection, name: str, steps: Sequence[Step], label: str) -> int | None:
    """The schema's version when `steps` would take it further, None when it is up to date; SchemaError
    when the database is newer than this vpnid."""
    have = version(conn, name)
    if have > len(_SCHEMAS[name]):
        raise SchemaError(f"{label}: {name} schema version {have} is newer than this vpnid knows "
                          f"({len(_SCHEMAS[name])}); use a newer vpnid")
    return have if have < len(steps) else None


def upgrade(conn: sqlite3.Connection, label: str = "database", upto: dict[str, int] | None = None) -> None:
    """Apply the missing steps of every registered schema, the core first. `conn` must be in autocommit
    mode (isolation_level=None). `upto` stops named schemas at a version (tests build old databases).
    An up-to-date schema is seen by reads alone, so opening a current database never waits for a
    writer (an import holding the write lock); only a schema that is behind takes the lock."""
    for name in sorted(_SCHEMAS, key=lambda n: (n != CORE, n)):
        steps = _SCHEMAS[name][: (upto or {}).get(name)]
        if _behind(conn, name, steps, label) is None:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            have = _behind(conn, name, steps, label)  # again, under the lock: another process may have migrated
            for v in range(have or 0, len(steps)):
                _run(conn, steps[v])
            if have is not None:
                _set_version(conn, name, len(steps))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
