"""PPTP (RFC 2637) and L2TP (RFC 2661 / RFC 3931) messages built from the RFC layouts, and GRE look-alikes."""

from __future__ import annotations

import random
import struct

from vpnid.features.dissectors.pptp import CONTROL_MESSAGES, MAGIC_COOKIE

RNG = random.Random(2637)


def pptp_control(kind: int, body: bytes = b"") -> bytes:
    """A control message of its RFC 2637 fixed length: header, then `body`, zero-filled to size."""
    size = CONTROL_MESSAGES[kind][1]
    msg = struct.pack(">HHIHH", size, 1, MAGIC_COOKIE, kind, 0) + body
    return msg + bytes(size - len(msg))


def sccrq() -> bytes:
    # protocol version 1.0, reserved, framing/bearer capabilities, max channels, firmware, host, vendor
    return pptp_control(1, struct.pack(">HHIIHH", 0x0100, 0, 1, 1, 0, 0x0A00) + b"local".ljust(64, b"\0")
                        + b"linux".ljust(64, b"\0"))


def sccrp() -> bytes:
    return pptp_control(2, struct.pack(">HBBIIHH", 0x0100, 1, 0, 1, 1, 1, 1) + b"pptpd".ljust(64, b"\0"))


def ocrq(call_id: int) -> bytes:
    return pptp_control(7, struct.pack(">HHIIIIHH", call_id, 1, 300, 100000000, 1, 1, 64, 0))


def ocrp(call_id: int, peer_call_id: int) -> bytes:
    return pptp_control(8, struct.pack(">HHBBHIHHI", call_id, peer_call_id, 1, 0, 0, 100000000, 64, 1500, 0))


def gre_v1(call_id: int, seq: int | None, ack: int | None, ppp: bytes) -> bytes:
    """Enhanced GRE (RFC 2637 §4.1): K always, S with a payload, A with an acknowledgement."""
    flags = 0x2001 | (0x1000 if seq is not None else 0) | (0x0080 if ack is not None else 0)
    out = struct.pack(">HHHH", flags, 0x880B, len(ppp), call_id)
    if seq is not None:
        out += struct.pack(">I", seq)
    if ack is not None:
        out += struct.pack(">I", ack)
    return out + ppp


def mppe_ppp(size: int) -> bytes:
    """PPP frame of compressed/encrypted data (protocol 0x00FD, MPPE): header then random bytes."""
    return b"\xff\x03\x00\xfd" + RNG.randbytes(size)


def gre_v0(protocol: int, payload: bytes, key: int | None = None, seq: int | None = None) -> bytes:
    """Plain GRE (RFC 2784/2890), as NVGRE (0x6558 + key), ERSPAN (0x88BE + sequence) or IP over GRE use."""
    flags = (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    out = struct.pack(">HH", flags, protocol)
    if key is not None:
        out += struct.pack(">I", key)
    if seq is not None:
        out += struct.pack(">I", seq)
    return out + payload


# -- L2TP ------------------------------------------------------------------------------------------------


def avp(attr: int, value: bytes, mandatory: bool = True, vendor: int = 0) -> bytes:
    return struct.pack(">HHH", (0x8000 if mandatory else 0) | (6 + len(value)), vendor, attr) + value


def l2tp_control(kind: int, tunnel: int, session: int, ns: int, nr: int, avps: bytes, version: int = 2) -> bytes:
    body = avp(0, struct.pack(">H", kind)) + avps
    if version == 2:
        return struct.pack(">HHHHHH", 0xC802, 12 + len(body), tunnel, session, ns, nr) + body
    return struct.pack(">HHIHH", 0xC803, 12 + len(body), tunnel, ns, nr) + body


def l2tp_sccrq(assigned: int, version: int = 2) -> bytes:
    tid = struct.pack(">H", assigned) if version == 2 else struct.pack(">I", assigned)
    avps = (avp(2, b"\x01\x00") + avp(7, b"lns.example") + avp(3, b"\x00\x00\x00\x03")
            + avp(9 if version == 2 else 61, tid) + avp(10, b"\x00\x04", mandatory=False))
    return l2tp_control(1, 0, 0, 0, 0, avps, version)


def l2tp_sccrp(to_tunnel: int, assigned: int, version: int = 2) -> bytes:
    tid = struct.pack(">H", assigned) if version == 2 else struct.pack(">I", assigned)
    avps = avp(2, b"\x01\x00") + avp(7, b"lac.example") + avp(9 if version == 2 else 61, tid)
    return l2tp_control(2, to_tunnel, 0, 0, 1, avps, version)


def l2tp_zlb(tunnel: int, ns: int, nr: int) -> bytes:
    return struct.pack(">HHHHHH", 0xC802, 12, tunnel, 0, ns, nr)


def l2tp_data(tunnel: int, session: int, ppp: bytes, length: bool = True) -> bytes:
    if length:
        return struct.pack(">HHHH", 0x4002, 8 + len(ppp), tunnel, session) + ppp
    return struct.pack(">HHH", 0x0002, tunnel, session) + ppp


def ppp_ip(size: int) -> bytes:
    """PPP (address/control FF 03, protocol 0x0021) around an IPv4 packet's worth of bytes."""
    return b"\xff\x03\x00\x21" + b"\x45\x00" + struct.pack(">H", size + 2) + RNG.randbytes(size - 2)
