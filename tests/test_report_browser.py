"""The bundled demo, end to end, and its report as a person sees it: headless Chromium opens report.html
from disk, the plots and the flagged table must have rendered, and the page must log no errors.

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; skips, saying which is missing,
otherwise. The screenshot is kept as the test's artifact (its path is printed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.trialdata import vpnid_argv

ROOT = Path(__file__).parent.parent
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    res = subprocess.run(vpnid_argv("demo", "-o", str(out)), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"report: {out / 'report' / 'report.html'}" in res.stdout
    return out / "report"


def test_demo_report_shows_registered_and_flagged_tunnels(demo):
    summary = json.loads((demo / "summary.json").read_text())
    verdicts = summary["tunnels_by_verdict"]
    assert verdicts.get("registered", 0) >= 1 and verdicts.get("unregistered", 0) >= 1
    assert summary["trial"]["flagged"] == sum(n for v, n in verdicts.items() if v != "registered")
    assert summary["flagged_pcap_frames"] > 0 and not summary["missing_captures"]
    # the demo's lease log hands the lab client from lab-alice to lab-bob mid-capture (issue 15)
    assert {u["subscriber_id"] for u in summary["subscribers"]} == {"lab-alice", "lab-bob"}
    assert verdicts["registered"] >= 1


def _driver(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("headless Chromium is not installed (Debian: apt install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=chromedriver))


def test_report_renders_in_headless_chromium_without_errors(demo, tmp_path):
    driver = _driver(tmp_path / "profile")
    try:
        driver.get((demo / "report.html").as_uri())
        plots = driver.execute_script(
            "return [...document.querySelectorAll('figure.plot img')].map(i => "
            "({id: i.id, ok: i.complete && i.naturalWidth > 0, w: i.getBoundingClientRect().width}))")
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#flagged tr.flagged-flow')].map(r => "
            "({id: r.dataset.flowId, h: r.getBoundingClientRect().height}))")
        flagged = int(driver.find_element("id", "flagged-count").text)
        subscribers = driver.execute_script(
            "return [...document.querySelectorAll('#subscribers tr.subscriber-use')].map(r => "
            "({s: r.dataset.subscriber, h: r.getBoundingClientRect().height, cells: r.cells.length}))")
        shot = tmp_path / "report.png"
        driver.set_window_size(1400, driver.execute_script("return document.body.scrollHeight") + 100)
        driver.save_screenshot(str(shot))
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        driver.quit()
    print(f"report screenshot: {shot}")
    assert {p["id"] for p in plots} == {"plot-mix", "plot-timeline", "plot-endpoints"}
    assert all(p["ok"] and p["w"] > 200 for p in plots), plots
    assert len(rows) == flagged > 0 and all(r["id"].startswith("F") and r["h"] > 0 for r in rows)
    assert {s["s"] for s in subscribers} == {"lab-alice", "lab-bob"}, subscribers
    assert all(s["h"] > 0 and s["cells"] == 10 for s in subscribers)
    assert errors == []
    assert shot.stat().st_size > 10_000
