"""Shadowsocks AEAD (SIP004, SIP022) over TCP: random from the first byte of every write, both ways.

Shadowsocks has no fixed bytes. Each direction opens with a random salt (16, 24 or 32 bytes) followed by
AEAD chunks of `encrypted length (2) + tag (16) + encrypted payload (1..0x3FFF) + tag (16)`; the client's
first chunk holds the target address (SIP022 seals a fixed-length header between salt and chunks, which
only makes first segments longer). So a chunk is never shorter than 35 bytes, the client's first segment
never shorter than salt + 35 + a SOCKS address, and no write shows text, a length field or a header.

First, a risk. The passive half of what the Great Firewall does (Wu et al., USENIX Security 2023): a
first packet is "fully encrypted" unless it is exempt because its bits per byte fall outside 3.4..4.6,
its first 6 bytes are printable, more than half of it is printable, or it has a run of 20 printable
bytes. Both first segments fully encrypted, with no clear length field or zeroed header either, client
first and the start seen, raise the `fully_encrypted` risk. That is a property, not a protocol: compressed
payloads behind a short binary header, game and messenger protocols, TLS 1.3 with hybrid key shares,
MTProto's obfuscated2, legacy RLPx and BitTorrent MSE have it too (issue #14: 25 false tunnels).

Then the label, on what those protocols show and Shadowsocks does not. Up to SEGMENTS payload segments
are read; a segment that starts a write (its direction's previous segment ended one) must hold an AEAD
chunk (MSE's 17-byte requests do not) and no segment may carry text. Over the writes, none of:
- a 2- or 4-byte length field, either byte order, in the first 8 bytes, holding the write's size less its
  header, in two writes or more (agents' headers, TLS records);
- header bytes that repeat across a direction's writes more than ciphertext's 1 pair in 256 per byte
  position allows (magic, version, type, flags, a counter's high byte: games, chat);
- sizes of the later whole writes on one remainder modulo 16, 8 or 4 in each direction (SSH, RLPx and
  MTProto frames).
Each would fire on random ciphertext with a chance below ALPHA (about 0.3 % of Shadowsocks sessions
miss on one of them). And the label needs MIN_WRITES whole writes each way after the first, so that the
tests had something to look at: a proxied download (one request, then a bulk answer) or keystrokes
(constant 35-byte writes) keep only the risk. A miss is preferred to naming an ordinary flow. Other fully
encrypted proxies (VMess, obfs4) look the same by design, so confidence stays moderate.

Joined mid-flow (the TCP SYN not seen: a capture that started late), the first segments prove nothing
about a salt and may be the middle of a write, so there is no risk to raise; but the writes that follow
are as they were, and the label is given on the same tests: each direction's first segment looking like
ciphertext (no exemption, at least a chunk), then MIN_WRITES whole writes each way after it, each at least
a chunk, no text, and none of the length-field, repeated-header and aligned-size structure. What such a
flow leaves open is only which fully encrypted proxy it is, at a lower confidence (0.5, `mid_flow=true`).
The exemptions cost a little recall by design: about 1 connection in 200 has a first segment with
printable first bytes, mostly printable bytes or a 16-bit field that looks like its length.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import ClassVar

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket, PacketHeads
from vpnid.features.families import SHADOWSOCKS
from vpnid.features.packets import IPPROTO_TCP
from vpnid.features.risks import FULLY_ENCRYPTED

MIN_SALT = 16  # SIP004: salt is the key size, 16 (AES-128-GCM), 24 or 32 bytes
CHUNK_OVERHEAD = 2 + 16 + 16  # encrypted length + its tag + the payload's tag
MIN_CHUNK = CHUNK_OVERHEAD + 1
MIN_ADDRESS = 1 + 1 + 1 + 2  # SOCKS5 address: type, domain length, a 1-byte domain, port
MIN_CLIENT_FIRST = MIN_SALT + CHUNK_OVERHEAD + MIN_ADDRESS
MIN_SERVER_FIRST = MIN_SALT + MIN_CHUNK
# GFW exemption thresholds (Wu et al. 2023, section 4; nDPI's fully_enc_heuristic).
MIN_BITS_PER_BYTE, MAX_BITS_PER_BYTE = 3.4, 4.6
PRINTABLE_PREFIX = 6
PRINTABLE_RUN = 20
LATER_PRINTABLE_RUN = 16  # in later segments: random bytes hold such a run with p ~ 1e-7 per byte offset
MOSTLY_TEXT_MIN = 256  # shorter random segments are "mostly printable" too often (37% of bytes are)
HEADER = 8  # leading bytes checked for zeroed fields, repeated bytes and length fields
LENGTH_OFFSETS = range(4)  # where a 16-bit length field is looked for in a first segment
LENGTH_SLACK = 4  # a field 0..4 below the segment length is taken for a length (of the rest, or all)
FULL_SEGMENT = 536  # a shorter segment is a whole write, not the middle of a split chunk
SEGMENTS = 32  # payload segments looked at before deciding (nDPI's per-flow packet limit)
MIN_WRITES = 4  # whole writes each way after the first before the tests below tell ciphertext apart
ALPHA = 1e-3  # at most this chance that random ciphertext shows the structure a test reports
ALIGNMENTS = (16, 8, 4)  # block-cipher and word framings (SSH, RLPx, MTProto) keep sizes on these
# A 2- or 4-byte length field, either byte order, anywhere in a write's first HEADER bytes, holding the
# write's size less at most a HEADER-byte header: (offset, width, byte order).
LENGTH_LAYOUTS = tuple((off, width, order) for width in (2, 4) for off in range(HEADER - width + 1)
                       for order in ("big", "little"))

_PRINTABLE = bytes(0x20 <= i <= 0x7E for i in range(256))


def exemption(p: bytes, client: bool = True) -> str | None:
    """Why `p` is not fully encrypted (a GFW exemption or a visible header), or None if it looks random.
    The printable-prefix exemption is the GFW's for client packets only; on the server's first segment
    it would cost recall (1 in 400 random segments) and the other checks cover text there."""
    n = len(p)
    bits = int.from_bytes(p, "big").bit_count() / n
    if not MIN_BITS_PER_BYTE < bits < MAX_BITS_PER_BYTE:
        return f"{bits:.2f} set bits per byte"
    printable = p.translate(_PRINTABLE)
    if client and _printable_prefix(p):
        return "printable first bytes"
    if printable.count(1) * 2 > n:
        return "mostly printable"
    if b"\1" * PRINTABLE_RUN in printable:
        return f"{PRINTABLE_RUN} printable bytes in a row"
    return _header_fields(p)


def _printable_prefix(p: bytes) -> bool:
    return all(0x20 <= b <= 0x7E for b in p[:PRINTABLE_PREFIX])


def _header_fields(p: bytes) -> str | None:
    """Zeroed header fields or a length field near the start of `p`, or None."""
    n = len(p)
    if p[:HEADER].count(0) >= 3:
        return "zeroed header fields"
    for off in LENGTH_OFFSETS:
        for value in (int.from_bytes(p[off : off + 2], "big"), int.from_bytes(p[off : off + 2], "little")):
            if n - LENGTH_SLACK <= value <= n:
                return f"length field at offset {off}"
    return None


def visible(p: bytes) -> bool:
    """What `visible_heads` says of one segment of at least HEADER bytes: printable first bytes, zeroed
    header fields or a length field near the start (the checks of `exemption` that need no more bytes)."""
    return _printable_prefix(p) or _header_fields(p) is not None


def visible_heads(p: PacketHeads) -> np.ndarray:
    """Per row, the `exemption`s a segment's first bytes alone show (printable prefix, zeroed header fields,
    a length field); the exemptions that need the whole segment are the dissectors'."""
    n = p.length
    head = p.head[:, :HEADER]
    printable = (p.head[:, :PRINTABLE_PREFIX] >= 0x20) & (p.head[:, :PRINTABLE_PREFIX] <= 0x7E)
    length_field = np.zeros(len(p), bool)
    for off in LENGTH_OFFSETS:
        for value in (p.be(off, 2), p.u8(off) | (p.u8(off + 1) << 8)):
            length_field |= (n - LENGTH_SLACK <= value) & (value <= n)
    return printable.all(axis=1) | ((head == 0).sum(axis=1) >= 3) | length_field


def text_in(p: bytes) -> str | None:
    """Plain text inside a later segment (a protocol that went clear after its handshake, or printable
    payload); ciphertext has neither except by a chance far below one in a thousand segments."""
    printable = p.translate(_PRINTABLE)
    if len(p) >= MOSTLY_TEXT_MIN and printable.count(1) * 2 > len(p):
        return "mostly printable"
    if b"\1" * LATER_PRINTABLE_RUN in printable:
        return f"{LATER_PRINTABLE_RUN} printable bytes in a row"
    return None


def repeated_bytes(heads: list[bytes]) -> str | None:
    """Header bytes that recur across writes (a magic, version, type, flags or the high byte of a counter
    or length): pairs of writes with the same byte at one of the first HEADER positions, against the
    HEADER/256 such pairs ciphertext has on average (a Poisson tail below ALPHA)."""
    k = len(heads)
    counts = [Counter(h[j] for h in heads) for j in range(HEADER)]
    pairs = sum(c * (c - 1) // 2 for pos in counts for c in pos.values())
    expected = HEADER * k * (k - 1) / 2 / 256
    if not pairs or _poisson_tail(pairs, expected) >= ALPHA:
        return None
    at = max(range(HEADER), key=lambda j: counts[j].most_common(1)[0][1])
    value, seen = counts[at].most_common(1)[0]
    return (f"header bytes repeat across {k} writes ({pairs} equal byte pairs where ciphertext has "
            f"{expected:.1f}; byte {at} is {value:#04x} in {seen})")


def _poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean), term by term (k reaches thousands: no factorials)."""
    term = below = math.exp(-mean)
    for i in range(1, k):
        term *= mean / i
        below += term
    return 1.0 - below


def aligned_sizes(sizes: tuple[list[int], list[int]]) -> str | None:
    """Whole writes whose sizes keep one remainder modulo a block or word size in each direction, less
    likely than ALPHA for sizes of random payloads (a framing pads to it)."""
    chance, found = 1.0, []
    for side, s in zip(("client", "server"), sizes):
        m = next((m for m in ALIGNMENTS if len({n % m for n in s}) == 1), 1)
        if m > 1 and len(s) > 1:
            chance *= m ** (1 - len(s))
            found.append(f"{len(s)} {side} writes all {s[0] % m} modulo {m}")
    return f"aligned sizes ({', '.join(found)})" if chance < ALPHA else None


def length_fields(p: bytes) -> list[tuple[int, int, str]]:
    """The LENGTH_LAYOUTS at which `p` holds its own size less a header of at most HEADER bytes."""
    n = len(p)
    # A field of at most n has its most significant byte at most n >> 8 (for a 4-byte field, 0), and that
    # byte lies within the first HEADER bytes: where none of them is that small (most ciphertext), no
    # layout matches.
    if n >= HEADER and min(p[:HEADER]) > n >> 8:
        return []
    return [(off, width, order) for off, width, order in LENGTH_LAYOUTS
            if n - HEADER <= int.from_bytes(p[off : off + width], order) <= n]


class Shadowsocks(Dissector):
    """Shadowsocks AEAD: fully encrypted first segments (a risk on its own), then enough whole writes each
    way, AEAD-sized, with none of the structure ordinary encrypted or compressed protocols show."""

    family: ClassVar[str] = SHADOWSOCKS
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_TCP})
    budget: ClassVar[int] = SEGMENTS
    feature_state: ClassVar[bool] = False  # came after feature schema v1

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """TCP seen to open, the client speaking first, with at least the AEAD floor of a first segment, or
        TCP joined mid-flow with at least a chunk; either way none of the `exemption`s its first bytes alone
        show (`visible_heads`). `on_packet` rejects on any other first segment."""
        floor = np.where(p.opened, MIN_CLIENT_FIRST, MIN_CHUNK)
        return ((p.proto == IPPROTO_TCP) & (~p.opened | (p.direction == 0)) & (p.length >= floor)
                & ~visible_heads(p))

    def __init__(self) -> None:
        super().__init__()
        self._first = [0, 0]  # first segment size per direction (0: none yet)
        self._last = [0, 0]
        self._heads: tuple[list[bytes], list[bytes]] = ([], [])  # leading bytes of each write, per direction
        self._sizes: tuple[list[int], list[int]] = ([], [])  # sizes of later whole writes, per direction
        self._fields: Counter[tuple[int, int, str]] = Counter()  # length-field layouts matched, over writes
        self._latest: FlowPacket | None = None  # the packet a verdict is dated to
        self._joined = False  # the flow's start was not seen (its first segments may be mid-write)

    def on_packet(self, pkt: FlowPacket) -> None:
        d, p = pkt.direction, pkt.payload
        if self.seen == 1:
            self._joined = not pkt.opened
            if not self._joined and d != 0:
                self.reject("the responder spoke first")
                return
        first, starts_write = not self._first[d], self._last[d] < FULL_SEGMENT  # the last one ended a write
        if first:
            joined = self._joined
            floor = MIN_CHUNK if joined else MIN_CLIENT_FIRST if d == 0 else MIN_SERVER_FIRST
            # Joined, either side's first segment is held to what the cheap stage checked on the flow's first
            # (printable first bytes included: `visible_heads`).
            why = (exemption(p, d == 0 or joined) if len(p) >= floor
                   else f"{len(p)} bytes, below the AEAD floor of {floor}")
            if why:
                side = "client" if d == 0 else "server"
                self.reject(f"first {side} segment{' seen' if joined else ''} not fully encrypted: {why}")
                return
            self._first[d] = len(p)
            if all(self._first) and not joined:
                self.raise_risk(FULLY_ENCRYPTED)
        elif len(p) < MIN_CHUNK and starts_write:
            self.reject(f"a {len(p)}-byte segment cannot hold an AEAD chunk")
            return
        elif why := text_in(p):
            self.reject(f"a later segment carries text ({why}): not ciphertext")
            return
        if starts_write and not (first and self._joined):  # joined: a first segment may be mid-write
            self._heads[d].append(p[:HEADER])
            self._fields.update(length_fields(p))
            if len(p) < FULL_SEGMENT and not first:  # a first segment also holds a salt, nonce or key
                self._sizes[d].append(len(p))
        self._last[d] = len(p)
        self._latest = pkt
        if self.seen == self.budget:
            self._decide()

    def on_end(self) -> None:
        """A connection shorter than the budget is judged on what it showed."""
        if all(self._first):
            self._decide()

    def _decide(self) -> None:
        """Confirm only on enough whole writes each way free of structure; fewer is no evidence."""
        length = next((f"a {w}-byte {o}-endian length at offset {off} in {c} writes"
                       for (off, w, o), c in self._fields.items() if c >= 2), None)
        why = length or repeated_bytes(self._heads[0]) or repeated_bytes(self._heads[1]) or aligned_sizes(self._sizes)
        writes = tuple(len(s) for s in self._sizes)
        if why:
            self.reject(f"fully encrypted, but structured: {why}")
        elif min(writes) < MIN_WRITES:
            self.reject(f"fully encrypted only: {writes[0]} client and {writes[1]} server whole writes after "
                        f"the first, fewer than the {MIN_WRITES} each way that tell Shadowsocks from other "
                        "encrypted or compressed protocols")
        else:
            if self._joined:
                self.attributes["mid_flow"] = "true"
            opening = ("joined mid-flow, the first segments seen on both sides random" if self._joined
                       else "first segments of both sides fully encrypted")
            self.confirm(self._latest, 0.5 if self._joined else 0.6,
                         f"{opening} ({self._first[0]} and {self._first[1]} bytes), then {writes[0]} client and "
                         f"{writes[1]} server whole writes with random leading bytes, unaligned sizes and no "
                         "length field, each at least one AEAD chunk, no text"
                         f"{'' if self._joined else ', client spoke first'} (Shadowsocks-style fully encrypted proxy)")
