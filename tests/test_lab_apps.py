"""The lab's application negatives (pcaps/lab/families/negatives_apps.py): BitTorrent over uTP and over
TCP with MSE, SRTP/RTP calls, TURN relaying, MQTT over TLS, scp/sftp.

The tracker test runs anywhere (loopback only). Regenerating the captures needs root and the packages:
marked ``lab``, about 7 minutes; each run must carry the application's own flow on its server port and
get no tunnel label on any flow.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from tests.labrun import pki_fixture
from vpnid.classifier.labelling.loading import DEFAULT_MODEL
from vpnid.classifier.labelling.model import load
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.families import NONE
from vpnid.pcaps.lab import manifest
from vpnid.pcaps.lab.cli import capture
from vpnid.pcaps.lab.families import negatives_apps

MIN_PACKETS = 100  # the application's flow, not only a handshake: each run here makes thousands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _announce(port: int, info_hash: bytes, peer_port: int) -> bytes:
    query = urllib.parse.urlencode({"info_hash": info_hash, "peer_id": b"-LAB000-" + bytes(12), "port": peer_port,
                                    "uploaded": 0, "downloaded": 0, "left": 0, "compact": 1})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/announce?{query}", timeout=5) as r:
        return r.read()


def test_tracker_answers_each_peer_with_the_others_in_compact_form():
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-u", str(negatives_apps.BT_TRACKER), "127.0.0.1", str(port)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        swarm, other = b"\x11" * 20, b"\x22" * 20
        assert _announce(port, swarm, 51413) == b"d8:intervali30e5:peers0:e"  # alone in the swarm
        assert _announce(port, other, 7000) == b"d8:intervali30e5:peers0:e"  # another torrent's peer is not shared
        compact = socket.inet_aton("127.0.0.1") + (51413).to_bytes(2, "big")
        assert _announce(port, swarm, 51414) == b"d8:intervali30e5:peers6:" + compact + b"e"
    finally:
        p.terminate()
        p.wait(5)


pki = pki_fixture(negatives_apps.VARIANTS)


@pytest.mark.lab
@pytest.mark.parametrize("variant", negatives_apps.VARIANTS, ids=[v.name for v in negatives_apps.VARIANTS])
def test_regenerated_application_negative_has_its_flow_and_no_tunnel_label(variant, pki, tmp_path):
    raw = tmp_path / f"{variant.name}.pcap"
    capture(variant, pki, tmp_path, raw, scale=1)
    assert manifest.foreign(raw) == set()
    records = list(classify_capture(str(raw), Options(model=load(DEFAULT_MODEL))))
    main = [r for r in records if r.transport == variant.transport and variant.server_port in (r.src_port, r.dst_port)
            and r.src2dst_packets + r.dst2src_packets >= MIN_PACKETS]
    assert main, f"no {variant.transport} flow of {MIN_PACKETS}+ packets on port {variant.server_port}"
    assert {r.label for r in records} == {NONE}, [(r.transport, r.dst_port, r.label) for r in records]
