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
from vpnid.features.dissectors.base import HEAD_BYTES, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.cstp import Cstp
from vpnid.features.dissectors.openvpn import OpenVPN
from vpnid.features.dissectors.openvpn_wrapped import OpenVPNWrapped
from vpnid.features.dissectors.pptp import PPTP
from vpnid.features.flows import FlowTableConfig
from vpnid.features.packets import IPPROTO_TCP, IPPROTO_UDP

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
    """Every prefilter returns one bool per row, also for no rows and for short payloads, and answers each
    row alone: asked about some of the rows (`PacketHeads.take`), it says what it said of them among all."""
    rng = np.random.default_rng(1)
    for n in (0, 1, 500):
        length = rng.integers(1, 1500, n)
        length[: n // 2] = rng.integers(1, 8, n // 2)
        head = rng.integers(0, 256, (n, HEAD_BYTES), dtype=np.uint8)
        head[np.arange(HEAD_BYTES)[None, :] >= length[:, None]] = 0
        p = PacketHeads(rng.choice(np.array([6, 17, 50, 51], np.uint8), n), length, head,
                        rng.integers(0, 2, n).astype(np.uint8), np.zeros(n, np.uint8), rng.integers(0, 2, n) > 0,
                        rng.integers(0, 3, n))
        some = np.flatnonzero(rng.integers(0, 2, n) > 0)
        for cls in catalog.ALL:
            out = np.asarray(cls.prefilter(p))
            assert out.shape == (n,) and out.dtype == bool, cls.__name__
            # Row by row: the flow table asks each class about the rows of its transports only.
            assert np.array_equal(np.asarray(cls.prefilter(p.take(some))), out[some]), cls.__name__
            assert np.array_equal(np.asarray(cls.closes_window(p.take(some))),
                                  np.asarray(cls.closes_window(p))[some]), cls.__name__


def _heads(rows: list[tuple[int, bytes]], direction: int, opened: bool) -> PacketHeads:
    n = len(rows)
    head = np.zeros((n, HEAD_BYTES), np.uint8)
    for i, (_, b) in enumerate(rows):
        head[i, : min(HEAD_BYTES, len(b))] = np.frombuffer(b[:HEAD_BYTES], np.uint8)
    return PacketHeads(np.array([r[0] for r in rows], np.uint8), np.array([len(r[1]) for r in rows], np.int64),
                       head, np.full(n, direction, np.uint8), np.full(n, 0x18, np.uint8), np.full(n, opened))


def _refused_rows_reject(cls, rows: list[tuple[int, bytes]]) -> list[bool]:
    """The contract for a window of 1, checked row by row: where `cls.prefilter` refuses a packet, a fresh
    dissector fed it as its flow's first payload packet rejects on it and raises no risk, in either
    direction, on a connection seen to open or joined mid-flow. Returns the mask of the first case
    (initiator, seen to open)."""
    masks = []
    for direction in (0, 1):
        for opened in (True, False):
            mask = np.asarray(cls.prefilter(_heads(rows, direction, opened))).tolist()
            for ok, (proto, payload) in zip(mask, rows):
                if ok:
                    continue
                d = cls()
                d.feed(FlowPacket(4, direction, 0.0, payload, 1000, 0x18, proto, opened))
                assert d.state is State.REJECTED and not d.risks, (cls.__name__, payload[:16].hex())
            masks.append(mask)
    return masks[0]


def test_pptp_prefilter_refuses_tcp_streams_without_the_magic_cookie() -> None:
    """PPTP's prefilter passes a TCP segment only when it is under 8 bytes or carries the magic cookie
    at bytes 4-7 (it used to pass every TCP segment): its control stream is never resynced mid-stream."""
    from tests import vpnbytes_pptp_l2tp as v

    rng = np.random.default_rng(12)
    pptp = [v.sccrq(), v.sccrp(), v.ocrq(7), v.sccrq() + v.sccrp(), v.sccrq()[:8], v.sccrq()[:20], v.sccrq()[:7]]
    cookie = bytes.fromhex("1a2b3c4d")
    bent = [b"\x00\x08\x00\x01" + cookie + b"\x00" * 8, b"\x00\x9c\x00\x02" + cookie + bytes(148),
            b"\x00\x9c\x00\x01" + cookie + b"\x00\x09" + bytes(146)]
    others = [b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
              b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00\x9c\x00\x01\x1a\x2b\x3c\x4e" + bytes(148)]
    others += [rng.bytes(int(n)) for n in rng.integers(8, 1500, 200)]
    rows = [(IPPROTO_TCP, b) for b in pptp + bent + others] + [(IPPROTO_TCP, rng.bytes(int(n))) for n in range(1, 8)]
    mask = _refused_rows_reject(PPTP, rows)
    assert mask[: len(pptp) + len(bent)] == [True] * (len(pptp) + len(bent))
    assert not any(mask[len(pptp) + len(bent) : -7])  # what the old prefilter passed
    assert all(mask[-7:])  # under 8 bytes: the dissector waits for more


def test_closing_windows_keep_their_contract() -> None:
    """Where a class says its window closes on a flow's first payload packet and its prefilter refuses
    that packet, a fresh dissector fed it rejects on it and raises no risk, on TCP and UDP. Cstp's,
    OpenVPNWrapped's and OpenVPN's windows of several packets close on a connection seen to open (only a
    ClientHello, a fully encrypted client segment or an OpenVPN packet behind its length may start it) and
    stay open on one joined mid-flow, whose first segments may start inside a record or packet."""
    rng = np.random.default_rng(5)
    payloads = [b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n",
                b"\x17\x03\x03\x00\x20" + bytes(32), b"\x16\x03\x01\x00\x40\x01" + bytes(63),
                b"\x15\x03\x03\x00\x02\x02\x28"]
    payloads += [rng.bytes(int(n)) for n in rng.integers(1, 1500, 300)]
    for proto, cls in ((pr, c) for pr in (IPPROTO_TCP, IPPROTO_UDP) for c in catalog.ALL if pr in c.transports):
        rows = [(proto, b) for b in payloads]
        for direction in (0, 1):
            for opened in (True, False) if proto == IPPROTO_TCP else (False,):
                heads = _heads(rows, direction, opened)
                shut = np.asarray(cls.closes_window(heads), bool) & ~np.asarray(cls.prefilter(heads), bool)
                if cls in (Cstp, OpenVPNWrapped) or (cls is OpenVPN and proto == IPPROTO_TCP):
                    assert shut.any() == opened  # the case the window closes on is not vacuous
                for (proto, payload), s in zip(rows, shut.tolist()):
                    if s:
                        d = cls()
                        d.feed(FlowPacket(1, direction, 0.0, payload, 1000, 0x18, proto, opened))
                        assert d.state is State.REJECTED and not d.risks, (cls.__name__, payload[:16].hex())



def test_a_closed_window_builds_no_dissector_and_an_open_one_waits(monkeypatch) -> None:
    """On a connection seen to open whose first segment no prefilter passes, no dissector is built even
    when a later segment starts like a TLS record (Cstp's window closed on the first); joined mid-flow, the
    same later segment still gets Cstp, fed from the flow's first payload packet."""
    from tests.flowbuild import P, table
    from vpnid.features.flows import FlowTable
    from vpnid.features.packets import TCP_ACK, TCP_PSH, TCP_SYN

    fed: list[int] = []
    original = Cstp.on_packet
    monkeypatch.setattr(Cstp, "on_packet", lambda self, pkt: (fed.append(pkt.index), original(self, pkt)))
    a, b = "198.18.0.1", "198.18.0.2"
    text, record = b"SSH-2.0-OpenSSH_9.6\r\n", b"\x17\x03\x03\x00\x20" + bytes(32)
    syn = [P(0.5, a, b, 40000, 8443, 6, TCP_SYN, b"", 999)]
    data = [P(1.0, a, b, 40000, 8443, 6, TCP_ACK | TCP_PSH, text, 1000),
            P(2.0, a, b, 40000, 8443, 6, TCP_ACK | TCP_PSH, record, 1000 + len(text))]
    for opened, want in ((True, []), (False, [1, 2])):
        fed.clear()
        ft = FlowTable([Cstp])
        ft.add(table(syn + data if opened else data))
        (flow,) = ft.close()
        assert fed == want and flow.verdict is None, opened
