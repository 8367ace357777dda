"""Fuzzing in the normal suite: every committed seed and crash reproducer through its target, the bugs
fuzzing found pinned one by one, and a short run of every atheris target (the CI smoke)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.all import UDP, IPv6, IPv6ExtHdrDestOpt

from tests.frames import chunk
from tests.fuzz import targets
from vpnid.features.decode import Reassembler, decode

FUZZ = Path(__file__).parent / "fuzz"
ROOT = FUZZ.parent.parent
SMOKE_RUNS = 200  # per target; the whole smoke stays well under a minute on two cores


def committed_inputs() -> list[tuple[str, Path]]:
    inputs = []
    for target in targets.TARGETS:
        seeds = FUZZ / "corpus" / targets.SEEDS_FROM.get(target, target)
        for folder in (seeds, FUZZ / "crashes" / target):
            inputs += [(target, f) for f in sorted(folder.glob("*"))] if folder.is_dir() else []
    return inputs


def test_every_target_has_seeds():
    assert {t for t, _ in committed_inputs()} == set(targets.TARGETS)


@pytest.mark.parametrize(("target", "path"), committed_inputs(),
                         ids=[f"{t}/{p.parent.name}/{p.name}" for t, p in committed_inputs()])
def test_seeds_and_crash_reproducers_pass_their_target(target, path):
    targets.TARGETS[target](path.read_bytes())


def test_ipv6_extension_header_longer_than_its_packet_makes_no_row():
    """Fuzzing found a row whose payload started past the end of its packet: the last extension header's
    length ran beyond the IPv6 payload and nothing checked it."""
    ext = IPv6ExtHdrDestOpt(nh=50, len=10)  # claims 88 bytes
    packet = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=60, plen=16) / bytes(ext)[:8] / bytes(8))
    t = decode(chunk([packet], 101), Reassembler())
    assert (len(t), t.stats["bad_ip"]) == (0, 1)
    whole = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt(nh=17) / UDP(sport=1, dport=2))
    assert len(decode(chunk([whole], 101), Reassembler())) == 1  # a truthful chain still decodes


def test_fuzz_smoke(tmp_path):
    """Each atheris target runs its seeds and some mutations without a finding."""
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz", "--runs", str(SMOKE_RUNS), "--jobs", "2",
                           "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    ran = dict(re.findall(r"^(\w+)\s+(\d+) executions .* ok$", proc.stdout, re.MULTILINE))
    assert ran == {t: str(SMOKE_RUNS) for t in targets.TARGETS}
