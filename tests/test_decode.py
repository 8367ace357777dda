"""decode(): link layers, IPv4/IPv6, transports, fragment reassembly, tunnels, truncation, on scapy-built
frames (and one comparison with tshark)."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    AH,
    ARP,
    ESP,
    GRE,
    GRE_PPTP,
    ICMP,
    IP,
    PPP,
    TCP,
    UDP,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PPPoE,
    fragment,
    fragment6,
    wrpcap,
)
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.vxlan import VXLAN

from tests.frames import chunk
from vpnid.features.decode import Reassembler, decode
from vpnid.features.packets import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    TCP_ACK,
    TCP_PSH,
    PacketTable,
    RawChunk,
    address_text,
)

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
V4 = IP(src="10.0.0.1", dst="192.0.2.9")
V6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
UDP_PKT = UDP(sport=40000, dport=1194) / b"openvpn?"
MAPPED_LOOPBACK = b"\x00" * 10 + b"\xff\xff"


def run(
    frames: list[bytes], linktype: int = LINKTYPE_ETHERNET, reasm: Reassembler | None = None, **kw
) -> PacketTable:
    return decode(chunk(frames, linktype, **kw), reasm or Reassembler())


def row(t: PacketTable, i: int = 0) -> tuple:
    """One row as (src, dst, proto, sport, dport, ip_bytes, payload, encap) for exact comparisons."""
    return (
        address_text(t.src[i].tobytes()),
        address_text(t.dst[i].tobytes()),
        int(t.proto[i]),
        int(t.sport[i]),
        int(t.dport[i]),
        int(t.ip_bytes[i]),
        t.payload(i),
        int(t.encap[i]),
    )


V4_UDP_ROW = ("10.0.0.1", "192.0.2.9", 17, 40000, 1194, 36, b"openvpn?", 0)
V6_UDP_ROW = ("2001:db8::1", "2001:db8::2", 17, 40000, 1194, 56, b"openvpn?", 0)


# --- link layers --------------------------------------------------------------------------------------

LINK_CASES = {
    "ethernet": (LINKTYPE_ETHERNET, bytes(ETH / V4 / UDP_PKT), V4_UDP_ROW),
    "double_vlan": (
        LINKTYPE_ETHERNET, bytes(ETH / Dot1AD(vlan=100) / Dot1Q(vlan=7) / V6 / UDP_PKT), V6_UDP_ROW
    ),
    "vlan_9100": (LINKTYPE_ETHERNET, bytes(Ether(type=0x9100) / Dot1Q(vlan=7) / V4 / UDP_PKT), V4_UDP_ROW),
    "mpls": (
        LINKTYPE_ETHERNET,
        bytes(Ether(type=0x8847) / MPLS(label=16, s=0) / MPLS(label=17, s=1) / V6 / UDP_PKT),
        V6_UDP_ROW,
    ),
    "pppoe": (
        LINKTYPE_ETHERNET,
        bytes(Ether(type=0x8864) / PPPoE(sessionid=3) / PPP(proto=0x0021) / V4 / UDP_PKT),
        V4_UDP_ROW,
    ),
    "sll": (LINKTYPE_LINUX_SLL, bytes(CookedLinux(proto=0x86DD) / V6 / UDP_PKT), V6_UDP_ROW),
    "sll2": (LINKTYPE_LINUX_SLL2, bytes(CookedLinuxV2(proto=0x0800) / V4 / UDP_PKT), V4_UDP_ROW),
    "raw_v4": (LINKTYPE_RAW, bytes(V4 / UDP_PKT), V4_UDP_ROW),
    "raw_v6": (LINKTYPE_RAW, bytes(V6 / UDP_PKT), V6_UDP_ROW),
    "ipv4": (LINKTYPE_IPV4, bytes(V4 / UDP_PKT), V4_UDP_ROW),
    "ipv6": (LINKTYPE_IPV6, bytes(V6 / UDP_PKT), V6_UDP_ROW),
    "null_le_v4": (LINKTYPE_NULL, struct.pack("<I", 2) + bytes(V4 / UDP_PKT), V4_UDP_ROW),
    "null_be_v4": (LINKTYPE_NULL, struct.pack(">I", 2) + bytes(V4 / UDP_PKT), V4_UDP_ROW),
    "null_le_v6_linux": (LINKTYPE_NULL, struct.pack("<I", 10) + bytes(V6 / UDP_PKT), V6_UDP_ROW),
    "null_be_v6_macos": (LINKTYPE_NULL, struct.pack(">I", 30) + bytes(V6 / UDP_PKT), V6_UDP_ROW),
    "null_le_v6_freebsd": (LINKTYPE_NULL, struct.pack("<I", 28) + bytes(V6 / UDP_PKT), V6_UDP_ROW),
    "loop_v6_openbsd": (LINKTYPE_LOOP, struct.pack(">I", 24) + bytes(V6 / UDP_PKT), V6_UDP_ROW),
}


@pytest.mark.parametrize("case", LINK_CASES)
def test_link_types(case: str) -> None:
    linktype, frame, expected = LINK_CASES[case]
    t = run([frame], linktype)
    assert len(t) == 1
    assert row(t) == expected
    assert t.frame.tolist() == [1]


def test_link_types_mixed_in_one_chunk_keep_capture_order() -> None:
    frames = [bytes(V6 / UDP_PKT), bytes(ETH / V4 / UDP_PKT), struct.pack("<I", 30) + bytes(V6 / UDP_PKT)]
    t = decode(chunk(frames, [LINKTYPE_RAW, LINKTYPE_ETHERNET, LINKTYPE_NULL]), Reassembler())
    assert [row(t, i) for i in range(3)] == [V6_UDP_ROW, V4_UDP_ROW, V6_UDP_ROW]
    assert t.frame.tolist() == [1, 2, 3]


def test_loop_is_network_order_only() -> None:
    t = run([struct.pack("<I", 2) + bytes(V4 / UDP_PKT)], LINKTYPE_LOOP)
    assert len(t) == 0 and t.stats["non_ip"] == 1


def test_unknown_linktype_is_counted_and_dropped() -> None:
    frames = [bytes(ETH / V4 / UDP_PKT)] * 3
    t = decode(chunk(frames, [147, LINKTYPE_ETHERNET, 147]), Reassembler())
    assert t.frame.tolist() == [2]
    assert t.stats["linktype_147"] == 2
    assert t.stats["non_ip"] == 0


def test_non_ip_and_pppoe_non_ip() -> None:
    frames = [
        bytes(ETH / ARP(psrc="10.0.0.1", pdst="10.0.0.2")),
        bytes(Ether(type=0x8864) / PPPoE(sessionid=3) / PPP(proto=0xC021) / b"lcp-stuff"),
        bytes(ETH / V4 / UDP_PKT),
    ]
    t = run(frames)
    assert t.frame.tolist() == [3]
    assert t.stats["non_ip"] == 2


def test_ethernet_padding_is_not_payload() -> None:
    frame = bytes(ETH / V4 / UDP(sport=1, dport=2) / b"x")  # 43 bytes: a real NIC pads to 60
    t = run([frame + b"\x00" * 17])
    assert t.payload(0) == b"x"
    assert t.ip_bytes.tolist() == [29]


# --- IP and transports --------------------------------------------------------------------------------


def test_tcp_flags_seq_and_options() -> None:
    tcp = TCP(sport=51000, dport=443, flags="PA", seq=0xDEADBEEF, options=[("MSS", 1460), ("NOP", None)])
    pkt = V4 / tcp / b"tls"
    t = run([bytes(ETH / pkt)])
    assert row(t) == ("10.0.0.1", "192.0.2.9", 6, 51000, 443, len(pkt), b"tls", 0)
    assert int(t.tcp_flags[0]) == TCP_PSH | TCP_ACK
    assert int(t.tcp_seq[0]) == 0xDEADBEEF


def test_ipv4_options() -> None:
    pkt = IP(src="10.0.0.1", dst="192.0.2.9", options=b"\x01\x01\x01\x00") / UDP_PKT
    assert row(run([bytes(ETH / pkt)])) == ("10.0.0.1", "192.0.2.9", 17, 40000, 1194, 40, b"openvpn?", 0)


def test_ipv6_extension_headers() -> None:
    routing = IPv6ExtHdrRouting(addresses=["2001:db8::3"])
    pkt = V6 / IPv6ExtHdrHopByHop() / routing / IPv6ExtHdrDestOpt() / UDP_PKT
    t = run([bytes(ETH / pkt)])
    assert row(t) == ("2001:db8::1", "2001:db8::2", 17, 40000, 1194, len(pkt), b"openvpn?", 0)


def test_ipv6_atomic_fragment_is_not_reassembled() -> None:
    t = run([bytes(ETH / V6 / IPv6ExtHdrFragment(id=9, offset=0, m=0) / UDP_PKT)])
    assert row(t)[:5] == V6_UDP_ROW[:5] and t.payload(0) == b"openvpn?"
    assert t.stats["fragments"] == 0


def test_ipv6_ah_is_the_transport() -> None:
    ah = AH(spi=0x1234, seq=5, icv=b"\x00" * 12)
    t = run([bytes(ETH / V6 / IPv6ExtHdrHopByHop() / ah / UDP_PKT)])
    assert t.proto.tolist() == [51] and t.sport.tolist() == [0]
    assert t.payload(0) == bytes(ah / UDP_PKT)


def test_esp_payload_starts_at_spi() -> None:
    t = run([bytes(ETH / V4 / ESP(spi=0xC0FFEE, seq=1, data=b"ciphertext"))])
    assert row(t)[2:5] == (50, 0, 0)
    assert t.payload(0)[:8] == struct.pack(">II", 0xC0FFEE, 1)


def test_icmp_and_no_next_header() -> None:
    frames = [
        bytes(ETH / V4 / ICMP(type=8, id=1, seq=2) / b"ping"),
        bytes(ETH / IPv6(src="::1", dst="::2", nh=59) / b"ignored"),
    ]
    t = run(frames)
    assert t.proto.tolist() == [1, 59]
    assert t.payload(0) == bytes(ICMP(type=8, id=1, seq=2) / b"ping")
    assert t.payload(1) == b""
    assert t.ip_bytes.tolist() == [32, 47]


def test_zero_ip_length_from_segmentation_offload_uses_captured_length() -> None:
    frames = [bytes(ETH / IP(src="10.0.0.1", dst="192.0.2.9", len=0) / TCP(sport=1, dport=2) / (b"S" * 3000))]
    frames.append(bytes(ETH / IPv6(src="::1", dst="::2", plen=0) / UDP(sport=1, dport=2, len=0) / b"jumbo"))
    t = run(frames)
    assert t.ip_bytes.tolist() == [20 + 20 + 3000, 40 + 8 + 5]
    assert t.payload(0) == b"S" * 3000 and t.payload(1) == b"jumbo"


def test_empty_chunk() -> None:
    t = decode(RawChunk.empty(), Reassembler())
    assert len(t) == 0 and t.src.dtype == np.dtype("V16")
    assert t.stats["non_ip"] == 0 and t.stats["truncated"] == 0


# --- truncation ---------------------------------------------------------------------------------------


def test_snaplen_inside_payload_keeps_row_with_captured_bytes() -> None:
    frame = bytes(ETH / V4 / UDP(sport=1, dport=2) / (b"A" * 100))
    t = run([frame], caplen=[14 + 20 + 8 + 10])
    assert t.payload(0) == b"A" * 10
    assert t.ip_bytes.tolist() == [128]
    assert t.stats["truncated"] == 0


@pytest.mark.parametrize(
    "cut", [14 + 10, 14 + 20 + 4, 14 + 40 + 4, 10], ids=["in_ip", "in_udp", "in_v6_udp", "in_ethernet"]
)
def test_snaplen_inside_headers_drops_row(cut: int) -> None:
    v6 = cut == 14 + 40 + 4
    frame = bytes(ETH / (V6 if v6 else V4) / UDP_PKT)
    t = run([frame, bytes(ETH / V4 / UDP_PKT)], caplen=[cut, None])
    assert t.frame.tolist() == [2]
    assert t.stats["truncated"] == 1


def test_ip_length_shorter_than_header_is_bad() -> None:
    frame = bytearray(bytes(ETH / V4 / UDP_PKT))
    frame[14 + 2 : 14 + 4] = struct.pack(">H", 24)  # total length cuts the UDP header
    t = run([bytes(frame)])
    assert len(t) == 0 and t.stats["bad_ip"] == 1 and t.stats["truncated"] == 0


# --- fragments ----------------------------------------------------------------------------------------

BIG = bytes(range(256)) * 12  # 3072 bytes


def test_ipv4_fragments_out_of_order_across_chunks() -> None:
    pkt = IP(src="10.0.0.1", dst="192.0.2.9", id=4242) / UDP(sport=500, dport=500) / BIG
    frags = [bytes(ETH / f) for f in fragment(pkt, fragsize=1000)]
    assert len(frags) == 4
    reasm = Reassembler()
    first = run([frags[3], bytes(ETH / V4 / UDP_PKT), frags[1]], reasm=reasm)
    assert [row(first, 0)] == [V4_UDP_ROW]
    assert first.stats["fragments"] == 2 and first.stats["reassembled"] == 0
    second = decode(chunk([frags[0], frags[2]], first_frame=4, ts_s=[3, 4]), reasm)
    assert second.frame.tolist() == [5]
    assert row(second) == ("10.0.0.1", "192.0.2.9", 17, 500, 500, len(pkt), BIG, 0)
    assert second.stats["fragments"] == 2 and second.stats["reassembled"] == 1
    assert second.data.size == sum(len(f) for f in (frags[0], frags[2]))  # the chunk's frames
    assert second.extra.size == len(pkt)  # and the reassembled datagram beside them


def test_ipv6_fragments() -> None:
    pkt = V6 / IPv6ExtHdrFragment(id=77) / UDP(sport=4500, dport=4500) / BIG
    frags = [bytes(ETH / f) for f in fragment6(pkt, 1280)]
    assert len(frags) == 3
    t = run([frags[1], frags[0], frags[2]])
    assert t.frame.tolist() == [3]
    assert row(t) == ("2001:db8::1", "2001:db8::2", 17, 4500, 4500, 40 + 8 + len(BIG), BIG, 0)
    assert t.stats["fragments"] == 3 and t.stats["reassembled"] == 1


def v4_fragments(ident: int, pieces: list[tuple[int, bytes, bool]], src: str = "10.0.0.1") -> list[bytes]:
    """Hand-made fragments of a UDP datagram: (byte offset, data, more fragments)."""
    return [
        bytes(ETH / IP(src=src, dst="192.0.2.9", id=ident, proto=17, frag=off // 8, flags=int(more)) / data)
        for off, data, more in pieces
    ]


UDP_HDR = bytes(UDP(sport=7, dport=9, len=8 + 24, chksum=0))


def test_identical_overlap_is_accepted() -> None:
    frames = v4_fragments(1, [(0, UDP_HDR + b"A" * 8, True), (8, b"A" * 16, True), (24, b"A" * 8, False)])
    t = run(frames)
    assert row(t)[2:7] == (17, 7, 9, 20 + 32, b"A" * 24)


def test_overlapping_fragments_with_different_bytes_are_dropped() -> None:
    frames = v4_fragments(2, [(0, UDP_HDR + b"A" * 8, True), (8, b"B" * 16, True), (24, b"A" * 8, False)])
    t = run(frames)
    assert len(t) == 0
    assert t.stats["fragment_overlaps"] == 1
    assert t.stats["fragments_dropped"] == 3  # the two held, then the late one hits the tombstone
    assert t.stats["reassembled"] == 0


def test_fragment_cap_evicts_oldest() -> None:
    reasm = Reassembler(max_datagrams=2)
    starts = [v4_fragments(i, [(0, UDP_HDR + b"A" * 16, True)])[0] for i in (1, 2, 3)]
    ends = [v4_fragments(i, [(24, b"A" * 8, False)])[0] for i in (1, 3)]
    t = run(starts + ends, reasm=reasm)
    # 3 evicts 1; the end of 1 then starts a new datagram, evicting 2; 3 still completes
    assert t.frame.tolist() == [5]
    assert t.stats["fragment_evictions"] == 2
    assert t.stats["fragments_dropped"] == 2
    assert t.stats["reassembled"] == 1


def test_fragment_byte_cap_evicts_oldest() -> None:
    reasm = Reassembler(max_bytes=60)
    frames = [v4_fragments(i, [(0, UDP_HDR + b"A" * 16, True)])[0] for i in (1, 2, 3)]
    t = run(frames, reasm=reasm)
    assert t.stats["fragment_evictions"] == 1  # 3 x 24 bytes > 60


def test_fragment_timeout_relative_to_packet_time() -> None:
    frames = v4_fragments(5, [(0, UDP_HDR + b"A" * 16, True), (24, b"A" * 8, False)])
    t = run(frames, ts_s=[100.0, 131.0])
    assert len(t) == 0
    assert t.stats["fragment_timeouts"] == 1 and t.stats["fragments_dropped"] == 1  # the late one waits alone
    late = run(frames, ts_s=[100.0, 129.0])
    assert late.stats["reassembled"] == 1


def test_oversize_and_truncated_fragments_are_dropped() -> None:
    oversize = v4_fragments(6, [(65528, b"A" * 16, False)])
    cut = v4_fragments(7, [(0, UDP_HDR + b"A" * 16, True)])
    t = run(oversize + cut, caplen=[None, 14 + 20 + 10])
    assert t.stats["fragment_oversize"] == 1 and t.stats["fragment_truncated"] == 1
    assert t.stats["fragments_dropped"] == 2


# --- tunnels ------------------------------------------------------------------------------------------

INNER = IP(src="172.16.0.1", dst="172.16.0.2") / TCP(sport=1234, dport=80, flags="S", seq=1) / b"inner"
INNER_ROW = ("172.16.0.1", "172.16.0.2", 6, 1234, 80, len(INNER), b"inner")
INNER6 = IPv6(src="fd00::1", dst="fd00::2") / UDP_PKT
INNER6_ROW = ("fd00::1", "fd00::2", 17, 40000, 1194, 56, b"openvpn?")


@pytest.mark.parametrize(
    "gre",
    [GRE(key_present=1, key=0xABCD, seqnum_present=1, sequence_number=9), GRE(chksum_present=1), GRE()],
    ids=["key_seq", "checksum", "plain"],
)
def test_gre_v0(gre: GRE) -> None:
    t = run([bytes(ETH / V4 / gre / INNER)])
    assert row(t) == (*INNER_ROW, 1)
    assert t.stats["decapsulated"] == 1


def test_gre_transparent_ethernet_bridging() -> None:
    t = run([bytes(ETH / V6 / GRE(proto=0x6558) / Ether() / Dot1Q(vlan=5) / INNER)])
    assert row(t) == (*INNER_ROW, 1)


def test_tunnel_with_inner_header_cut_stays_outer_row() -> None:
    frame = bytes(ETH / V4 / GRE(key_present=1, key=1) / INNER)
    t = run([frame], caplen=[14 + 20 + 8 + 12])
    assert row(t)[:5] == ("10.0.0.1", "192.0.2.9", 47, 0, 0)
    assert t.encap.tolist() == [0] and t.stats["decapsulated"] == 0 and t.stats["truncated"] == 0


def test_pptp_gre_with_clear_ppp_ip_is_decapsulated() -> None:
    """Clear PPP inside PPTP's enhanced GRE: with the address/control bytes, and with both compressions."""
    full = GRE_PPTP(seqnum_present=1, call_id=3, sequence_number=1) / b"\xff\x03" / PPP(proto=0x0021) / INNER
    compressed = GRE_PPTP(seqnum_present=1, acknum_present=1, call_id=3) / b"\x57" / INNER6
    t = run([bytes(ETH / V4 / full), bytes(ETH / V4 / compressed)])
    assert [row(t, i) for i in range(2)] == [(*INNER_ROW, 1), (*INNER6_ROW, 1)]


def test_pptp_gre_with_encrypted_ppp_stays_gre() -> None:
    mppe = GRE_PPTP(seqnum_present=1, call_id=3, sequence_number=1) / PPP(proto=0x00FD) / (b"\x90\x01" + bytes(40))
    t = run([bytes(ETH / V4 / mppe)])
    assert row(t)[:5] == ("10.0.0.1", "192.0.2.9", 47, 0, 0)
    assert t.encap.tolist() == [0] and t.stats["decapsulated"] == 0


@pytest.mark.parametrize(
    "outer,inner,expected",
    [
        (V4, INNER, INNER_ROW),
        (V4, INNER6, INNER6_ROW),
        (V6, INNER, INNER_ROW),
        (V6, INNER6, INNER6_ROW),
    ],
    ids=["4in4", "6in4", "4in6", "6in6"],
)
def test_ip_in_ip(outer, inner, expected: tuple) -> None:
    t = run([bytes(ETH / outer / inner)])
    assert row(t) == (*expected, 1)


def test_decapsulation_depth_limit() -> None:
    pkt = INNER
    for _ in range(6):
        pkt = IP(src="10.9.9.9", dst="10.8.8.8") / pkt
    t = run([bytes(ETH / pkt)])
    assert row(t)[:3] == ("10.9.9.9", "10.8.8.8", 4)
    assert t.encap.tolist() == [4] and t.stats["decapsulated"] == 4


def test_gtpu_with_extension_header() -> None:
    gtp = GTP_U_Header(teid=0x11, E=1, next_ex=0x85) / GTPPDUSessionContainer(type=1, QFI=9)
    frames = [
        bytes(ETH / V4 / UDP(sport=2152, dport=2152) / gtp / INNER),
        bytes(ETH / V6 / UDP(sport=40000, dport=2152) / GTP_U_Header(teid=0x12) / INNER),
        bytes(ETH / V4 / UDP(sport=2152, dport=2152) / GTP_U_Header(gtp_type=1) / (b"\x00" * 8)),  # echo req.
    ]
    t = run(frames)
    assert row(t, 0) == (*INNER_ROW, 1)
    assert row(t, 1) == (*INNER_ROW, 1)
    assert row(t, 2)[2:5] == (17, 2152, 2152) and t.encap[2] == 0


def test_vxlan() -> None:
    t = run([bytes(ETH / V4 / UDP(sport=5555, dport=4789) / VXLAN(vni=42) / Ether() / INNER)])
    assert row(t) == (*INNER_ROW, 1)


def test_fragmented_tunnel_is_reassembled_then_decapsulated() -> None:
    inner = IP(src="172.16.0.1", dst="172.16.0.2") / UDP(sport=1, dport=2) / BIG
    outer = IP(src="10.0.0.1", dst="192.0.2.9", id=99) / GRE(key_present=1, key=1) / inner
    frags = [bytes(ETH / f) for f in fragment(outer, fragsize=1400)]
    t = run(frags)
    assert row(t) == ("172.16.0.1", "172.16.0.2", 17, 1, 2, 28 + len(BIG), BIG, 1)
    assert t.frame.tolist() == [len(frags)]


# --- robustness and oracle ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(st.binary(max_size=120), min_size=1, max_size=8),
    linktype=st.sampled_from(
        [LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_NULL, LINKTYPE_LINUX_SLL2, LINKTYPE_IPV6]
    ),
    prefix=st.sampled_from([b"", bytes(ETH / V4)[:34], bytes(ETH / V6)[:54], bytes(ETH / V4 / GRE())[:38]]),
)
def test_garbage_never_reads_outside_frames(frames: list[bytes], linktype: int, prefix: bytes) -> None:
    frames = [prefix + f for f in frames]
    c = chunk(frames, linktype)
    t = decode(c, Reassembler())
    ends = c.offset + c.caplen
    for i in range(len(t)):
        frame_row = int(t.frame[i]) - 1
        off, n = int(t.payload_off[i]), int(t.payload_len[i])
        assert n >= 0
        if off < c.data.size:  # payloads in reassembled datagrams live past the chunk's bytes
            assert c.offset[frame_row] <= off and off + n <= ends[frame_row]


def oracle_frames() -> list:
    return [
        ETH / V4 / UDP_PKT,
        ETH / V6 / TCP(sport=443, dport=50000, flags="A") / b"x",
        ETH / Dot1Q(vlan=3) / V4 / TCP(sport=1, dport=2),
        ETH / ARP(),
        ETH / V4 / GRE(key_present=1, key=7) / INNER,
        ETH / V6 / INNER,
        ETH / V4 / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=1) / INNER6,
        ETH / V4 / ICMP(),
        ETH / IPv6(src="fe80::1", dst="ff02::1") / IPv6ExtHdrHopByHop() / UDP(sport=546, dport=547),
    ]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark (pyshark's backend) is not installed")
def test_five_tuples_match_tshark(tmp_path) -> None:
    pyshark = pytest.importorskip("pyshark")
    from scapy.all import rdpcap

    path = tmp_path / "mixed.pcap"
    wrpcap(str(path), oracle_frames())
    frames = [bytes(p) for p in rdpcap(str(path))]
    t = decode(chunk(frames), Reassembler())
    ours = {int(t.frame[i]): row(t, i)[:5] for i in range(len(t))}

    try:
        theirs = _tshark_tuples(pyshark, path)
    except pyshark.capture.capture.TSharkCrashException:
        # tshark once exited 255 while loading on a fresh CI machine (not reproduced here): a crash of the
        # oracle is retried once; a second crash fails the test, and so does any disagreement below.
        theirs = _tshark_tuples(pyshark, path)
    assert len(theirs) == len(oracle_frames()) - 1  # every frame but the ARP one
    assert ours == theirs


def _tshark_tuples(pyshark, path) -> dict[int, tuple]:
    """Frame number -> (src, dst, proto, sport, dport) of the innermost IP layer, as tshark dissects it."""
    theirs = {}
    with pyshark.FileCapture(str(path), keep_packets=False) as cap:
        for pkt in cap:
            ips = [layer for layer in pkt.layers if layer.layer_name in ("ip", "ipv6")]
            if not ips:
                continue
            ip = ips[-1]
            ported = [layer for layer in pkt.layers if layer.layer_name in ("tcp", "udp")]
            if ported and pkt.layers.index(ported[-1]) > pkt.layers.index(ip):
                l4 = ported[-1]
                proto, ports = {"tcp": 6, "udp": 17}[l4.layer_name], (int(l4.srcport), int(l4.dstport))
            else:  # ipv6.nxt would be the first extension header, so only IPv4 here in practice
                proto, ports = int(ip.proto if ip.layer_name == "ip" else ip.nxt), (0, 0)
            theirs[int(pkt.number)] = (ip.src, ip.dst, proto, *ports)
    return theirs
