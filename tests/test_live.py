"""`vpnid live` on a veth pair inside a network namespace the test creates, fed by tcpreplay: the labels
seen live equal `vpnid classify` on the replayed capture, and a tunnel is reported before it ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import mixed_pcap, vpnid  # noqa: F401  (mixed_pcap is a fixture; 198.18.0.0/15 only)

ROOT = Path(__file__).resolve().parents[1]
NEEDS = ("ip", "tcpdump", "tcpreplay")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="creating a network namespace and capturing need root"),
    pytest.mark.skipif(not all(map(shutil.which, NEEDS)), reason=f"needs {', '.join(NEEDS)} on PATH"),
]


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture()
def veth_ns():
    """Namespace with veth pair va <-> vb, both up; deleted afterwards whatever happened."""
    ns = f"vpnid-live-{os.getpid()}"
    try:
        run("ip", "netns", "add", ns)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create a network namespace here: {e.stderr.decode().strip()}")
    try:
        run("ip", "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        for dev in ("va", "vb", "lo"):
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def key(r: dict) -> tuple:
    return r["transport"], r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"]


def test_live_labels_equal_offline(veth_ns, mixed_pcap):  # noqa: F811
    live = subprocess.Popen(["ip", "netns", "exec", veth_ns, sys.executable, "-m", "vpnid.classifier.cli.main", "live", "vb",
                             "net", "198.18.0.0/15"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(3)  # tcpdump attaches
        run("ip", "netns", "exec", veth_ns, "tcpreplay", "-q", "-i", "va", str(mixed_pcap))
        time.sleep(1)
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=60)
    finally:
        live.kill()
    assert live.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    ended = {key(e): e["label"] for e in events if e["event"] == "ended"}
    offline = {key(r): r["label"] for r in map(json.loads, vpnid("classify", "--format", "jsonl",
                                                                   str(mixed_pcap)).stdout.splitlines())}
    assert ended == offline and "wireguard" in ended.values()
    order = [(e["event"], e["label"]) for e in events if e["label"] == "wireguard"]
    assert order == [("labelled", "wireguard"), ("ended", "wireguard")]  # reported before it ended
