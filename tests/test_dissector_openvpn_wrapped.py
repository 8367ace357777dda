"""TCP OpenVPN inside a wrapper: the lab's stunnel and Shadowsocks captures confirmed, the obfs4 one left
unlabelled; handshake shapes built from the control-channel layout through TLS records confirmed, and
ordinary TLS (HTTP/1.1, HTTP/2, WebSocket-like, resumption) and fully encrypted look-alikes rejected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_dissector_cstp import client_hello, handshake, server_hello, tls_record
from vpnid.classifier.running.pipeline import Options, classify_capture
from vpnid.features.dissectors.base import FlowPacket, State
from vpnid.features.dissectors.cstp import record_overhead
from vpnid.features.dissectors.openvpn_wrapped import ACK_ENTRY, OpenVPNWrapped
from vpnid.features.dissectors.shadowsocks import CHUNK_OVERHEAD
from vpnid.features.risks import OBFUSCATED, WRAPPED_TUNNEL

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "pcaps" / "corpus"
GCM, TLS13_AES = 0xC02C, 0x1301


def app(inner: int, overhead: int) -> bytes:
    return tls_record(23, os.urandom(inner + overhead))


def tls13_handshake() -> list[tuple[int, bytes]]:
    """ClientHello; ServerHello, CCS and the encrypted server flight; the client's CCS and Finished."""
    return [(0, client_hello()), (1, server_hello(TLS13_AES) + tls_record(20, b"\x01") + app(800, 17) + app(60, 17)),
            (0, tls_record(20, b"\x01") + app(52, 17))]


def openvpn_inner(reset: int = 44, hello: int = 333, fragment: int = 1224, ack: int = 56) -> list[tuple[int, int]]:
    """TCP OpenVPN's control handshake as (direction, write size), as the lab's 2.6 with tls-auth writes it."""
    return [(0, reset), (1, reset + ACK_ENTRY), (0, hello), (1, fragment), (0, ack), (1, 239), (0, fragment),
            (1, 222), (0, 399), (1, 293)]


def run(packets: list[tuple[int, bytes]], opened: bool = True) -> OpenVPNWrapped:
    d, seq = OpenVPNWrapped(), [1000, 5000]
    for i, (direction, payload) in enumerate(packets, 1):
        if d.feed(FlowPacket(i, direction, float(i), payload, tcp_seq=seq[direction], proto=6, opened=opened)) \
                is not State.CANDIDATE:
            break
        seq[direction] += len(payload)
    else:
        d.on_end()
    return d


def through_tls(units: list[tuple[int, int]], suite: int = TLS13_AES, tickets: bool = True) -> list[tuple[int, bytes]]:
    overhead = record_overhead(suite) or 48  # CBC: padding and MAC, any size serves
    head = tls13_handshake() if suite == TLS13_AES else handshake(suite)
    body = [(d, app(n, overhead)) for d, n in units]
    if tickets:  # TLS 1.3 session tickets, after the client's first write (as stunnel's server sends them)
        body[1:1] = [(1, app(249, overhead)), (1, app(265, overhead))]
    return head + body


def _record(name: str) -> list:
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{name} not in the corpus")
    return list(classify_capture(str(path), Options(model=None)))


@pytest.mark.parametrize("name, wrapped", [("openvpn-tcp-stunnel-443.pcap", "tls"),
                                           ("openvpn-tcp-shadowsocks-8388.pcap", "fully_encrypted")])
def test_lab_wrapped_openvpn_is_labelled_with_its_wrapper(name, wrapped):
    records = _record(name)
    assert [r.label for r in records] == ["openvpn"]
    assert WRAPPED_TUNNEL in records[0].risks and records[0].evidence[0].startswith(f"wrapped={wrapped};")
    assert (OBFUSCATED in records[0].risks) == (wrapped == "fully_encrypted")  # TLS is a wrapper, not obfuscation


def test_lab_obfs4_leaves_nothing_to_tell():
    """obfs4 pads its handshake and frames at random: the sizes carry no handshake shape (documented miss)."""
    records = _record("openvpn-tcp-obfs4-high.pcap")
    assert [r.label for r in records] == ["none"] and WRAPPED_TUNNEL not in records[0].risks


@pytest.mark.parametrize("suite", [TLS13_AES, GCM])
@pytest.mark.parametrize("sizes", [dict(), dict(reset=16, hello=305), dict(reset=56, hello=345, fragment=1208, ack=68)])
def test_control_handshake_through_tls_is_confirmed(suite, sizes):
    d = run(through_tls(openvpn_inner(**sizes), suite, tickets=suite == TLS13_AES))
    assert d.state is State.CONFIRMED and d.family == "openvpn" and d.attributes == {"wrapped": "tls"}
    assert d.risks == {WRAPPED_TUNNEL}


def test_control_handshake_through_a_fully_encrypted_proxy_is_confirmed():
    salt, address = 32, 7
    units = openvpn_inner(reset=56, hello=345, fragment=1208, ack=68)
    writes = [os.urandom(salt + CHUNK_OVERHEAD + address + units[0][1]), os.urandom(salt + CHUNK_OVERHEAD + units[1][1])]
    packets = [(0, writes[0]), (1, writes[1])] + [(d, os.urandom(n + CHUNK_OVERHEAD)) for d, n in units[2:]]
    d = run(packets)
    assert d.state is State.CONFIRMED and d.attributes == {"wrapped": "fully_encrypted"}
    assert d.risks == {WRAPPED_TUNNEL, OBFUSCATED}


@pytest.mark.parametrize("change, why", [
    (dict(fragment=1224, server_reset=60), "client's first unit +"),  # reset not acknowledging the client's
    (dict(client_fragment=1225), "no client fragment"),  # the client's fragment one byte off
    (dict(ack=300), "small client ACK"),
    (dict(hello=90), "ClientHello"),
])
def test_each_step_of_the_shape_is_needed(change, why):
    units = openvpn_inner() + [(0, 90), (1, 90)]
    if "server_reset" in change:
        units[1] = (1, change["server_reset"])
    if "client_fragment" in change:
        units[6] = (0, change["client_fragment"])
    if "ack" in change:
        units[4] = (0, change["ack"])
    if "hello" in change:
        units[2] = (0, change["hello"])
    d = run(through_tls(units))
    assert d.state is State.REJECTED and why in d.evidence[-1], d.evidence


def http11_keepalive() -> list[tuple[int, int]]:
    """Requests of a few hundred bytes, answers of every size, several on one connection."""
    return [(0, 320), (1, 1369), (1, 1369), (1, 402), (0, 280), (1, 96), (0, 310), (1, 8000), (0, 305), (1, 1369)]


def http2_upload() -> list[tuple[int, int]]:
    """Preface + SETTINGS, the server's SETTINGS, HEADERS, a 1369-byte dynamic-size record down, a
    WINDOW_UPDATE, then a POST body cut into records of the same 1369-byte dynamic size."""
    return [(0, 92), (1, 40), (0, 260), (1, 1369), (0, 13), (1, 9), (0, 1369), (0, 1369), (1, 120)]


def websocket_echo() -> list[tuple[int, int]]:
    """Upgrade request and 101 answer, then messages echoed back at their own size."""
    return [(0, 230), (1, 129), (0, 300), (1, 300), (0, 1224), (1, 1224), (0, 40), (1, 40)]


def resumption_then_api() -> list[tuple[int, int]]:
    """A resumed session's small request/answer pairs (no tickets, no certificate)."""
    return [(0, 180), (1, 192), (0, 240), (1, 1100), (0, 31), (1, 520), (0, 240), (1, 1100)]


@pytest.mark.parametrize("units", [http11_keepalive(), http2_upload(), websocket_echo(), resumption_then_api()],
                         ids=["http1.1-keepalive", "http2-upload", "websocket-echo", "resumption-api"])
@pytest.mark.parametrize("suite", [TLS13_AES, GCM])
def test_ordinary_tls_is_not_wrapped_openvpn(units, suite):
    assert run(through_tls(units, suite)).state is not State.CONFIRMED


def test_a_look_alike_that_only_misses_the_reset_relation_is_rejected():
    """HTTP/2 whose sizes happen to match steps 3-6: the server's first answer does not acknowledge."""
    units = [(0, 44), (1, 40), (0, 333), (1, 1224), (0, 56), (1, 239), (0, 1224)]
    d = run(through_tls(units))
    assert d.state is State.REJECTED


def test_cbc_suite_mid_flow_and_non_tls_openings_are_rejected():
    assert run(through_tls(openvpn_inner(), 0xC014, tickets=False)).state is State.REJECTED  # CBC: no fixed overhead
    assert run(through_tls(openvpn_inner()), opened=False).state is State.REJECTED
    assert run([(0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"a" * 80)]).state is State.REJECTED


def test_fully_encrypted_openings_without_the_ack_relation_are_rejected():
    """Random writes in the handshake's order but with an ACK the server's reset does not match."""
    sizes = [(0, 130), (1, 134), (0, 379), (1, 1242), (0, 140), (1, 316), (0, 1242)]
    assert run([(d, os.urandom(n)) for d, n in sizes]).state is not State.CONFIRMED

