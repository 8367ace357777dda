"""The registry database: choosing it, schema versions and migrations, WAL and all-or-nothing imports."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from tests.registry_helpers import GOOD, vpnid_registry
from vpnid.classifier.audit.registry import migrate
from vpnid.classifier.audit.registry.csvio import read_csv
from vpnid.classifier.audit.registry.registration import REQUIRED_FIELDS, parse_registration
from vpnid.classifier.audit.registry.sample import PATH as SAMPLE
from vpnid.classifier.audit.registry.store import CORE_STEPS, StoreError, open_store


def reg(rid: str, **changes: str):
    return parse_registration(GOOD | {"registration_id": rid} | changes)


def test_vpnid_db_env_var_chooses_the_database_and_db_flag_wins(tmp_path, monkeypatch, capsys):
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    monkeypatch.setenv("VPNID_DB", str(env_db))
    assert vpnid_registry("add", "--id", "E1", "--org", "Env Org", "--category", "bpo", "--protocol", "any",
                          "--client", "2001:db8::/48", "10.0.0.0/8") == 0
    assert vpnid_registry("add", "--db", str(flag_db), "--id", "F1", "--org", "Flag Org", "--category", "bpo",
                          "--protocol", "any", "--client", "10.0.0.0/8") == 0
    with open_store(str(env_db)) as store:
        assert [r.registration_id for r in store.select()] == ["E1"]
    with open_store(f"sqlite:///{flag_db}") as store:  # sqlite:////absolute/path
        assert [r.registration_id for r in store.select()] == ["F1"]
    monkeypatch.delenv("VPNID_DB")
    capsys.readouterr()
    assert vpnid_registry("list") == 1
    assert "no registry database given: pass --db PATH or set VPNID_DB" in capsys.readouterr().err


def test_reading_commands_do_not_create_a_database(tmp_path, capsys):
    assert vpnid_registry("list", "--db", str(tmp_path / "typo.db")) == 1
    assert "typo.db: no such registry database" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


def test_unsupported_url_and_non_database_file_are_named(tmp_path):
    with pytest.raises(StoreError, match="postgresql://h/db: unsupported database URL"):
        open_store("postgresql://h/db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError, match="junk.db: file is not a database"):
        open_store(str(junk))


def test_a_new_database_is_wal_at_the_current_schema_version(tmp_path):
    open_store(str(tmp_path / "r.db")).close()
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(CORE_STEPS) == 3


def test_migration_from_version_1_keeps_rows_and_logs_them(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate.upgrade(conn, upto={migrate.CORE: 1})
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    fields = {k: v for k, v in reg("OLD-1").to_fields().items() if k in REQUIRED_FIELDS}
    conn.execute(f"INSERT INTO registrations ({','.join(fields)}) VALUES ({','.join('?' * len(fields))})",
                 list(fields.values()))
    conn.close()
    with open_store(str(path)) as store:
        assert store.get("OLD-1") == reg("OLD-1")
        assert [(c.action, c.detail) for c in store.history("OLD-1")] == [
            ("present", "registered before the change log existed")]
        assert store.changed_at() is not None
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3


def test_migration_from_version_2_gives_old_registrations_no_subscriber(tmp_path):
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate.upgrade(conn, upto={migrate.CORE: 2})
    fields = {k: v for k, v in reg("OLD-2").to_fields().items() if k in REQUIRED_FIELDS}
    conn.execute(f"INSERT INTO registrations ({','.join(fields)}) VALUES ({','.join('?' * len(fields))})",
                 list(fields.values()))
    conn.close()
    with open_store(str(path)) as store:
        old = store.get("OLD-2")
        assert old == reg("OLD-2") and old.subscriber_keys == ()
        store.upsert([replace(old, subscriber_id="alice@isp", phone="+15550001111")])
        assert store.get("OLD-2").subscriber_keys == ("alice@isp", "+15550001111")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "new.db"
    open_store(str(path)).close()
    sqlite3.connect(path).execute("PRAGMA user_version = 7")
    with pytest.raises(StoreError, match="registry schema version 7 is newer than this vpnid knows \\(3\\)"):
        open_store(str(path))


def test_another_module_adds_its_schema_as_an_extension(tmp_path, monkeypatch):
    monkeypatch.setattr(migrate, "_SCHEMAS", dict(migrate._SCHEMAS))
    migrate.register("trials_demo", ["CREATE TABLE trials_demo (name TEXT); INSERT INTO trials_demo VALUES ('a;b')"])
    path = tmp_path / "r.db"
    open_store(str(path)).close()
    migrate.register("trials_demo", ["CREATE TABLE trials_demo (name TEXT); INSERT INTO trials_demo VALUES ('a;b')",
                                     "ALTER TABLE trials_demo ADD COLUMN n INTEGER DEFAULT 3"])
    open_store(str(path)).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name, n FROM trials_demo").fetchall() == [("a;b", 3)]
    assert conn.execute("SELECT version FROM schema_extensions WHERE name = 'trials_demo'").fetchone() == (2,)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_failing_migration_step_leaves_the_database_untouched(tmp_path, monkeypatch):
    monkeypatch.setattr(migrate, "_SCHEMAS", dict(migrate._SCHEMAS))
    migrate.register("broken", ["CREATE TABLE half (x)", "SELECT * FROM no_such_table"])
    path = tmp_path / "r.db"
    with pytest.raises(StoreError, match="no such table: no_such_table"):
        open_store(str(path))
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "half" not in tables and "registrations" in tables  # the core committed on its own, before


def test_a_reader_during_an_import_sees_nothing_of_it_until_commit(tmp_path):
    path = str(tmp_path / "r.db")
    regs = read_csv(SAMPLE)
    seen_midway = []
    with open_store(path) as writer, open_store(path) as reader:
        writer.add(reg("BEFORE"))

        def slow_import():
            for i, r in enumerate(regs):
                if i == len(regs) // 2:
                    seen_midway.append([x.registration_id for x in reader.select()])  # does not block (WAL)
                yield r

        done = writer.upsert(slow_import())
        assert seen_midway == [["BEFORE"]]
        assert len(done.added) == len(regs)
        assert len(reader.select()) == len(regs) + 1


def test_an_import_that_fails_midway_stores_nothing(tmp_path):
    path = str(tmp_path / "r.db")

    def failing():
        yield reg("A")
        yield reg("B")
        raise OSError("disk went away")

    with open_store(path) as store:
        with pytest.raises(OSError):
            store.upsert(failing())
        assert store.select() == [] and store.changed_at() is None


def test_revoke_list_filters_and_show(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells to the terminal width
    db = str(tmp_path / "r.db")
    with open_store(db) as store:
        store.upsert([reg("A", organization="Blue Bank"), reg("B", organization="Red Embassy", protocol="ipsec"),
                      reg("C", organization="blue sky bpo", status="suspended")])
    assert vpnid_registry("revoke", "--db", db, "A", "--reason", "contract ended") == 0
    assert vpnid_registry("revoke", "--db", db, "A") == 0
    assert vpnid_registry("revoke", "--db", db, "Z") == 1
    out = capsys.readouterr()
    assert "revoked A (was active)" in out.out and "A was already revoked" in out.out
    assert "no registration Z in" in out.err
    with open_store(db) as store:
        assert [r.registration_id for r in store.select(organization="BLUE")] == ["A", "C"]
        assert [r.registration_id for r in store.select(status="revoked")] == ["A"]
        assert [r.registration_id for r in store.select(protocol="ipsec")] == ["B"]
        assert [(c.action, c.detail) for c in store.history("A")] == [("added", ""), ("revoked", "contract ended")]
    assert vpnid_registry("list", "--db", db, "--org", "blue", "--status", "suspended") == 0
    listing = capsys.readouterr().out
    assert "blue sky bpo" in listing and "Blue Bank" not in listing and "1 registration\n" in listing
    assert vpnid_registry("show", "--db", db, "A") == 0
    assert "revoked: contract ended" in capsys.readouterr().out


def test_add_refuses_an_existing_id_and_validates(tmp_path, capsys):
    db = str(tmp_path / "r.db")
    args = ["add", "--db", db, "--id", "A", "--org", "O", "--category", "bank", "--protocol", "openvpn"]
    assert vpnid_registry(*args, "--client", "10.0.0.0/8", "--server", "[2001:db8::1]:1194") == 0
    assert vpnid_registry(*args, "--client", "10.0.0.0/8") == 1
    assert vpnid_registry(*args[:4], "B", *args[5:], "--client", "10.0.0.0/8", "--until", "1999-01-01") == 1
    err = capsys.readouterr().err
    assert "registration A already exists" in err
    assert "valid_until 1999-01-01 is before valid_from" in err
    with open_store(db) as store:
        assert str(store.get("A").server_endpoints[0]) == "[2001:db8::1/128]:1194"
