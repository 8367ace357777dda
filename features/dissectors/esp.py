"""IPsec data plane: ESP (RFC 4303), ESP-in-UDP (RFC 3948) and AH (RFC 4302).

IP protocols 50 and 51 are ESP and AH by IANA assignment, so one well-formed header is enough there; a
reserved SPI (1-255, RFC 4303 §2.1: manually keyed SAs and test traces use 10, 123, 321 ...) lowers the
confidence and raises the `reserved_spi` risk instead of dropping the label. ESP carried in UDP has no
such guarantee: its only cleartext is SPI + sequence number, a shape that RTP, QUIC short headers and
game protocols come close to. There we require the full record-layer pattern in both directions (see
`seqtrack`), 4-byte alignment and a body that looks encrypted (few zero bytes); with only one direction
in the capture (asymmetric tap), a longer run of that one direction decides at a lower confidence.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket, PacketHeads
from vpnid.features.dissectors.seqtrack import CounterTrack
from vpnid.features.families import IPSEC
from vpnid.features.packets import IPPROTO_AH, IPPROTO_ESP, IPPROTO_UDP
from vpnid.features.risks import MALFORMED_HEADER, RESERVED_SPI

ESP_HEADER = 8  # SPI (4) + sequence number (4), RFC 4303 §2
SPI_RESERVED_MAX = 255  # SPIs 1-255 are reserved by IANA, 0 is local-only (RFC 4303 §2.1)
ESP_ALIGNMENT = 4  # ciphertext, hence the whole packet, ends on a 4-byte boundary (RFC 4303 §2.4)
# Smallest ESP packet seen in practice: header + one aligned word (pad length, next header) + a 96-bit ICV.
ESP_MIN_PACKET = ESP_HEADER + 4 + 12
# Bytes after the header are IV + ciphertext + ICV: about 1 in 256 is zero. Cleartext game or media
# payloads are full of zeros; a body with more than 1 zero byte in 16 is not encrypted.
MAX_ZERO_SHARE = 1 / 16
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # IKE in the same UDP flow (RFC 3948 §2.2)
NAT_KEEPALIVE = b"\xff"  # RFC 3948 §2.3

AH_FIXED = 12  # next header, payload length, reserved (2), SPI, sequence number (RFC 4302 §2)
AH_MIN_ICV = 12  # HMAC-*-96 is the shortest ICV in use (RFC 8221)

# ESP-in-UDP: packets per direction before a mid-flow verdict; a new SA's first sequence number is 1,
# so a rekeyed SPI must start near it.
UDP_MIN_PER_DIRECTION = 3
NEW_SA_MAX_SEQ = 8
# One direction only (the other never sends): this many packets under one SPI, sequence stepping by one,
# looked at when the flow ends or the budget runs out (so a two-way flow gets its two-way verdict first).
UDP_MIN_ONE_WAY = 8


def esp_shaped(first4: bytes, size: int) -> bool:
    """Could a `size`-byte UDP payload or TCP frame starting with `first4` be an ESP packet?
    (assigned SPI, 4-byte aligned, long enough for header, trailer and ICV)"""
    return esp_shaped_rows(int.from_bytes(first4, "big"), size)


def esp_shaped_rows(spi: int | np.ndarray, size: int | np.ndarray) -> bool | np.ndarray:
    """`esp_shaped` on the first four bytes as a big-endian integer: for one packet, or per row as the
    cheap stage asks."""
    return (size >= ESP_MIN_PACKET) & (size % ESP_ALIGNMENT == 0) & (spi > SPI_RESERVED_MAX)


def udp_neutral_rows(p: PacketHeads) -> np.ndarray:
    """UDP payloads that, as a flow's first, neither the ESP nor the IKE dissector rejects on, nor
    decides on: an ESP-shaped datagram or a NAT-T keepalive (RFC 3948 §2.3)."""
    keepalive = (p.length == 1) & (p.u8(0) == NAT_KEEPALIVE[0])
    return keepalive | esp_shaped_rows(p.be(0, 4), p.length)


class ESP(Dissector):
    """ESP over IP protocol 50 (one header decides) or inside UDP (mid-flow record pattern)."""

    family: ClassVar[str] = IPSEC
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_ESP, IPPROTO_UDP})
    budget: ClassVar[int] = 32

    # ESP-in-UDP decides on no flow's first packet: it rejects a first packet only for its shape
    # (`closes_window`) and confirms after UDP_MIN_PER_DIRECTION packets each way, or UDP_MIN_ONE_WAY one way.
    prefilter_window: ClassVar[int] = 2

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """IP protocol 50; in UDP every packet but a flow's first: a single datagram (most of the UDP
        flows that start ESP-shaped have no second) is left to the window, and later ones may decide."""
        return (p.proto == IPPROTO_ESP) | ((p.proto == IPPROTO_UDP) & ~p.first())

    @classmethod
    def closes_window(cls, p: PacketHeads) -> np.ndarray:
        """A UDP flow's first packet rules ESP out unless it is ESP-shaped, a NAT-T keepalive or carries
        the non-ESP marker (IKE sharing the flow), as `_in_udp` does."""
        return ~(udp_neutral_rows(p) | p.zero(0, 4))

    def __init__(self) -> None:
        super().__init__()
        self._tracks = (CounterTrack(), CounterTrack())
        self._body_bytes = 0
        self._body_zeros = 0
        self._last: FlowPacket | None = None

    def on_packet(self, pkt: FlowPacket) -> None:
        self._last = pkt
        # The payload alone cannot tell raw ESP from ESP-in-UDP; only the former may decide on one packet.
        if pkt.proto == IPPROTO_ESP:
            self._raw(pkt)
        else:
            self._in_udp(pkt)

    def _raw(self, pkt: FlowPacket) -> None:
        """IP protocol 50 is ESP by definition; only a reserved SPI or a cut header speaks against it.
        Deciding on the first packet (nDPI does the same) also covers short flows: an SA pair used for a
        single exchange shows one packet per direction, each under its own SPI."""
        p = pkt.payload
        if len(p) < ESP_HEADER:
            self.raise_risk(MALFORMED_HEADER)
            self.reject(f"ESP header cut short ({len(p)} B)")
            return
        spi, seq = int.from_bytes(p[:4], "big"), int.from_bytes(p[4:8], "big")
        self.attributes["encapsulation"] = "none"
        self.attributes["spi"] = f"{spi:08x}"
        evidence = f"IP protocol 50, ESP header: SPI 0x{spi:08x}, sequence {seq}, {len(p)} B"
        if spi <= SPI_RESERVED_MAX:
            self.raise_risk(RESERVED_SPI)
            self.confirm(pkt, 0.8, evidence, f"SPI {spi} is reserved by RFC 4303 §2.1 (manual keying or a test "
                                             "trace): lower confidence")
            return
        self.confirm(pkt, 0.95, evidence)

    def _in_udp(self, pkt: FlowPacket) -> None:
        p = pkt.payload
        if p == NAT_KEEPALIVE or p[:4] == NON_ESP_MARKER:
            return  # NAT-T keepalive or IKE sharing the flow: neutral here, the IKE dissector judges it
        if not esp_shaped(p[:4], len(p)):
            self.reject(f"not ESP-in-UDP: {len(p)} B payload fails SPI/alignment/size")
            return
        problem = self._record(pkt.direction, p)
        if problem:
            self.reject(problem)
            return
        fwd, rev = self._tracks
        if fwd.steady(UDP_MIN_PER_DIRECTION) and rev.steady(UDP_MIN_PER_DIRECTION):
            self._decide(pkt, fwd, rev)
        elif self.seen >= self.budget:
            self._one_way(pkt)

    def on_end(self) -> None:
        if self._last is not None and self._last.proto == IPPROTO_UDP:
            self._one_way(self._last)

    def _one_way(self, pkt: FlowPacket) -> None:
        """Asymmetric capture: only one side's ESP-in-UDP, under one SPI, sequence stepping by one."""
        for track, other in (self._tracks, self._tracks[::-1]):
            if other.key is None and track.key is not None and track.steady(UDP_MIN_ONE_WAY):
                if self._body_zeros > MAX_ZERO_SHARE * self._body_bytes:
                    return
                self.attributes["encapsulation"] = "udp"
                self.attributes["spi"] = f"{track.key:08x}"
                self.attributes["one_way"] = "true"
                self.confirm(
                    pkt,
                    0.7,
                    f"ESP-in-UDP, one direction only: SPI 0x{track.key:08x} ({track.packets} pkts), sequence "
                    "numbers stepping by one, 4-byte aligned, encrypted-looking; the other side never sent",
                )
                return

    def _decide(self, pkt: FlowPacket, fwd: CounterTrack, rev: CounterTrack) -> None:
        """Both directions show the SPI/sequence pattern; the body must also look encrypted."""
        if self._body_zeros > MAX_ZERO_SHARE * self._body_bytes:
            zeros = f"{self._body_zeros} of {self._body_bytes}"
            self.reject(f"SPI/sequence pattern, but {zeros} body bytes are zero (cleartext)")
            return
        self.attributes["encapsulation"] = "udp"
        self.attributes["spi"] = f"{fwd.key:08x}/{rev.key:08x}"
        self.confirm(
            pkt,
            0.9,
            f"ESP-in-UDP both ways: SPI 0x{fwd.key:08x} ({fwd.packets} pkts) and 0x{rev.key:08x} "
            f"({rev.packets} pkts), sequence numbers stepping by one, 4-byte aligned, encrypted-looking",
        )

    def _record(self, direction: int, p: bytes) -> str | None:
        """Add one ESP-shaped packet to its direction's track; return why the flow is not ESP, if so."""
        spi, seq = int.from_bytes(p[:4], "big"), int.from_bytes(p[4:8], "big")
        track, other = self._tracks[direction], self._tracks[1 - direction]
        if spi == other.key:
            return f"same 4-byte prefix 0x{spi:08x} in both directions (ESP SAs are one-way)"
        self._body_bytes += len(p) - ESP_HEADER
        self._body_zeros += p.count(0, ESP_HEADER)
        if track.key is None:
            track.start(spi, seq)
        elif spi != track.key:
            if seq > NEW_SA_MAX_SEQ:
                return f"4-byte prefix changed to 0x{spi:08x} without a new SA's sequence restart"
            track.start(spi, seq)
        else:
            track.step(seq)
        if track.erratic:
            return "sequence field does not step by one (not an ESP sequence number)"
        return None


class AH(Dissector):
    """AH over IP protocol 51: the fixed header fields are checkable, so one packet decides."""

    family: ClassVar[str] = IPSEC
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_AH})
    budget: ClassVar[int] = 4

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """IP protocol 51 is AH by assignment; the header checks are the dissector's."""
        return p.proto == IPPROTO_AH

    def on_packet(self, pkt: FlowPacket) -> None:
        p = pkt.payload
        if len(p) < AH_FIXED:
            self.raise_risk(MALFORMED_HEADER)
            self.reject(f"AH header cut short ({len(p)} B)")
            return
        ah_len = (p[1] + 2) * 4  # Payload Len is in 32-bit words, minus 2 (RFC 4302 §2.2)
        spi, seq = int.from_bytes(p[4:8], "big"), int.from_bytes(p[8:12], "big")
        if p[2:4] != b"\x00\x00":
            self.raise_risk(MALFORMED_HEADER)
            self.reject("AH reserved field not zero")
        elif spi <= SPI_RESERVED_MAX:
            self.reject(f"reserved AH SPI {spi}")
        elif ah_len < AH_FIXED + AH_MIN_ICV:
            self.raise_risk(MALFORMED_HEADER)
            self.reject(f"AH length {ah_len} B leaves no room for an ICV")
        else:
            self.attributes["spi"] = f"{spi:08x}"
            self.attributes["next_header"] = str(p[0])
            self.confirm(
                pkt,
                0.95,
                f"IP protocol 51 with AH header: SPI 0x{spi:08x}, sequence {seq}, "
                f"ICV {ah_len - AH_FIXED} B, next header {p[0]}",
            )
