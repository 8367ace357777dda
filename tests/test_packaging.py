"""The wheel a user installs: built from this checkout, installed into a fresh virtualenv, run from a folder
that is not the checkout. It must carry what its commands need (model, demo captures, sample registry,
report template, lab templates) and install nothing at top level but `vpnid`."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("classifier", "features", "pcaps")

pytestmark = pytest.mark.slow


def _run(*cmd: str | Path, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT, cwd=out)
    (whl,) = out.glob("vpnid-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's bin folder, an empty working folder outside the checkout)."""
    env = tmp_path_factory.mktemp("venv") / "v"
    venv.create(env, with_pip=True)  # no system site-packages: only what the wheel asks for
    _run(env / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=env)
    return env / "bin", tmp_path_factory.mktemp("elsewhere")


def test_the_wheel_holds_vpnid_and_every_module_and_data_file(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    version = wheel.name.split("-")[1]
    assert {n.split("/")[0] for n in names} == {"vpnid", f"vpnid-{version}.dist-info"}
    modules = {f"vpnid/{p.relative_to(ROOT).as_posix()}" for folder in PACKAGE_FOLDERS
               for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= set(names), f"modules missing from the wheel: {sorted(modules - set(names))}"
    for data in ("vpnid/models/vpnid.skops", "vpnid/models/vpnid.md", "vpnid/pcaps/corpus/manifest.csv",
                 "vpnid/classifier/audit/registry/sample_registry.csv", "vpnid/classifier/audit/report/report.html.j2",
                 "vpnid/pcaps/lab/templates/openvpn-server.conf"):
        assert data in names
    assert len([n for n in names if n.startswith("vpnid/pcaps/corpus/") and n.endswith(".pcap")]) == \
        len(list((ROOT / "pcaps" / "corpus").glob("*.pcap")))


def test_installed_vpnid_runs_the_demo_and_classifies_with_the_shipped_model(installed):
    bin_, here = installed
    where = _run(bin_ / "python", "-c", "import vpnid; print(vpnid.__file__)", cwd=here).stdout.strip()
    assert where.startswith(str(bin_.parent)), f"vpnid imported from {where}, not from the venv"

    version = _run(bin_ / "vpnid", "--version", cwd=here).stdout
    assert "sha256" in version and "no shipped model" not in version

    demo = _run(bin_ / "vpnid", "demo", "-o", here / "demo", cwd=here)
    assert "error" not in demo.stderr and "warning: no model" not in demo.stderr
    report = here / "demo" / "report"
    assert (report / "report.html").stat().st_size > 0 and (report / "flagged.csv").exists()

    # The shipped model judged the flows: the installed wheel gives the checkout's records, model evidence
    # ("model p(openvpn)=0.232 < threshold 0.804") included.
    name = "neg-https-tls13-443.pcap"
    corpus = Path(_run(bin_ / "python", "-c", "import vpnid.pcaps as p; print(p.CORPUS)", cwd=here).stdout.strip())
    got = _records(_run(bin_ / "vpnid", "classify", "--format", "jsonl", corpus / name, cwd=here).stdout)
    want = _records(_run(sys.executable, "-m", "vpnid.classifier.cli.main", "classify", "--format", "jsonl",
                         ROOT / "pcaps" / "corpus" / name, cwd=ROOT).stdout)
    assert got == want
    assert any(r["evidence"] and r["evidence"][0].startswith("model p(") for r in got)


def _records(jsonl: str) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "pcap"} for line in jsonl.splitlines()]
