"""The compiled stages of the TLS-carried tunnels (`Cstp.skim`, `OpenVPNWrapped.skim`) take packets exactly
as `feed` would: on real TLS bytes (records split across segments and across the stage's runs,
retransmissions, a gap, a bad header, bulk records, the budget), a dissector that skims wherever it may
ends in the same state, with the same evidence and verdict packet, as one fed every packet; through the
flow table, with chunks cut anywhere, the flows get the same verdicts as when no dissector skims."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.flowbuild import P, table
from tests.test_dissector_cstp import (
    CBC,
    CHACHA,
    GCM,
    TLS13_AES,
    client_hello,
    handshake,
    http_phase,
    tls_record,
    tunnel,
)
from tests.test_dissector_openvpn_wrapped import openvpn_inner, through_tls
from vpnid.features.dissectors import catalog
from vpnid.features.dissectors.base import FlowPacket, FlowPayloads, State
from vpnid.features.dissectors.cstp import Cstp, record_overhead
from vpnid.features.dissectors.openvpn_wrapped import OpenVPNWrapped
from vpnid.features.flows import FlowTable
from vpnid.features.packets import TCP_ACK, TCP_PSH, TCP_SYN

Segment = tuple[int, int, bytes]  # direction, TCP sequence number, payload
Skimmer = Cstp | OpenVPNWrapped
SKIMMERS = (Cstp, OpenVPNWrapped)


def segments(stream: list[tuple[int, bytes]], rng: random.Random, cut: int | None = None,
             retransmit: bool = False) -> list[Segment]:
    """Each direction's bytes as TCP segments: as written (`cut` None), or cut every `cut` bytes (0: at
    random), with earlier bytes sent again ahead of some segments (`retransmit`)."""
    out: list[Segment] = []
    seq = [1000, 5000]
    sent = [0, 0]
    for d, payload in stream:
        pieces = [payload] if cut is None else []
        pos = 0
        while cut is not None and pos < len(payload):
            n = cut or rng.randint(1, 1600)
            pieces.append(payload[pos : pos + n])
            pos += n
        for piece in pieces:
            back = rng.randint(0, min(60, sent[d])) if retransmit and rng.random() < 0.3 else 0
            start = seq[d] + sent[d] - back
            history = b"".join(p for dd, p in stream if dd == d)
            out.append((d, start, history[sent[d] - back : sent[d] + len(piece)]))
            sent[d] += len(piece)
    return out


def feed_all(segs: list[Segment], cls: type[Skimmer]) -> Skimmer:
    """The reference: every packet through `feed`; `could` counts those fed where `skims()` held."""
    d = cls()
    d.could = 0
    for i, (direction, seq, payload) in enumerate(segs, 1):
        d.could += d.skims()
        if d.feed(FlowPacket(i, direction, float(i), payload, tcp_seq=seq, proto=6, opened=True)) is not State.CANDIDATE:
            break
    return d


def payloads(segs: list[Segment], rng: random.Random) -> FlowPayloads:
    """The segments as the compiled stage sees them, some of them in the table's `extra` buffer."""
    in_extra = [rng.random() < 0.3 for _ in segs]
    data = b"".join(p for (_, _, p), e in zip(segs, in_extra) if not e) + b"pad"
    extra, offset, at, at_extra = b"", [], 0, 0
    for (_, _, p), e in zip(segs, in_extra):
        if e:
            offset.append(len(data) + at_extra)
            extra += p
            at_extra += len(p)
        else:
            offset.append(at)
            at += len(p)
    return FlowPayloads(np.array([d for d, _, _ in segs], np.int64), np.array([s for _, s, _ in segs], np.int64),
                        np.array(offset, np.int64), np.array([len(p) for _, _, p in segs], np.int64),
                        np.frombuffer(data, np.uint8), np.frombuffer(extra or b"\0", np.uint8))


def feed_skimming(segs: list[Segment], rng: random.Random, cls: type[Skimmer]) -> tuple[Skimmer, int]:
    """Every packet through `feed`, but wherever `skims()` holds the next packets (a random run of them, as
    a chunk would end) go to `skim` first; returns the dissector and how many packets `skim` took."""
    d, skimmed = cls(), 0
    for i, (direction, seq, payload) in enumerate(segs, 1):
        if not d.ahead and d.skims():
            run = segs[i - 1 : i - 1 + rng.randint(1, 12)]
            d.ahead = d.skim(payloads(run, rng))
            skimmed += d.ahead
        if d.feed(FlowPacket(i, direction, float(i), payload, tcp_seq=seq, proto=6, opened=True)) is not State.CANDIDATE:
            break
    return d, skimmed


def outcome(d: Skimmer) -> tuple:
    """The verdict and what comes with it, as `on_packet` would see them (taken back from the compiled stage)."""
    if d._packed is not None:
        d._unpack()
    return d.state, d.confidence, tuple(d.evidence), dict(d.attributes), d.verdict_packet, d.seen, d.risks


def state(d: Skimmer) -> list:
    """Everything the dissector carries on to its next packet (taken back from the compiled stage): Cstp's
    inner sizes in the order its evidence would list them, OpenVPNWrapped's units."""
    if d._packed is not None:
        d._unpack()
    if isinstance(d, Cstp):
        return [d._pack().tolist(), [list(s.shaped[i].items()) for s in d._sizes.values() for i in (0, 1)]]
    return [d._pack().tolist(), d._units, d._overhead]


def https(rng: random.Random, suite: int, sizes: list[int]) -> list[tuple[int, bytes]]:
    """An HTTPS connection: the handshake, then requests up and answers down, each answer written as
    records of `sizes` (16 KiB bulk records end Cstp at once; small ones run into MAX_RECORDS)."""
    overhead = record_overhead(suite)
    out = handshake(suite)
    for _ in range(rng.randint(3, 12)):
        out.append((0, tls_record(23, rng.randbytes(rng.randint(60, 700) + overhead))))
        out.append((1, b"".join(tls_record(23, rng.randbytes(rng.choice(sizes) + overhead))
                                for _ in range(rng.randint(1, 4)))))
    return out


def records(d: int, inner: list[int], overhead: int = 24) -> list[tuple[int, bytes]]:
    """Records of direction `d`, one a segment, each one CSTP packet of these inner lengths."""
    return [(d, tls_record(23, bytes(8 + n + overhead))) for n in inner]


def streams() -> list[tuple[str, list[tuple[int, bytes]]]]:
    rng = random.Random(7)
    start = handshake(GCM) + http_phase(24)
    window_run = records(0, [52, 500, 500] * 5 + [500] * 3 + [52] * 10)  # the run fills only the last 16
    tied = [r for pair in zip(records(0, [52, 0] * 4), records(1, [1400] * 8)) for r in pair]  # 4× 52, 4× 0
    cut_short = tunnel(24, acks=2) + [(1, tls_record(23, bytes(1432))[:700])]
    return [("cstp gcm", handshake(GCM) + http_phase(24) + tunnel(24)),
            ("cstp chacha", handshake(CHACHA) + http_phase(16) + tunnel(16, inner_ack=40)),
            ("cstp tls13 late run", handshake(TLS13_AES) + http_phase(17)
             + [(1, tls_record(23, rng.randbytes(900 + 17))) for _ in range(20)] + tunnel(17, acks=30, inner_ack=72)),
            ("https bulk", https(rng, GCM, [16384, 16000, 1400])),
            ("https small", https(rng, CHACHA, [300, 500, 1200, 52 + 8])),
            ("https tls13", https(rng, TLS13_AES, [1000, 8000, 60 + 8, 8])),
            ("not tls after the hellos", handshake(GCM) + http_phase(24) + [(1, rng.randbytes(700))] + tunnel(24)),
            ("keepalives only", start + [(0, tls_record(23, bytes(32)))] * 120),
            ("a header of another version", start + tunnel(24, acks=2) + [(1, b"\x17\x02\x00\x00\x10" + bytes(16))]
             + tunnel(24)),
            ("chatty", start + records(0, [300] * 50)),
            ("a run in the last records", start + window_run),
            ("sizes tied", start + tied),
            ("ends inside a record", start + cut_short),
            ("wrapped openvpn tls13", through_tls(openvpn_inner())),
            ("wrapped openvpn gcm", through_tls(openvpn_inner(), GCM, tickets=False)),
            ("https small first write", through_tls([(0, 90), (1, 4000), (1, 1200), (0, 300), (1, 900)])),
            ("cbc suite", handshake(CBC) + http_phase(48)),
            ("no server hello", [(0, client_hello()), (1, tls_record(22, b"\x0b" + rng.randbytes(900)))]
             + http_phase(24) + tunnel(24)),
            ("the client's data first", [(0, client_hello())] + http_phase(24)[::2] + tunnel(24))]


CASES = [(name, cut, retransmit) for name, _ in streams() for cut, retransmit in
         ((None, False), (1, False), (0, False), (0, True), (1448, True))]


@pytest.mark.parametrize("cls", SKIMMERS)
@pytest.mark.parametrize("name, cut, retransmit", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_skimming_ends_where_feeding_every_packet_ends(cls: type[Skimmer], name: str, cut: int | None,
                                                       retransmit: bool, seed: int) -> None:
    stream = dict(streams())[name]
    rng = random.Random(seed)
    segs = segments(stream, rng, cut, retransmit)
    want = feed_all(segs, cls)
    got, skimmed = feed_skimming(segs, random.Random(seed), cls)
    assert outcome(got) == outcome(want)
    if want.state is State.CANDIDATE:
        assert state(got) == state(want)
    if want.could > 1 and cls is Cstp:  # the first such packet did not decide: the compiled stage took it
        assert skimmed


def gapped(cls: type[Skimmer], rng: random.Random) -> tuple[list[Segment], int, int]:
    """A stream for `cls` as segments, the direction that loses one and where it may: Cstp's client
    ACK records in the tunnel, OpenVPNWrapped's server flight of the outer handshake (its hard reset is
    then never read)."""
    if cls is Cstp:
        return segments(handshake(GCM) + http_phase(24) + tunnel(24, acks=40), rng), 0, 20
    return segments(through_tls(openvpn_inner()), rng, 200), 1, 2


@pytest.mark.parametrize("cls", SKIMMERS)
@pytest.mark.parametrize("seed", range(3))
def test_a_gap_breaks_its_direction_for_good(cls: type[Skimmer], seed: int) -> None:
    """A segment that skips bytes breaks its direction's framing for good, also where the bytes it skipped
    come next and it is sent again (out of order): that direction's records then no longer count."""
    rng = random.Random(seed)
    segs, direction, start = gapped(cls, rng)
    first, second = [i for i in range(start + seed, len(segs)) if segs[i][0] == direction][:2]
    for cut in (segs[:first] + segs[first + 1 :], segs[:first] + [segs[second]] + segs[first:]):
        want = feed_all(cut, cls)
        got, skimmed = feed_skimming(cut, random.Random(seed), cls)
        assert outcome(got) == outcome(want) and skimmed
        assert want.state is State.REJECTED


@pytest.mark.parametrize("cls", SKIMMERS)
def test_unpacking_restores_the_walk_and_the_counts(cls: type[Skimmer]) -> None:
    """A round trip through the packed row changes nothing a later packet could see."""
    rng = random.Random(5)
    stream = handshake(GCM) + http_phase(24) + tunnel(24, acks=4) if cls is Cstp else through_tls(openvpn_inner())
    segs = segments(stream, rng, 0, retransmit=True)
    d = feed_all(segs[: 14 if cls is Cstp else 6], cls)
    assert d.could and d.state is State.CANDIDATE
    before = state(d)
    d._packed = d._pack()
    d._unpack()
    assert state(d) == before


def flow_table_packets(stream: list[tuple[int, bytes]], rng: random.Random, port: int) -> list[P]:
    """One TCP connection seen from its SYN, the stream cut into random segments."""
    client, server = "10.0.0.1", "10.0.0.2"
    out = [P(0.0, client, server, 40000 + port, port, 6, TCP_SYN, b"", 999),
           P(0.001, server, client, port, 40000 + port, 6, TCP_SYN | TCP_ACK, b"", 4999)]
    for i, (d, seq, payload) in enumerate(segments(stream, rng, 0, retransmit=True)):
        src, dst = (client, server) if d == 0 else (server, client)
        sport, dport = (40000 + port, port) if d == 0 else (port, 40000 + port)
        out.append(P(0.01 * (i + 1), src, dst, sport, dport, 6, TCP_ACK | TCP_PSH, payload, seq))
    return out


def verdicts(pkts: list[P], cuts: list[int]) -> list[tuple]:
    ft = FlowTable(catalog.ALL)
    for a, b in zip([0, *cuts], [*cuts, len(pkts)]):
        ft.add(table(pkts[a:b], first_frame=a + 1))
    out = []
    for f in ft.close():
        v = f.verdict
        out.append((f.sport, f.dport, v and (v.family, v.confidence, tuple(v.evidence), v.attributes, v.packet),
                    tuple(sorted(f.risks)), tuple(c.__name__ for c in f.undecided)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_the_flow_table_gives_the_same_verdicts_with_the_compiled_stage_as_without(seed: int, monkeypatch) -> None:
    rng = random.Random(seed)
    pkts = sorted((p for port, (_, stream) in enumerate(streams(), 443) for p in flow_table_packets(stream, rng, port)),
                  key=lambda p: p.ts)
    cuts = sorted(rng.sample(range(1, len(pkts)), 6))
    taken = {cls: [] for cls in SKIMMERS}
    for cls in SKIMMERS:
        monkeypatch.setattr(cls, "skim", lambda self, packets, skim=cls.skim: taken[type(self)].append(skim(self, packets))
                            or taken[type(self)][-1])
    got = verdicts(pkts, cuts)
    for cls in SKIMMERS:
        monkeypatch.setattr(cls, "skims", lambda self: False)
    assert got == verdicts(pkts, cuts)
    assert sum(taken[Cstp]) > 100 and sum(taken[OpenVPNWrapped]) > 20
    label = {dport: v and v[0] for _, dport, v, *_ in got}
    # The tunnels, not HTTPS.
    assert [label[p] for p in (443, 444, 446, 447, 456, 457)] == ["openconnect"] * 2 + [None] * 2 + ["openvpn"] * 2
