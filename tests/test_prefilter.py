"""The cheap stage never hides a tunnel: every capture of the committed corpus, the dev set and the fuzz
seeds gives the same labels, evidence, verdict packets and risks with the prefilters as with every
dissector forced on (`Options(prefilter=False)`), from the start of each flow and mid-flow (--drop-first),
with the shipped model (whose features include the dissectors' states) and without it."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest

from vpnid.classifier.labelling.loading import DEFAULT_MODEL, load
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.capture import CaptureError
from vpnid.features.dissectors import catalog
from vpnid.features.dissectors.base import HEAD_BYTES, PacketHeads
from vpnid.features.flows import FlowTableConfig

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted(glob.glob(str(ROOT / "pcaps" / "corpus" / "*.pcap")))
EXTERNAL = Path(os.environ.get("VPNID_EXTERNAL", ROOT.parent / "shared" / "corpus" / "external"))  # shared/ beside the checkout
DEV = sorted(glob.glob(str(EXTERNAL / "ndpi" / "pcap" / "*")))
FUZZ = ROOT / "tests" / "fuzz" / "corpus"
SEEDS = sorted(str(p) for d in ("capture", "pipeline") for p in (FUZZ / d).glob("*"))


def answers(paths: list[str], **opts) -> list[tuple]:
    out = []
    for path in paths:
        try:
            records = list(classify_capture(path, Options(**opts)))
        except CaptureError:
            continue
        out += [(r.pcap, r.flow_id, r.label, r.method, round(r.confidence, 9), tuple(r.evidence), r.verdict_packet,
                 tuple(r.risks), r.end_reason) for r in records]
    return out


def same(paths: list[str], **opts) -> None:
    fast, forced = answers(paths, **opts), answers(paths, prefilter=False, **opts)
    assert len(fast) == len(forced)
    diff = [(a, b) for a, b in zip(fast, forced) if a != b]
    assert not diff, diff[:3]
    return fast


@pytest.fixture(scope="module")
def model():
    return load(DEFAULT_MODEL)


@pytest.mark.parametrize("drop_first", [0, 25])
def test_corpus_and_seeds(drop_first: int, model) -> None:
    same(CORPUS + SEEDS, drop_first=drop_first)
    same(CORPUS + SEEDS, drop_first=drop_first, model=model)


@pytest.mark.skipif(not DEV, reason=f"dev set absent ({EXTERNAL})")
@pytest.mark.parametrize("drop_first", [0, 25])
def test_dev_set(drop_first: int, model) -> None:
    labels = {a[2] for a in same(DEV, drop_first=drop_first, model=model)}
    assert labels - {"none"}  # the dev set has tunnels: the comparison is not vacuous


def test_flow_table_seeds() -> None:
    """The fuzz target's own flow encoding, with and without the cheap stage."""
    from tests.fuzz.targets import flow_chunks, run_table

    for seed in sorted((FUZZ / "flows").glob("*")):
        chunks, config, _ = flow_chunks(seed.read_bytes())
        forced = FlowTableConfig(config.idle_timeout, config.active_timeout, config.max_flows, config.drop_first,
                                 prefilter=False)
        a, b = (sorted((f.first_ns, f.proto, f.src, f.sport, f.packets, f.end_reason, sorted(f.risks), f.verdict and (f.verdict.family, tuple(f.verdict.evidence),
                                                              f.verdict.packet)) for f in run_table(chunks, c)[0])
                for c in (config, forced))
        assert a == b, seed.name


def test_prefilters_shape() -> None:
    """Every prefilter returns one bool per row, also for no rows and for short payloads."""
    rng = np.random.default_rng(1)
    for n in (0, 1, 500):
        length = rng.integers(1, 1500, n)
        length[: n // 2] = rng.integers(1, 8, n // 2)
        head = rng.integers(0, 256, (n, HEAD_BYTES), dtype=np.uint8)
        head[np.arange(HEAD_BYTES)[None, :] >= length[:, None]] = 0
        p = PacketHeads(rng.choice(np.array([6, 17, 50, 51], np.uint8), n), length, head,
                        rng.integers(0, 2, n).astype(np.uint8), np.zeros(n, np.uint8), rng.integers(0, 2, n) > 0)
        for cls in catalog.ALL:
            out = np.asarray(cls.prefilter(p))
            assert out.shape == (n,) and out.dtype == bool, cls.__name__
