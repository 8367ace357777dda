"""WireGuard (wireguard.com/protocol; whitepaper "WireGuard: Next Generation Kernel Network Tunnel" §5.4).

Every message starts with a type byte and three zero bytes; handshake messages have fixed sizes. That
4-byte prefix alone is weak (little-endian "type 1..4" words are common), so a verdict always needs a
relation between packets: a receiver index echoing the index the other side announced (0.99), or both
directions of transport data each under one receiver index with a counter stepping by one (0.9), or
only one direction of it when the capture holds no other (asymmetric tap: 0.7, at the flow's end or
budget). A run of unanswered initiations retried every 5 s is the mark of a blocked tunnel (0.8, risk
`blocked_attempt`).

Cloudflare WARP runs a WireGuard of its own (observed by nDPI, `cloudflare_warp.c`; there is no spec): message
types 0xC1-0xC4 for 1-4, the reserved bytes zero only in the first message (0xC1) and carrying a client id in
the others, handshake messages of other sizes, transport data with the standard receiver index and counter.
The same relations decide it (variant `cloudflare-warp`); handshake sizes are only bounded below. QUIC long
headers also start with 0xC0-0xCF, but their next bytes are a version: zero reserved bytes are refused on
0xC2-0xC4, and an 0xC1 whose reserved bytes and next byte read as QUIC version 1 (or version negotiation) is
not taken for WARP (a WARP initiation whose sender index starts so is missed: 2 in 256).

Tailscale sends its "disco" messages (magic `TS` + U+1F4AC, the sender's 32-byte disco key, a 24-byte
nonce, a NaCl box; tailscale.com/disco) on the same UDP port as its WireGuard packets. They are neutral
here, not a reason to reject, and name the variant `tailscale` when the flow is confirmed.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.seqtrack import CounterTrack
from vpnid.features.families import WIREGUARD
from vpnid.features.packets import IPPROTO_UDP
from vpnid.features.risks import BLOCKED_ATTEMPT

HANDSHAKE_INITIATION = 1
HANDSHAKE_RESPONSE = 2
COOKIE_REPLY = 3
TRANSPORT_DATA = 4
MESSAGE_NAMES = {1: "initiation", 2: "response", 3: "cookie reply", 4: "transport data"}
RESERVED = b"\x00\x00\x00"
WARP_TYPE_BASE = 0xC0  # WARP's message type = 0xC0 + WireGuard's (nDPI cloudflare_warp.c)
WARP_VARIANT = "cloudflare-warp"
QUIC_V1_OR_NEGOTIATION = (0x00, 0x01)  # byte 4 of a long header whose version starts 00 00 00 (RFC 9000 §15)
# Exact sizes per handshake type (whitepaper §5.4.2-5.4.7); TunnelBear's build sends 204/100.
HANDSHAKE_SIZES = {
    HANDSHAKE_INITIATION: {148: "standard", 204: "tunnelbear"},
    HANDSHAKE_RESPONSE: {92: "standard", 100: "tunnelbear"},
    COOKIE_REPLY: {64: "standard"},
}
# Byte offsets of the little-endian 32-bit indices in each message type (whitepaper §5.4).
SENDER_OFFSET = {HANDSHAKE_INITIATION: 4, HANDSHAKE_RESPONSE: 4}
RECEIVER_OFFSET = {HANDSHAKE_RESPONSE: 8, COOKIE_REPLY: 4, TRANSPORT_DATA: 4}
KEEPALIVE_SIZE = 32  # type, receiver, 64-bit counter, 16-byte Poly1305 tag, empty plaintext (§5.4.6)
PADDING = 16  # plaintext is zero-padded to a multiple of 16 bytes, but not beyond the MTU (§5.4.6)
# Keys are dropped after Reject-After-Time (180 s), so a counter beyond 2^32 would mean 24 Mpps.
COUNTER_CEILING = 1 << 32
REKEY_TIMEOUT = 5.0  # an unanswered initiation is retried after Rekey-Timeout (§6.4) ...
REKEY_JITTER = 0.333  # ... plus up to 333 ms of jitter
SPACING_SLACK = 0.25  # capture timestamp noise around that window

# WARP handshakes are not the standard sizes (nDPI): at least the standard message's fields must fit.
WARP_MIN_SIZES = {kind: min(sizes) for kind, sizes in HANDSHAKE_SIZES.items()}
WARP_ECHO_CONFIDENCE = 0.95  # the index echo holds, but no exact size backs it

MIN_DATA_PER_DIRECTION = 3
MIN_DATA_ONE_WAY = 8  # one direction only: transport packets under one receiver index
# Tailscale disco (tailscale.com/disco/disco.go): magic, sender disco public key, nonce, then a NaCl box
# (Poly1305 tag + at least the message type and version bytes).
DISCO_MAGIC = b"TS\xf0\x9f\x92\xac"
DISCO_KEY_SIZE = 32
DISCO_NONCE_SIZE = 24
DISCO_MIN = len(DISCO_MAGIC) + DISCO_KEY_SIZE + DISCO_NONCE_SIZE + 16 + 2
BLOCKED_MIN_ON_END = 3  # unanswered initiations needed when the flow ends
BLOCKED_MIN_LIVE = 6  # ... or while it runs: 25 s of silence is no longer a slow peer


def _u32le(p: bytes, offset: int) -> int:
    return int.from_bytes(p[offset : offset + 4], "little")


def warp_kind(p: bytes) -> int:
    """WireGuard's message type (1-4) of a Cloudflare WARP message, or 0: type 0xC1 with zero reserved bytes
    and no QUIC version behind them, or 0xC2-0xC4 with a non-zero client id in the reserved bytes."""
    if len(p) < KEEPALIVE_SIZE or not WARP_TYPE_BASE < p[0] <= WARP_TYPE_BASE + TRANSPORT_DATA:
        return 0
    kind = p[0] - WARP_TYPE_BASE
    if kind == HANDSHAKE_INITIATION:
        return kind if p[1:4] == RESERVED and p[4] not in QUIC_V1_OR_NEGOTIATION else 0
    return kind if p[1:4] != RESERVED else 0


class WireGuard(Dissector):
    """WireGuard over UDP: handshake index echo, mid-flow transport data, or blocked initiations."""

    family: ClassVar[str] = WIREGUARD
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_UDP})
    budget: ClassVar[int] = 32

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """A message header: type byte, three zero reserved bytes, and a handshake message's exact size
        or at least a keepalive's for transport data; or WARP's (`warp_kind`). Anything else is rejected as
        a first packet."""
        n, kind = p.length, p.u8(0)
        sized = np.zeros(len(p), bool)
        for k, sizes in HANDSHAKE_SIZES.items():
            sized |= (kind == k) & np.isin(n, list(sizes))
        standard = p.zero(1, 3) & (sized | (kind == TRANSPORT_DATA))
        warp = kind - WARP_TYPE_BASE
        warp_sized = warp == TRANSPORT_DATA
        for k, least in WARP_MIN_SIZES.items():
            warp_sized |= (warp == k) & (n >= least)
        warp_header = np.where(warp == HANDSHAKE_INITIATION, p.zero(1, 3) & ~np.isin(p.u8(4), QUIC_V1_OR_NEGOTIATION),
                               ~p.zero(1, 3))
        return (p.proto == IPPROTO_UDP) & (n >= KEEPALIVE_SIZE) & (standard | (warp_sized & warp_header))

    def __init__(self) -> None:
        super().__init__()
        # sender indices each direction announced in handshake messages -> (packet, message size)
        self._announced: tuple[dict[int, tuple[FlowPacket, int]], ...] = ({}, {})
        self._initiations: list[FlowPacket] = []
        self._tracks = (CounterTrack(), CounterTrack())
        self._only_initiations = True
        # Per direction, the one transport size allowed off the 32 + 16n grid: padding stops at the MTU
        # (whitepaper §5.4.6), so full-size packets carry 32 + MTU bytes.
        self._capped: list[int | None] = [None, None]
        self._disco_keys: list[bytes | None] = [None, None]
        self._disco = 0
        self._last: FlowPacket | None = None

    def on_packet(self, pkt: FlowPacket) -> None:
        p = pkt.payload
        self._last = pkt
        if p[:len(DISCO_MAGIC)] == DISCO_MAGIC:
            self._disco_message(pkt)
            return
        warp = warp_kind(p)
        kind = warp or (p[0] if len(p) >= KEEPALIVE_SIZE and p[1:4] == RESERVED else 0)
        if warp:
            self.attributes["variant"] = WARP_VARIANT
        if kind == TRANSPORT_DATA:
            self._only_initiations = False
            self._transport(pkt)
            return
        if warp:
            variant = WARP_VARIANT if len(p) >= WARP_MIN_SIZES[kind] else None
        else:
            variant = HANDSHAKE_SIZES.get(kind, {}).get(len(p))
        if variant is None:
            self.reject(f"not a WireGuard message: type byte {p[:1].hex() or 'none'}, {len(p)} B")
            return
        self.attributes["variant"] = variant
        if kind in SENDER_OFFSET:
            self._announced[pkt.direction][_u32le(p, SENDER_OFFSET[kind])] = (pkt, len(p))
        if kind == HANDSHAKE_INITIATION:
            self._initiations.append(pkt)
            self._check_blocked(BLOCKED_MIN_LIVE)
            return
        self._only_initiations = False
        self._check_echo(pkt, kind)

    def on_end(self) -> None:
        self._check_blocked(BLOCKED_MIN_ON_END)
        if self.state is State.CANDIDATE and self._last is not None:
            self._check_one_way(self._last)

    def _disco_message(self, pkt: FlowPacket) -> None:
        """A Tailscale disco datagram: neutral for the verdict, its sender's disco key constant per side."""
        p = pkt.payload
        if len(p) < DISCO_MIN:
            self.reject(f"Tailscale disco magic but {len(p)} B: no room for key, nonce and box")
            return
        key = p[len(DISCO_MAGIC) : len(DISCO_MAGIC) + DISCO_KEY_SIZE]
        if self._disco_keys[pkt.direction] not in (None, key):
            self.reject("Tailscale disco sender key changed within one direction")
            return
        self._disco_keys[pkt.direction] = key
        self._disco += 1
        self.seen -= 1  # disco datagrams do not use up the budget of WireGuard packets

    def confirm(self, pkt: FlowPacket, confidence: float, *evidence: str) -> None:
        if self.attributes.get("variant") == WARP_VARIANT:
            evidence += ("message types 0xC1-0xC4, reserved bytes carrying a client id: Cloudflare WARP",)
        if self._disco:
            self.attributes["variant"] = "tailscale"
            evidence += (f"{self._disco} Tailscale disco datagrams (magic TS + U+1F4AC, sender disco key "
                         f"{next(k for k in self._disco_keys if k is not None)[:4].hex()}…) on the same flow",)
        super().confirm(pkt, confidence, *evidence)

    def _check_one_way(self, pkt: FlowPacket) -> None:
        """Asymmetric tap: one side's transport data alone, one receiver index, counter stepping by one."""
        for side in (0, 1):
            track, other = self._tracks[side], self._tracks[1 - side]
            if other.key is None and track.key is not None and track.steady(MIN_DATA_ONE_WAY):
                self.attributes["mid_flow"] = "true"
                self.attributes["one_way"] = "true"
                self.confirm(pkt, 0.7, f"WireGuard transport data, one direction only: receiver index "
                             f"{track.key:08x} ({track.packets} pkts), counter stepping by one, sizes 32 + 16n "
                             "or the MTU; the other side never sent")
                return

    def _check_echo(self, pkt: FlowPacket, kind: int) -> bool:
        """Confirm when this message's receiver index is a sender index the other side announced."""
        receiver = _u32le(pkt.payload, RECEIVER_OFFSET[kind])
        peer = self._announced[1 - pkt.direction]
        if receiver in peer:
            earlier, size = peer[receiver]
            self.attributes["handshake"] = "seen"
            self.confirm(
                pkt,
                WARP_ECHO_CONFIDENCE if self.attributes.get("variant") == WARP_VARIANT else 0.99,
                f"WireGuard handshake {size} B (packet {earlier.index}) answered by {MESSAGE_NAMES[kind]} "
                f"{len(pkt.payload)} B in the other direction, receiver index {receiver:08x} matches",
            )
            return True
        if kind != TRANSPORT_DATA and peer:
            self.reject(f"{MESSAGE_NAMES[kind]} receiver index {receiver:08x} matches no initiation")
        return False

    def _transport(self, pkt: FlowPacket) -> None:
        """Type 4: padded size, sane counter; echo of a handshake index or steady counters both ways."""
        p = pkt.payload
        if (len(p) - KEEPALIVE_SIZE) % PADDING:
            capped = self._capped[pkt.direction]
            if capped is not None and capped != len(p):
                self.reject(f"transport data of {capped} B and {len(p)} B: only the MTU-sized packet may be "
                            "off the 32 + 16n grid")
                return
            self._capped[pkt.direction] = len(p)
        counter = int.from_bytes(p[8:16], "little")
        if counter >= COUNTER_CEILING:
            self.reject(f"transport counter {counter} implausibly large")
            return
        if self._check_echo(pkt, TRANSPORT_DATA):
            return
        receiver = _u32le(p, RECEIVER_OFFSET[TRANSPORT_DATA])
        track, other = self._tracks[pkt.direction], self._tracks[1 - pkt.direction]
        if track.key is None:
            track.start(receiver, counter)
        elif receiver != track.key:
            self.reject("receiver index changed without a handshake")
            return
        else:
            track.step(counter)
        if receiver == other.key:
            self.reject("same receiver index in both directions (each peer picks its own)")
        elif track.erratic:
            self.reject("transport counter does not step by one")
        elif self.seen >= self.budget and not other.packets:
            self._check_one_way(pkt)
        elif track.steady(MIN_DATA_PER_DIRECTION) and other.steady(MIN_DATA_PER_DIRECTION):
            self.attributes["mid_flow"] = "true"
            fwd, rev = self._tracks
            self.confirm(
                pkt,
                0.9,
                f"WireGuard transport data both ways: receiver index {fwd.key:08x} ({fwd.packets} pkts) and "
                f"{rev.key:08x} ({rev.packets} pkts), counters stepping by one, sizes 32 + 16n or the MTU",
            )

    def _check_blocked(self, minimum: int) -> None:
        """Unanswered initiations from one side, fresh sender index each, retried on the 5 s timer."""
        inits = self._initiations
        if not self._only_initiations or len(inits) < minimum:
            return
        if len({pkt.direction for pkt in inits}) != 1:
            return
        if len({_u32le(pkt.payload, 4) for pkt in inits}) != len(inits):
            return
        low, high = REKEY_TIMEOUT - SPACING_SLACK, REKEY_TIMEOUT + REKEY_JITTER + SPACING_SLACK
        if all(low <= b.ts - a.ts <= high for a, b in zip(inits, inits[1:])):
            self.attributes["handshake"] = "unanswered"
            self.raise_risk(BLOCKED_ATTEMPT)
            self.confirm(
                inits[-1],
                0.8,
                f"{len(inits)} WireGuard initiations of {len(inits[0].payload)} B, one way, distinct sender "
                f"indices, retried every ~5 s (Rekey-Timeout): tunnel attempt without answer",
            )
