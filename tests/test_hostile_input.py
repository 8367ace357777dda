"""Property tests: whatever bytes arrive, each stage ends normally or with the documented `CaptureError`,
keeps the invariants the next stage relies on (the fuzz targets' checks), and stays within a time and
memory bound. Inputs are random bytes and mutations of the committed fuzz seeds (real lab traffic),
so the properties are tried deep inside valid structure, not only at the first header."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets
from vpnid.features.capture import sources as capture

SEEDS = Path(__file__).parent / "fuzz" / "corpus"
MAX_SECONDS = 2.0  # per input of at most a few KB; real captures run at millions of packets a minute
# No length field may make a stage allocate what it claims: a stage's peak allocation is a constant, for
# the reader two read blocks (a block and the tail of the previous one), for the others a few MB.
READS_FILES = {"capture", "capture_gzip", "pipeline"}
MAX_TRACED_BYTES = 16 << 20
INTERESTING = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\xff\xff", b"\x80")


def seeds(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((SEEDS / targets.SEEDS_FROM.get(target, target)).glob("*"))]


@st.composite
def mutated(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A seed with a few bytes overwritten by boundary values, then perhaps cut short."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        data[at:at + 4] = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4))
    return bytes(data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


def within_bounds(target: Callable[[bytes], None], data: bytes, max_bytes: int) -> None:
    tracemalloc.start()
    began = time.monotonic()
    try:
        target(data)
        elapsed = time.monotonic() - began
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"{elapsed:.2f} s for {len(data)} bytes"
    assert peak < max_bytes, f"{peak} bytes allocated for {len(data)} bytes of input"


@pytest.mark.parametrize("target", list(targets.TARGETS))
def test_any_bytes_end_normally_or_with_capture_error_within_bounds(target):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=2048) | mutated(seeds(target)))
    def check(data: bytes) -> None:
        within_bounds(targets.TARGETS[target], data, max_bytes)

    max_bytes = MAX_TRACED_BYTES + (2 * capture.READ_BYTES if target in READS_FILES else 0)
    for seed in seeds(target)[:1]:
        targets.TARGETS[target](seed)  # the first call loads compiled code: not what the bound is about

    check()
