"""Registrations by subscriber (issue 15): the new optional columns, their messages, and the CLI."""

from __future__ import annotations

import pytest

from tests.registry_helpers import GOOD, HEADER, row, vpnid_registry
from vpnid.classifier.audit.registry.csvio import CsvError, read_csv, write_csv
from vpnid.classifier.audit.registry.overlap import overlaps
from vpnid.classifier.audit.registry.registration import REQUIRED_FIELDS, parse_registration
from vpnid.classifier.audit.registry.store import open_store

OLD_HEADER = ",".join(REQUIRED_FIELDS) + "\n"


def old_row(**changes: str) -> str:
    return ",".join((GOOD | changes)[k] for k in REQUIRED_FIELDS) + "\n"


def test_a_file_from_before_the_subscriber_columns_imports_unchanged(tmp_path):
    csv = tmp_path / "old.csv"
    csv.write_text(OLD_HEADER + old_row(registration_id="OLD-1"))
    [reg] = read_csv(csv)
    assert reg.registration_id == "OLD-1" and reg.subscriber_keys == () and reg.subscriber_id == ""


def test_subscriber_columns_may_come_alone_in_any_order(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text(OLD_HEADER.rstrip("\n") + ",phone\n" + old_row(client_networks="").rstrip("\n") + ",+1 555 010-0003\n")
    [reg] = read_csv(csv)
    assert reg.client_networks == () and reg.phone == "+15550100003" and reg.subscriber_keys == ("+15550100003",)


def test_export_import_round_trip_keeps_subscribers(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text(HEADER + row(registration_id="S1", client_networks="", subscriber_id="alice@isp",
                                phone="+15550100001", account_id="ACC-77"))
    db = str(tmp_path / "r.db")
    assert vpnid_registry("import", "--db", db, str(csv)) == 0
    out = tmp_path / "export.csv"
    assert vpnid_registry("export", "--db", db, str(out)) == 0
    assert out.read_text() == csv.read_text().replace(",+15550100001,", ",'+15550100001,")  # formula-safe cell
    [reg] = read_csv(out)
    assert reg.subscriber_keys == ("alice@isp", "+15550100001", "ACC-77")


@pytest.mark.parametrize("changes, message", [
    ({"subscriber_id": "al ice"}, "subscriber_id 'al ice' must be 1-128 letters, digits or . _ : @ + / - (starting "
                                  "with a letter, digit or +)"),
    ({"account_id": "-1"}, "account_id '-1' must be 1-128 letters, digits or . _ : @ + / - (starting with a letter, "
                           "digit or +)"),
    ({"phone": "555-0100"}, "phone '555-0100' is not a number written +<country code><number> (E.164, 6-15 digits)"),
    ({"client_networks": "", "subscriber_id": ""}, "client_networks is empty and no subscriber is named (give at "
                                                   "least one CIDR, or a subscriber_id, phone or account_id)"),
])
def test_bad_subscriber_fields_have_precise_messages(tmp_path, changes, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(HEADER + row(**changes))
    with pytest.raises(CsvError) as e:
        read_csv(csv)
    assert e.value.problems == [f"{csv}:2: {message}"]


def test_an_unknown_column_names_the_optional_ones(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text(OLD_HEADER.rstrip("\n") + ",msisdn\n")
    with pytest.raises(CsvError) as e:
        read_csv(csv)
    assert e.value.problems == [
        f"{csv}:1: not a registry CSV (unknown column msisdn); the header must name exactly: "
        + ",".join(REQUIRED_FIELDS) + " (and may add: subscriber_id,phone,account_id)"]


def test_add_by_subscriber_list_and_show(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    db = str(tmp_path / "r.db")
    assert vpnid_registry("add", "--db", db, "--id", "HOME-1", "--org", "A. Home", "--category", "freelancer",
                          "--protocol", "wireguard", "--subscriber", "alice@isp", "--phone", "+15550100003") == 0
    assert vpnid_registry("add", "--db", db, "--id", "NONE-1", "--org", "Nobody", "--category", "other",
                          "--protocol", "any") == 1
    err = capsys.readouterr().err
    assert "client_networks is empty and no subscriber is named" in err
    assert vpnid_registry("list", "--db", db, "--subscriber", "+15550100003") == 0
    listing = capsys.readouterr().out
    assert "HOME-1" in listing and "alice@isp +15550100003" in listing
    assert vpnid_registry("show", "--db", db, "HOME-1") == 0
    shown = capsys.readouterr().out
    assert "subscriber_id" in shown and "alice@isp" in shown and "account_id" in shown


def test_registrations_naming_one_subscriber_are_named_as_overlapping():
    a = parse_registration(GOOD | {"registration_id": "A", "client_networks": "", "subscriber_id": "bob"})
    b = parse_registration(GOOD | {"registration_id": "B", "client_networks": "192.0.2.0/24", "account_id": "bob",
                                   "status": "revoked"})
    assert overlaps([a, b], ["A"]) == {"A": ["B"]}


def test_store_select_by_subscriber_key(tmp_path):
    regs = [parse_registration(GOOD | {"registration_id": f"R{i}", "subscriber_id": f"s{i}"}) for i in range(3)]
    with open_store(str(tmp_path / "r.db")) as store:
        store.upsert(regs)
        assert [r.registration_id for r in store.select(subscriber="s1")] == ["R1"]
    import io
    text = io.StringIO()
    write_csv(regs, text)
    assert text.getvalue().splitlines()[0].endswith(",subscriber_id,phone,account_id")
