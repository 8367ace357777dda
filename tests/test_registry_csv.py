"""Registry CSV import/export: validation messages, all-or-nothing import, exact round trip."""

from __future__ import annotations

import io

import pytest

from tests.registry_helpers import GOOD, HEADER, row, vpnid_registry
from vpnid.classifier.audit.registry.csvio import CsvError, read_csv, write_csv
from vpnid.classifier.audit.registry.registration import RegistrationError, parse_registration
from vpnid.classifier.audit.registry.sample import PATH as SAMPLE
from vpnid.classifier.audit.registry.sample import sample
from vpnid.classifier.audit.registry.store import open_store


def test_one_bad_row_imports_nothing_and_names_its_line(tmp_path, capsys):
    csv = tmp_path / "reg.csv"
    csv.write_text(HEADER + row(registration_id="A") + row(registration_id="B", category="banks")
                   + row(registration_id="C"))
    db = tmp_path / "r.db"
    assert vpnid_registry("import", "--db", str(db), str(csv)) == 1
    err = capsys.readouterr().err
    assert (f"vpnid: error: {csv}:3: category 'banks' is not one of bank, embassy, it_company, freelancer, bpo, "
            "software_house, other\n") in err
    assert "nothing imported (1 problem)" in err
    with open_store(str(db)) as store:
        assert store.select() == []


def test_every_bad_row_is_reported_with_its_line_quoted_cells_counting_lines(tmp_path):
    csv = tmp_path / "reg.csv"
    csv.write_text(HEADER + row(registration_id="A", notes='"two\nlines"') + row(registration_id="B",
                   valid_from="2024-13-01") + "x,y\n" + row(registration_id="A"))
    with pytest.raises(CsvError) as e:
        read_csv(csv)
    assert e.value.problems == [
        f"{csv}:4: valid_from '2024-13-01' is not a date written YYYY-MM-DD",
        f"{csv}:5: 2 cells, but the header has 13",
        f"{csv}:6: registration_id A repeats line 2",
    ]


def test_header_must_name_exactly_the_fields(tmp_path):
    csv = tmp_path / "reg.csv"
    csv.write_text(HEADER.replace("notes", "comment").replace("status,", ""))
    with pytest.raises(CsvError, match=r"reg.csv:1: not a registry CSV \(missing columns status, notes; "
                                        r"unknown column comment\)"):
        read_csv(csv)


@pytest.mark.parametrize("changes, message", [
    ({"registration_id": ""}, "registration_id is empty"),
    ({"registration_id": "a b"}, "registration_id 'a b' must be 1-64 letters, digits or . _ : - (starting with a "
                                 "letter or digit)"),
    ({"organization": " "}, "organization is empty"),
    ({"protocol": "sstp"}, "protocol 'sstp' is not one of openvpn, wireguard, ipsec, openconnect, shadowsocks, pptp, "
                           "l2tp, any"),
    ({"status": "expired"}, "status 'expired' is not one of active, suspended, revoked"),
    ({"client_networks": ""}, "client_networks is empty and no subscriber is named (give at least one CIDR, or a "
                                  "subscriber_id, phone or account_id)"),
    ({"client_networks": "10.0.0.0/33"}, "client_networks: '10.0.0.0/33' is not an IPv4 or IPv6 network in CIDR "
                                         "notation"),
    ({"client_networks": "10.0.0.0/8 10.1.2.3/16"}, "client_networks: '10.1.2.3/16' has host bits set (the "
                                                    "network is 10.1.0.0/16)"),
    ({"server_endpoints": "10.0.0.1:0"}, "server_endpoints: '10.0.0.1:0': port '0' is not a number from 1 to 65535"),
    ({"server_endpoints": "10.0.0.1:https"}, "server_endpoints: '10.0.0.1:https': port 'https' is not a number "
                                             "from 1 to 65535"),
    ({"server_endpoints": "[2001:db8::/32]"}, "server_endpoints: '[2001:db8::/32]': a bracketed endpoint is "
                                              "written [CIDR]:port"),
    ({"server_endpoints": "2001:db8::1/64"}, "server_endpoints: '2001:db8::1/64' has host bits set (the network "
                                             "is 2001:db8::/64)"),
    ({"valid_from": "2024-02-30"}, "valid_from '2024-02-30' is not a date written YYYY-MM-DD"),
    ({"valid_from": "20240101"}, "valid_from '20240101' is not a date written YYYY-MM-DD"),
    ({"valid_until": "2019-12-31"}, "valid_until 2019-12-31 is before valid_from 2020-01-01"),
])
def test_each_kind_of_bad_value_has_a_precise_message(changes, message):
    with pytest.raises(RegistrationError) as e:
        parse_registration(GOOD | changes)
    assert e.value.problems == [message]


def test_all_bad_fields_of_a_row_are_named_together():
    with pytest.raises(RegistrationError) as e:
        parse_registration(GOOD | {"category": "", "valid_until": "soon"})
    assert str(e.value) == ("category '' is not one of bank, embassy, it_company, freelancer, bpo, software_house, "
                            "other; valid_until 'soon' is not a date written YYYY-MM-DD")


def test_values_are_read_in_canonical_form():
    reg = parse_registration(GOOD | {"category": " Bank ", "client_networks": "2001:DB8:0::/48  10.0.0.1",
                                     "server_endpoints": "[2001:db8::1]:500 192.0.2.0/24 192.0.2.9:4500"})
    assert reg.to_fields()["client_networks"] == "2001:db8::/48 10.0.0.1/32"
    assert reg.to_fields()["server_endpoints"] == "[2001:db8::1/128]:500 192.0.2.0/24 192.0.2.9/32:4500"
    assert reg.category == "bank"


def test_export_import_export_gives_identical_bytes(tmp_path):
    exports = []
    for n in range(2):
        db = tmp_path / f"{n}.db"
        source = SAMPLE if n == 0 else exports[-1]
        assert vpnid_registry("import", "--db", str(db), str(source)) == 0
        out = tmp_path / f"export{n}.csv"
        assert vpnid_registry("export", "--db", str(db), str(out)) == 0
        exports.append(out)
    assert exports[0].read_bytes() == exports[1].read_bytes()
    assert exports[0].read_bytes() == SAMPLE.read_bytes()  # the bundled file is already canonical


def test_bundled_sample_is_what_its_generator_writes():
    text = io.StringIO()
    write_csv(sample(), text)
    assert text.getvalue() == SAMPLE.read_text(encoding="utf-8")
    regs = read_csv(SAMPLE)
    assert {r.category for r in regs} == {"bank", "embassy", "it_company", "freelancer", "bpo", "software_house",
                                          "other"}
    assert {r.status for r in regs} == {"active", "suspended", "revoked"}
    assert any(r.valid_until and r.valid_until.year < 2025 for r in regs)


def test_reimport_updates_in_place_and_reports_it(tmp_path, capsys):
    db, csv = str(tmp_path / "r.db"), tmp_path / "r.csv"
    csv.write_text(HEADER + row(registration_id="A") + row(registration_id="B"))
    vpnid_registry("import", "--db", db, str(csv))
    csv.write_text(HEADER + row(registration_id="B", status="suspended") + row(registration_id="C"))
    capsys.readouterr()
    assert vpnid_registry("import", "--db", db, str(csv)) == 0
    assert "2 registrations into" in (out := capsys.readouterr().out)
    assert "1 added, 1 updated (B), 0 unchanged" in out
    with open_store(db) as store:
        assert [r.registration_id for r in store.select()] == ["A", "B", "C"]
        assert store.get("B").status == "suspended"
        assert store.history("B")[-1].detail == "status: 'active' -> 'suspended'"


def test_a_missing_file_is_named(tmp_path, capsys):
    assert vpnid_registry("import", "--db", str(tmp_path / "r.db"), str(tmp_path / "nope.csv")) == 1
    assert f"{tmp_path / 'nope.csv'}: No such file or directory" in capsys.readouterr().err
