"""Flow table: keys, direction, timeouts, TCP reuse, eviction, chunk independence, dissector feeding."""

from __future__ import annotations

import numpy as np

from tests.flowbuild import P, table
from vpnid.features.dissectors.base import Dissector, FlowPacket, State
from vpnid.features.flows import FlowTable, FlowTableConfig
from vpnid.features.packets import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, address_text

A, B, C = "198.18.0.1", "198.18.0.2", "198.18.0.3"


def run(chunks: list[list[P]], dissectors=(), **cfg) -> tuple[list, FlowTable]:
    ft = FlowTable(dissectors, FlowTableConfig(**cfg))
    out = []
    frame = 1
    for pk in chunks:
        ft.add(table(pk, first_frame=frame))
        frame += len(pk)
        out += ft.drain()
    out += ft.close()
    return out, ft


def summary(flows) -> list[tuple]:
    return [
        (f.proto, address_text(f.src), f.sport, address_text(f.dst), f.dport, f.packets, f.bytes, f.first_ns,
         f.last_ns, f.end_reason)
        for f in flows
    ]


def test_both_directions_make_one_flow_with_first_sender_as_initiator():
    flows, _ = run([[P(1, B, A, 53, 5000), P(2, A, B, 5000, 53), P(3, B, A, 53, 5000)]])
    assert len(flows) == 1
    f = flows[0]
    assert (address_text(f.src), f.sport, address_text(f.dst), f.dport) == (B, 53, A, 5000)
    assert f.packets == [2, 1]
    assert f.end_reason == "end_of_capture"


def test_tcp_syn_ack_seen_first_names_its_sender_the_responder():
    flows, _ = run([[P(1, B, A, 443, 40000, 6, TCP_SYN | TCP_ACK), P(2, A, B, 40000, 443, 6, TCP_ACK)]])
    f = flows[0]
    assert (address_text(f.src), f.sport) == (A, 40000)
    assert f.packets == [1, 1]


def test_esp_flows_are_keyed_by_address_pair():
    flows, _ = run([[P(1, A, B, 0, 0, 50, payload=b"\0\0\1\0" + b"\0\0\0\1"),
                     P(2, B, A, 0, 0, 50, payload=b"\0\0\2\0" + b"\0\0\0\1")]])
    assert len(flows) == 1 and flows[0].packets == [1, 1]


def test_idle_timeout_splits_inside_a_chunk_and_across_chunks():
    pk = [P(0, A, B, 1, 2), P(10, B, A, 2, 1), P(200, A, B, 1, 2), P(500, A, B, 1, 2)]
    one, _ = run([pk], idle_timeout=120)
    many, _ = run([[p] for p in pk], idle_timeout=120)
    assert [f.packets for f in one] == [[1, 1], [1, 0], [1, 0]]
    assert [f.end_reason for f in one] == ["idle", "idle", "end_of_capture"]
    assert summary(one) == summary(many)


def test_active_timeout_splits_a_busy_flow():
    pk = [P(t, A, B, 1, 2) for t in range(0, 100, 5)]
    flows, _ = run([pk], idle_timeout=30, active_timeout=40)
    assert [f.total_packets for f in flows] == [9, 9, 2]
    assert [f.end_reason for f in flows] == ["active", "active", "end_of_capture"]
    assert flows[1].first_ns == 45 * 10**9


def test_syn_after_fin_starts_a_new_flow_but_trailing_ack_does_not():
    s, sa, a, fa = TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_FIN | TCP_ACK
    pk = [P(0, A, B, 4000, 80, 6, s), P(0.1, B, A, 80, 4000, 6, sa), P(0.2, A, B, 4000, 80, 6, fa),
          P(0.3, B, A, 80, 4000, 6, fa), P(0.4, A, B, 4000, 80, 6, a),
          P(5, A, B, 4000, 80, 6, s), P(5.1, B, A, 80, 4000, 6, TCP_RST)]
    one, _ = run([pk])
    assert [f.total_packets for f in one] == [5, 2]
    assert [f.end_reason for f in one] == ["fin", "rst"]
    split, _ = run([pk[:5], pk[5:]])
    assert summary(split) == summary(one)


def test_syn_without_earlier_fin_stays_in_the_flow():
    pk = [P(0, A, B, 4000, 80, 6, TCP_SYN), P(1, A, B, 4000, 80, 6, TCP_SYN)]  # retransmitted SYN
    flows, _ = run([pk])
    assert len(flows) == 1


def test_full_table_evicts_least_recently_seen_flows_and_counts_them():
    pk = [P(i, A, B, 1000 + i, 53) for i in range(5)] + [P(10, A, B, 1004, 53)]
    flows, ft = run([pk[:5], pk[5:]], max_flows=2)
    assert ft.stats["evicted"] == 3
    assert sorted(f.sport for f in flows if f.end_reason == "evicted") == [1000, 1001, 1002]
    assert len(flows) == 5


def test_chunking_does_not_change_flows():
    pk = []
    for i in range(60):
        pk.append(P(i * 7.0, A if i % 3 else B, C, 1000 + i % 4, 443, 6, TCP_ACK))
    whole, _ = run([pk], idle_timeout=20, active_timeout=100)
    pieces, _ = run([pk[i : i + 7] for i in range(0, 60, 7)], idle_timeout=20, active_timeout=100)
    assert sorted(summary(whole)) == sorted(summary(pieces))


class ThirdPacketFromResponder(Dissector):
    """Confirms when the responder's first payload arrives as the flow's third packet."""

    family = "test"
    transports = frozenset({17})
    budget = 4

    def on_packet(self, pkt: FlowPacket) -> None:
        if pkt.direction == 1:
            if pkt.index == 3:
                self.confirm(pkt, 0.5, f"responder spoke at packet {pkt.index}: {pkt.payload!r}")
            else:
                self.reject("responder spoke at the wrong time")


def test_dissectors_see_payload_packets_with_flow_index_and_direction():
    pk = [P(0, A, B, 1, 2, payload=b"a"), P(1, A, B, 1, 2), P(2, B, A, 2, 1, payload=b"b"), P(3, B, A, 2, 1, payload=b"c")]
    flows, _ = run([pk[:2], pk[2:]], dissectors=(ThirdPacketFromResponder,))
    v = flows[0].verdict
    assert v is not None and v.family == "test" and v.packet == 3
    assert v.evidence == ["responder spoke at packet 3: b'b'"]
    assert flows[0].pending == []


def test_dissectors_only_run_on_their_transports_and_give_up_on_budget():
    pk = [P(i, A, B, 1, 2, payload=b"x") for i in range(6)]
    flows, _ = run([pk], dissectors=(ThirdPacketFromResponder,))
    assert flows[0].verdict is None
    tcp = [P(0, B, A, 2, 1, 6, payload=b"y"), P(1, A, B, 1, 2, 6, payload=b"z"), P(2, B, A, 2, 1, 6, payload=b"w")]
    flows, _ = run([tcp], dissectors=(ThirdPacketFromResponder,))
    assert flows[0].verdict is None


class Risky(Dissector):
    """Raises a risk named after its class on every packet; rejects at packet `reject_at` (0: never)."""

    family = "risky"
    transports = frozenset({17})
    reject_at = 0

    def on_packet(self, pkt: FlowPacket) -> None:
        self.raise_risk(type(self).__name__)
        if pkt.index == self.reject_at:
            self.reject("seen enough")


class RejectsAtOnce(Risky):
    reject_at = 1


def test_a_flow_keeps_the_risks_of_rejected_undecided_and_confirming_dissectors():
    pk = [P(0, A, B, 1, 2, payload=b"a"), P(1, A, B, 1, 2), P(2, B, A, 2, 1, payload=b"b")]
    flows, _ = run([pk], dissectors=(RejectsAtOnce, Risky, ThirdPacketFromResponder))
    assert flows[0].verdict is not None and flows[0].risks == {"RejectsAtOnce", "Risky"}
    flows, _ = run([pk[:1]], dissectors=(Risky,))  # still undecided when the flow ends
    assert flows[0].verdict is None and flows[0].risks == {"Risky"}


def test_undecided_dissector_state_is_dropped_when_the_flow_ends():
    flows, _ = run([[P(0, A, B, 1, 2, payload=b"a")]], dissectors=(ThirdPacketFromResponder,))
    assert flows[0].pending == [] and flows[0].verdict is None
    assert State.CANDIDATE == 0


class DirectionCounter:
    """A columnar plugin: per-flow packet counts per direction, from the Segments arrays."""

    def on_segments(self, seg) -> None:
        for i, flow in enumerate(seg.flows):
            d = seg.direction[seg.starts[i] : (seg.starts[i + 1] if i + 1 < len(seg.starts) else None)]
            c = flow.ext.setdefault("dirs", [0, 0])
            c[0] += int((d == 0).sum())
            c[1] += int((d == 1).sum())

    def on_end(self, flow) -> None:
        flow.ext["ended"] = True


def test_plugins_see_every_packet_with_its_flow_direction_before_the_flow_ends():
    pk = [P(0, B, A, 53, 5000), P(1, A, B, 5000, 53), P(2, B, A, 53, 5000), P(200, A, B, 5000, 53),
          P(201, B, A, 53, 5000)] + [P(300 + t, A, C, 7, 9) for t in range(0, 60, 5)]
    for chunks in ([pk], [pk[:2], pk[2:9], pk[9:]]):
        ft = FlowTable((), FlowTableConfig(idle_timeout=120, active_timeout=30), plugins=(DirectionCounter(),))
        flows = []
        for c in chunks:
            ft.add(table(c))
            flows += ft.drain()
        flows += ft.close()
        assert [f.ext["dirs"] for f in flows] == [f.packets for f in flows]
        assert [f.packets for f in flows] == [[2, 1], [1, 1], [7, 0], [5, 0]]
        assert all(f.ext["ended"] for f in flows)


def test_segments_select_keeps_the_chosen_segments_rows_and_directions():
    seen = []

    class Picky:
        def on_segments(self, seg) -> None:
            sub = seg.select(np.array([f.sport != 1000 for f in seg.flows]))
            seen.append(([f.sport for f in sub.flows], sub.starts.tolist(), sub.direction.tolist(),
                         [int(seg.table.sport[r]) for r in sub.rows]))
            assert seg.select(np.zeros(len(seg.flows), bool)).flows == []

        def on_end(self, flow) -> None:
            pass

    pk = [P(0, A, B, 1000, 53), P(1, A, B, 2000, 53), P(2, B, A, 53, 2000), P(3, A, B, 3000, 53)]
    ft = FlowTable((), plugins=(Picky(),))
    ft.add(table(pk))
    assert seen == [([2000, 3000], [0, 2], [0, 1, 0], [2000, 53, 3000])]
