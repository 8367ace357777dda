"""The `malformed_header` risk (issue #14): a header that claims IKE, ESP/AH or L2TP beyond chance but
breaks the protocol raises it, labels nothing by itself, and what a snaplen can cause (a length field
larger than the bytes captured) or what only looks random does not raise it."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.all import IP, UDP, Ether, Raw, wrpcap

from tests import vpnbytes_pptp_l2tp as pl
from tests import vpnbytes_wg_ipsec as b
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.dissectors.base import Dissector, State
from vpnid.features.dissectors.esp import AH, ESP
from vpnid.features.dissectors.ike import IKE
from vpnid.features.dissectors.l2tp import L2TP
from vpnid.features.packets import IPPROTO_AH, IPPROTO_ESP
from vpnid.features.risks import MALFORMED_HEADER

I_SPI, R_SPI = b"\x11" * 8, b"\x22" * 8


def wrong_message_id() -> bytes:
    """IKE_SA_INIT with a non-zero message ID (RFC 7296 §2.2): version byte and exact length, header wrong."""
    msg = bytearray(b.ikev2_sa_init_request(I_SPI))
    msg[20:24] = (7).to_bytes(4, "big")
    return bytes(msg)


def broken_chain() -> bytes:
    """IKE_AUTH behind the non-ESP marker whose first payload type is undefined; the length still exact."""
    msg = bytearray(b.ikev2_encrypted(I_SPI, R_SPI, 35, 0x08, 1, 300))
    msg[16] = 127
    return b.nat_t(bytes(msg))


def trailing(msg: bytes, junk: int = 20) -> bytes:
    """A well-formed message with bytes after the end its length field gives."""
    return msg + b.rnd(junk)


def l2tp_trailing() -> bytes:
    return trailing(pl.l2tp_sccrq(0x1234), 10)


MALFORMED: dict[str, tuple[type[Dissector], list[tuple[int, float, bytes]], dict]] = {
    "IKE with a wrong header field": (IKE, [(0, 0.0, wrong_message_id())], {}),
    "IKE behind the non-ESP marker, payload chain broken": (
        IKE, [(0, 0.0, broken_chain())], {}),
    "IKE message shorter than its datagram": (IKE, [(0, 0.0, trailing(b.ikev2_sa_init_request(I_SPI)))], {}),
    "IKE behind the marker, shorter than its datagram": (
        IKE, [(0, 0.0, b.nat_t(trailing(b.ikev1_main_mode_1(I_SPI))))], {}),
    "IKE over TCP, broken message in a frame": (IKE, [(0, 0.0, b.tcp_frame(b.nat_t(wrong_message_id())))],
                                                {"tcp": True}),
    "raw ESP cut inside its header": (ESP, [(0, 0.0, b"\x00\x01\x02\x03\x00")], {"proto": IPPROTO_ESP}),
    "AH cut inside its header": (AH, [(0, 0.0, b.ah(0x1000A, 1)[:10])], {"proto": IPPROTO_AH}),
    "AH with a reserved field set": (AH, [(0, 0.0, b.ah(0x1000A, 1, reserved=7))], {"proto": IPPROTO_AH}),
    "AH without room for an ICV": (AH, [(0, 0.0, b.ah(0x1000A, 1, icv=4))], {"proto": IPPROTO_AH}),
    "L2TP control message shorter than its datagram": (L2TP, [(0, 0.0, l2tp_trailing())], {}),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_a_broken_tunnel_header_raises_the_risk_and_labels_nothing(name):
    cls, packets, kw = MALFORMED[name]
    d = cls()
    assert b.run(d, packets, **kw) is not State.CONFIRMED and d.risks == {MALFORMED_HEADER}, d.evidence


SOUND: dict[str, tuple[type[Dissector], list[tuple[int, float, bytes]], dict]] = {
    "an IKE exchange": (IKE, [(0, 0.0, b.ikev2_sa_init_request(I_SPI)), (1, 0.1, b.ikev2_sa_init_response(I_SPI, R_SPI))],
                        {}),
    "IKE cut by a snaplen (length field past the bytes captured)": (
        IKE, [(0, 0.0, b.ikev2_sa_init_request(I_SPI)[:96])], {}),
    "IKE whose length field lies short and delimits no message": (
        IKE, [(0, 0.0, b.ike(0x20, 34, 0x08, [(33, b.rnd(300))], length_delta=-100))], {}),
    "random bytes behind the non-ESP marker": (IKE, [(0, 0.0, bytes(4) + b.rnd(200))], {}),
    "raw ESP": (ESP, [(0, 0.0, b.esp(0x1000A, 1, 120))], {"proto": IPPROTO_ESP}),
    "AH": (AH, [(0, 0.0, b.ah(0x1000A, 1))], {"proto": IPPROTO_AH}),
    "AH with a reserved SPI (rejected, not malformed)": (AH, [(0, 0.0, b.ah(3, 1))], {"proto": IPPROTO_AH}),
    "an L2TP handshake": (L2TP, [(0, 0.0, pl.l2tp_sccrq(0x1234)), (1, 0.1, pl.l2tp_sccrp(0x1234, 0x99))], {}),
    "L2TP cut by a snaplen": (L2TP, [(0, 0.0, pl.l2tp_sccrq(0x1234)[:30])], {}),
    "an L2TP flags word, then random bytes": (L2TP, [(0, 0.0, b"\xc8\x02\x00\x10" + b.rnd(60))], {}),
}


@pytest.mark.parametrize("name", SOUND)
def test_sound_cut_or_random_headers_raise_no_malformed_risk(name):
    cls, packets, kw = SOUND[name]
    d = cls()
    b.run(d, packets, **kw)
    assert MALFORMED_HEADER not in d.risks, d.evidence


def test_the_risk_reaches_the_record_with_and_without_prefilters_and_no_label(tmp_path: Path):
    """Through the pipeline: the widened IKE prefilter lets a message with trailing bytes reach the
    dissector, so both runs agree (the cheap stage's contract)."""
    frames = []
    for i, payload in enumerate((trailing(b.ikev2_sa_init_request(I_SPI)), wrong_message_id(), l2tp_trailing())):
        pkt = Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=40000 + i, dport=(500, 4500, 1701)[i])
        pkt = pkt / Raw(payload)
        pkt.time = 1_764_370_000 + i
        frames.append(pkt)
    wrpcap(str(tmp_path / "m.pcap"), frames)
    for prefilter in (True, False):
        records = list(classify_capture(str(tmp_path / "m.pcap"), Options(prefilter=prefilter)))
        assert [(r.label, r.risks) for r in records] == [("none", [MALFORMED_HEADER])] * 3, prefilter
