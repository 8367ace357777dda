"""Feature vectors: schema, chunk independence, the protocol-shaped columns, and `drop_first`."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from tests.flowbuild import P, table
from vpnid.features.dissectors import catalog
from vpnid.features.flows import FlowTable, FlowTableConfig
from vpnid.features.vectors import (
    INDEX_COLUMNS,
    SCHEMA_VERSION,
    FeaturePlugin,
    extract,
    feature_names,
    schema,
    to_parquet,
    vectors,
)

A, B = "198.18.0.1", "198.18.0.2"


def run(chunks: list[list[P]], n_first: int = 20, drop_first: int = 0, dissectors=()) -> tuple[list, np.ndarray]:
    ft = FlowTable(dissectors, FlowTableConfig(drop_first=drop_first), plugins=(FeaturePlugin(n_first),))
    flows, frame = [], 1
    for pk in chunks:
        ft.add(table(pk, first_frame=frame))
        frame += len(pk)
        flows += ft.drain()
    flows += ft.close()
    return flows, vectors(flows, n_first)


def col(x: np.ndarray, name: str, n_first: int = 20) -> np.ndarray:
    return x[:, feature_names(n_first).index(name)]


def wg_data(receiver: int, counter: int, size: int) -> bytes:
    return struct.pack("<IIQ", 4, receiver, counter) + b"\xaa" * size


def tunnel(n: int = 60) -> list[P]:
    """WireGuard-shaped data both ways: fixed type and receiver index, counters stepping by one."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(P(i * 0.01, A, B, 40000, 51820, payload=wg_data(0x11223344, i // 2, 16 * (4 + i % 3))))
        else:
            out.append(P(i * 0.01, B, A, 51820, 40000, payload=wg_data(0x55667788, i // 2, 16 * (5 + i % 4))))
    return out


def noise(n: int = 60, seed: int = 1) -> list[P]:
    rng = np.random.default_rng(seed)
    return [P(i * 0.013, *((A, B, 5000, 443) if i % 3 else (B, A, 443, 5000)),
              payload=rng.integers(0, 256, int(rng.integers(20, 400)), dtype=np.uint8).tobytes()) for i in range(n)]


def write_pcap(path, packets: list[P]) -> None:
    """Raw-IPv4 pcap of UDP packets (dpkt builds the headers)."""
    import socket

    import dpkt

    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW)
        for p in packets:
            udp = dpkt.udp.UDP(sport=p.sport, dport=p.dport, data=p.payload)
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=socket.inet_aton(p.src), dst=socket.inet_aton(p.dst), p=17, data=udp)
            w.writepkt(bytes(ip), ts=p.ts + 1_700_000_000)


def test_schema_documents_every_column_once_with_unit_and_meaning():
    cols = schema(5)
    names = [c.name for c in cols]
    assert len(names) == len(set(names))
    assert all(c.unit and c.meaning for c in cols)
    assert sum(n.startswith("first") for n in names) == 15  # N sizes, directions, gaps
    tokens = {t for n in names for t in n.split("_")}
    assert not tokens & {"port", "ports", "ip", "addr", "address", "ttl", "timestamp", "epoch"}
    assert isinstance(SCHEMA_VERSION, int)


def test_every_dissector_family_has_a_state_column():
    """Adding a dissector family changes the layout: update SIG_FAMILIES and bump SCHEMA_VERSION (or keep
    the new dissector out of the features with `feature_state = False` until the next schema)."""
    from vpnid.features.vectors import SIG_FAMILIES

    assert set(SIG_FAMILIES) == {d.family for d in catalog.ALL if d.feature_state}


def test_chunking_does_not_change_any_feature():
    pk = sorted(tunnel() + noise(), key=lambda p: p.ts)
    _, whole = run([pk])
    _, split = run([pk[i : i + 7] for i in range(0, len(pk), 7)])
    np.testing.assert_allclose(whole, split, rtol=1e-9, atol=1e-6)  # sums in another order: rounding only


def test_header_stability_and_counters_separate_a_tunnel_from_noise():
    flows, x = run([sorted(tunnel() + noise(), key=lambda p: p.ts)])
    wg = next(i for i, f in enumerate(flows) if f.dport == 51820)
    other = 1 - wg
    for d in ("fwd", "bwd"):
        assert col(x, f"{d}_hdr_repeat_b0")[wg] == 1.0 and col(x, f"{d}_hdr_repeat_b7")[wg] == 1.0
        assert col(x, f"{d}_ctr_le32_at8")[wg] == 1.0
        assert col(x, f"{d}_ctr_le32_at8")[other] < 0.2
        assert col(x, f"{d}_hdr_repeat_b4")[other] < 0.2
    assert col(x, "entropy_head")[other] > col(x, "entropy_head")[wg]


def test_first_packets_sizes_directions_and_gaps():
    pk = [P(0.0, A, B, 1, 2, payload=b"x" * 10), P(0.5, B, A, 2, 1), P(1.0, B, A, 2, 1, payload=b"y" * 30)]
    _, x = run([pk], n_first=3)
    assert col(x, "first1_size", 3)[0] == 10 and col(x, "first1_dir", 3)[0] == 1
    assert col(x, "first2_size", 3)[0] == 30 and col(x, "first2_dir", 3)[0] == -1
    assert col(x, "first2_gap", 3)[0] == pytest.approx(1.0)  # the empty packet is not a payload packet
    assert col(x, "first3_size", 3)[0] == 0 and col(x, "first3_dir", 3)[0] == 0
    assert col(x, "fwd_empty_frac", 3)[0] == 0 and col(x, "bwd_empty_frac", 3)[0] == 0.5


def test_openvpn_opcode_filter_counts_distinct_opcodes_and_flags_resets_that_recur():
    ops = [7, 8, 4, 4, 5, 9, 9, 9]  # resets, control, ack, data_v2 ... (opcode << 3 in byte 0)

    def flow(opcodes):
        return [P(i * 0.1, A, B, 1, 1194, payload=bytes([op << 3]) + b"\0" * 40) for i, op in enumerate(opcodes)]

    _, x = run([flow(ops)])
    assert col(x, "ovpn_distinct_opcodes")[0] == 5 and col(x, "ovpn_opcode_filter")[0] == 1
    _, y = run([flow(ops + [7])])
    assert col(y, "ovpn_opcode_filter")[0] == 0


def test_signature_state_flags():
    flows, x = run([tunnel()], dissectors=catalog.ALL)
    assert flows[0].verdict is not None and flows[0].verdict.family == "wireguard"
    assert col(x, "sig_wireguard")[0] == 3
    assert col(x, "sig_openvpn")[0] == 2  # ran and rejected


def test_drop_first_hides_the_first_packets_from_counters_dissectors_and_features():
    pk = tunnel(60)
    flows, x = run([pk], drop_first=25)
    f = flows[0]
    assert f.total_packets == 35 and f.hidden == 25
    # The first packet left (packet 26) is sent by the responder, so it now counts as the initiator.
    assert (f.sport, f.dport) == (51820, 40000)
    assert f.first_ns == round(pk[25].ts * 1e9)
    split, _ = run([pk[:10], pk[10:30], pk[30:]], drop_first=25)
    assert [(g.packets, g.bytes, g.first_ns, g.sport) for g in split] == [(f.packets, f.bytes, f.first_ns, f.sport)]


def test_drop_first_removes_flows_with_no_packet_left():
    flows, _ = run([tunnel(60) + [P(5.0, A, "198.18.0.9", 7, 8, payload=b"q")]], drop_first=25)
    assert len(flows) == 1


def test_extract_gives_index_columns_and_round_trips_through_parquet(tmp_path):
    cap = tmp_path / "t.pcap"
    write_pcap(cap, tunnel(40))
    df = extract([cap], n_first=4)
    assert list(df.columns[: len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS)
    assert list(df.columns[len(INDEX_COLUMNS):]) == feature_names(4)
    assert len(df) == 1 and df.loc[0, "packets"] == 40
    out = tmp_path / "f.parquet"
    to_parquet(df, out)
    import json

    import pyarrow.parquet as pq

    t = pq.read_table(out)
    meta = json.loads(t.schema.metadata[b"vpnid"])
    assert meta["schema_version"] == SCHEMA_VERSION and meta["columns"]["first4_gap"]["unit"] == "s"
    assert t.to_pandas().equals(df)


def test_entropy_counts_only_the_leading_bytes_and_fit_the_histogram():
    """The byte histogram holds ENTROPY_PACKETS * ENTROPY_BYTES counts at most: all of them in one bin
    must neither overflow its dtype nor let later bytes or packets in (entropy stays 0 for a flow whose
    first payloads repeat one byte, whatever follows)."""
    from vpnid.features.vectors import ENTROPY_BYTES, ENTROPY_PACKETS, HEAD, N_FIRST, _Tables

    assert ENTROPY_PACKETS * ENTROPY_BYTES <= np.iinfo(_Tables(HEAD, N_FIRST).cols["hist"].dtype).max
    same = [P(i * 0.1, A, B, 1, 2, payload=b"A" * ENTROPY_BYTES + bytes(range(256))) for i in range(ENTROPY_PACKETS)]
    later = [P(1 + i * 0.1, A, B, 1, 2, payload=bytes(range(256))) for i in range(3)]
    _, x = run([same + later])
    assert col(x, "entropy_head")[0] == 0.0
    _, y = run([same[:-1] + later])  # one leading packet fewer: the varied bytes come in
    assert col(y, "entropy_head")[0] > 0.0
