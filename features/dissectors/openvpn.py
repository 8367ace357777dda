"""OpenVPN over UDP and TCP, recognised from the protocol's own consistency, never from ports.

Only the first byte (opcode << 3 | key_id) and, on control packets, the 8-byte session ID are in fixed
places. Everything after the session ID depends on the control-channel wrapping (none, tls-auth with an
HMAC of unknown size, tls-crypt), which the header does not announce. So every wrapping is tried as a
hypothesis, a hypothesis dies as soon as a packet does not parse under it, and a flow is confirmed only on
facts that random bytes and look-alike protocols (QUIC, DTLS, STUN, DNS) do not produce:

* handshake echo: one side's ACK carries the other side's session ID as its remote session ID (0.99 when
  both hard resets were seen, 0.9 for a capture that starts later in the handshake);
* tls-crypt handshake: client and server hard resets plus further packets with the same session IDs and
  increasing replay packet-ids, under the only wrapping in which no ACK array is visible (0.99); a 2.6
  server's stateless reset may count its replay id apart from the packets after it. However short the
  flow, such a handshake decides it (a 13-packet tls-crypt-v2 session is OpenVPN);
* one-way handshake: a hard reset, a control packet whose payload is a TLS record at the derived offset,
  and ACKs naming one constant peer session, all from one side (0.9; asymmetric captures);
* mid-flow data: data packets both ways with the same key_id, the same peer-id when both use P_DATA_V2,
  and clear AEAD packet-id counters increasing in each direction (0.9); a bulk direction whose counter
  stepped by one MIN_ONE_WAY_DATA times needs only one such packet back;
* mid-flow CBC data (tls-auth era: --cipher *-CBC --auth SHA*): the packet-id is encrypted, so instead
  every packet of both directions fits one HMAC + IV + whole-cipher-block layout, sizes vary, the first
  byte (and peer-id) is constant and the body looks encrypted (0.8);
* one direction only (asymmetric tap): one side's AEAD data under one first byte (and peer-id), packet-id
  stepping by one, encrypted-looking body (0.7).

Layouts follow OpenVPN's ssl_pkt.h / reliable.h. Over TCP every packet is preceded by a 2-byte
big-endian length; a per-direction walker follows it across segments. A connection joined mid-flow (its
SYN not seen) may start inside a packet: each direction then skips up to MAX_UNSYNCED segments until one
starts with a length prefix and a packet that fits it, and is walked from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from vpnid.features.dissectors.base import Dissector, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.tcpstream import SEQ_MOD, LengthFramed
from vpnid.features.families import OPENVPN
from vpnid.features.packets import IPPROTO_TCP, IPPROTO_UDP

# Opcodes (ssl_pkt.h); the wire byte is opcode << P_OPCODE_SHIFT | key_id.
P_CONTROL_HARD_RESET_CLIENT_V1 = 1
P_CONTROL_HARD_RESET_SERVER_V1 = 2
P_CONTROL_SOFT_RESET_V1 = 3
P_CONTROL_V1 = 4
P_ACK_V1 = 5
P_DATA_V1 = 6
P_CONTROL_HARD_RESET_CLIENT_V2 = 7
P_CONTROL_HARD_RESET_SERVER_V2 = 8
P_DATA_V2 = 9
P_CONTROL_HARD_RESET_CLIENT_V3 = 10  # tls-crypt-v2: wrapped client key appended
P_CONTROL_WKC_V1 = 11  # tls-crypt-v2 control packet carrying the wrapped client key
P_OPCODE_SHIFT = 3
P_KEY_ID_MASK = 0x07

OPCODE_NAMES = {
    P_CONTROL_HARD_RESET_CLIENT_V1: "P_CONTROL_HARD_RESET_CLIENT_V1",
    P_CONTROL_HARD_RESET_SERVER_V1: "P_CONTROL_HARD_RESET_SERVER_V1",
    P_CONTROL_SOFT_RESET_V1: "P_CONTROL_SOFT_RESET_V1",
    P_CONTROL_V1: "P_CONTROL_V1",
    P_ACK_V1: "P_ACK_V1",
    P_DATA_V1: "P_DATA_V1",
    P_CONTROL_HARD_RESET_CLIENT_V2: "P_CONTROL_HARD_RESET_CLIENT_V2",
    P_CONTROL_HARD_RESET_SERVER_V2: "P_CONTROL_HARD_RESET_SERVER_V2",
    P_DATA_V2: "P_DATA_V2",
    P_CONTROL_HARD_RESET_CLIENT_V3: "P_CONTROL_HARD_RESET_CLIENT_V3",
    P_CONTROL_WKC_V1: "P_CONTROL_WKC_V1",
}
CLIENT_RESETS = frozenset(
    {P_CONTROL_HARD_RESET_CLIENT_V1, P_CONTROL_HARD_RESET_CLIENT_V2, P_CONTROL_HARD_RESET_CLIENT_V3}
)
SERVER_RESETS = frozenset({P_CONTROL_HARD_RESET_SERVER_V1, P_CONTROL_HARD_RESET_SERVER_V2})
HARD_RESETS = CLIENT_RESETS | SERVER_RESETS
DATA_OPCODES = frozenset({P_DATA_V1, P_DATA_V2})
TLS_CRYPT_V2_OPCODES = frozenset({P_CONTROL_HARD_RESET_CLIENT_V3, P_CONTROL_WKC_V1})

SID_SIZE = 8  # session_id
PACKET_ID_SIZE = 4
NET_TIME_SIZE = 4  # long-form replay packet-id: id + time
RELIABLE_ACK_SIZE = 8  # most packet-ids one ACK array carries (reliable.h)
TLS_CRYPT_TAG_SIZE = 32  # HMAC-SHA256 tag of tls-crypt
WKC_LEN_SIZE = 2  # a wrapped client key ends with its own length
PEER_ID_SIZE = 3
AEAD_TAG_SIZE = 16
HEADER_SIZE = 1 + SID_SIZE  # opcode byte + session ID: the only fixed part of a control packet
TLS_CRYPT_HEADER = HEADER_SIZE + PACKET_ID_SIZE + NET_TIME_SIZE + TLS_CRYPT_TAG_SIZE
# A data packet over TCP, as the wire carries it (ssl.h; the kernel's ovpn proto.h for the AEAD layout):
# the packet length word, the opcode/key-id byte, P_DATA_V2's peer-id, the AEAD packet-id and tag, then the
# encrypted payload: one IP packet, after a compression framing byte when --compress/--comp-lzo is set
# (comp.h), or the 16-byte keepalive ping (ping.c: OVPN_KEEPALIVE_SIZE).
TCP_LENGTH_SIZE = 2
OPCODE_SIZE = 1
COMP_HEADER_SIZE = 1
PING_SIZE = 16
TCP_AEAD_DATA_FRAMINGS = tuple(TCP_LENGTH_SIZE + OPCODE_SIZE + peer + PACKET_ID_SIZE + AEAD_TAG_SIZE + comp
                               for peer in (0, PEER_ID_SIZE) for comp in (0, COMP_HEADER_SIZE))  # 23, 24, 26, 27

# Plausibility bounds, not spec values.
MAX_RESET_SIZE = 1200  # a reset this large is a QUIC Initial (nDPI's rule)
MAX_COUNTER = 1 << 24  # packet-ids start at 1 per session/key; far larger ones are random bytes
# OpenVPN 2.6 (ssl_pkt.h EARLY_NEG_START): a client that supports early negotiation (the stateless HMAC
# cookie of tls-crypt-v2) starts its control-channel replay packet-ids here instead of at 1.
EARLY_NEG_START = 0x0F000000
MAX_COUNTER_STEP = 64  # data packet-ids may skip lost or reordered datagrams, not thousands
# A data packet-id is a 32-bit counter restarted at every key renegotiation (reneg-sec 3600): a bulk
# session reaches hundreds of millions, so the first one seen mid-flow may be anything below 2^31.
MAX_DATA_COUNTER = 1 << 31
# CBC data channel without AEAD (crypto.c openvpn_encrypt): [opcode (+ peer-id)] HMAC, IV (one block),
# then whole cipher blocks holding packet-id + payload + PKCS#7 padding.
CBC_HMAC_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
CBC_BLOCK_SIZES = (16, 8)  # AES / Camellia, then Blowfish / 3DES (OpenVPN's old default BF-CBC)
MIN_CBC_PACKETS = 4  # per direction ...
MIN_CBC_SIZES = 4  # ... and distinct sizes overall: a fixed-size protocol fits any grid by luck
MIN_ONE_WAY_DATA = 8  # one-direction AEAD data: packets (at the flow's end or budget), packet-id stepping by one
# Ciphertext has about 1 zero byte in 256; cleartext headers and records are full of zeros.
MAX_ZERO_SHARE = 1 / 16
MAX_TCP_PACKET = 0x4000  # far above tun-mtu 1500; ASCII-led streams (HTTP, SSH) declare more
# TCP joined mid-flow: segments per direction that may pass before one starts a packet (a saturated bulk
# direction starts a packet only where a burst begins), and the larger budget such a flow gets.
MAX_UNSYNCED = 8
MID_FLOW_TCP_BUDGET = 48
MIN_DATA_PACKETS = 3  # per direction, for the mid-flow rule ...
MIN_DATA_QUIET = 2  # ... or this many in the quiet direction of a bulk transfer (its ACKs carry no data)
STUN_MAGIC_COOKIE = 0x2112A442
TLS_HANDSHAKE = 22
MAX_TLS_RECORD = (1 << 14) + 2048


@dataclass(frozen=True, slots=True, eq=False)
class Wrap:
    """One control-channel wrapping hypothesis (--tls-auth digest size, or --tls-crypt). The six of
    `WRAPS` are the only instances, so they hash by identity: every candidate flow keys a dict by them."""

    variant: str  # "plain", "tls-auth" or "tls-crypt"
    digest: str = ""  # tls-auth HMAC digest
    hmac_size: int = 0
    crypt: bool = False

    def describe(self) -> str:
        if self.crypt:
            return "tls-crypt: clear packet-id/time, 32-byte tag, rest encrypted"
        if self.hmac_size:
            return f"tls-auth HMAC-{self.digest.upper()} ({self.hmac_size} B) + packet-id/time"
        return "no tls-auth/tls-crypt: ACK array right after the session ID"


WRAPS = (
    Wrap("plain"),
    Wrap("tls-auth", "md5", 16),
    Wrap("tls-auth", "sha1", 20),
    Wrap("tls-auth", "sha256", 32),
    Wrap("tls-auth", "sha512", 64),
    Wrap("tls-crypt", crypt=True),
)


@dataclass(frozen=True, slots=True)
class Control:
    """A control-channel packet parsed under one wrapping; fields hidden by tls-crypt are None."""

    opcode: int
    key_id: int
    sid: bytes
    replay_id: int | None
    remote_sid: bytes | None
    msg_id: int | None
    payload: bytes


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off : off + 4], "big")


def _is_tlv_run(b: bytes) -> bool:
    """True when b is empty or a sequence of (type u16, length u16, value) items (2.6 early negotiation)."""
    pos = 0
    while pos < len(b):
        if pos + 4 > len(b):
            return False
        pos += 4 + int.from_bytes(b[pos + 2 : pos + 4], "big")
    return pos == len(b)


def _parse_crypt(b: bytes, opcode: int) -> Control | None:
    """tls-crypt: only the replay id is clear; tls-crypt-v2 packets end with the wrapped key's length."""
    body = len(b)
    if opcode in TLS_CRYPT_V2_OPCODES:
        wkc = int.from_bytes(b[-WKC_LEN_SIZE:], "big")
        if wkc < TLS_CRYPT_TAG_SIZE + WKC_LEN_SIZE or wkc > body:
            return None
        body -= wkc
    least = 1 + PACKET_ID_SIZE + (SID_SIZE if opcode == P_ACK_V1 else 0)  # ack count + (ack + remote) or msg id
    if body < TLS_CRYPT_HEADER + least:
        return None
    return Control(opcode, b[0] & P_KEY_ID_MASK, b[1:HEADER_SIZE], _u32(b, HEADER_SIZE), None, None, b"")


def parse_control(b: bytes, wrap: Wrap) -> Control | None:
    """Parse a control-channel packet under `wrap`; None when its layout cannot hold these bytes."""
    opcode = b[0] >> P_OPCODE_SHIFT
    if wrap.crypt:
        return _parse_crypt(b, opcode)
    if opcode in TLS_CRYPT_V2_OPCODES:
        return None
    pos = HEADER_SIZE
    replay_id = None
    if wrap.hmac_size:
        replay_id = _u32(b, pos + wrap.hmac_size)
        pos += wrap.hmac_size + PACKET_ID_SIZE + NET_TIME_SIZE
    if len(b) <= pos or b[pos] > RELIABLE_ACK_SIZE:
        return None
    acks = b[pos]
    pos += 1
    if any(_u32(b, pos + 4 * i) >= MAX_COUNTER for i in range(acks)):
        return None
    pos += 4 * acks
    remote = b[pos : pos + SID_SIZE] if acks else None
    pos += SID_SIZE if acks else 0
    key_id, sid = b[0] & P_KEY_ID_MASK, b[1:HEADER_SIZE]
    if opcode == P_ACK_V1:  # an ACK is exactly its ACK array: nothing may follow
        return Control(opcode, key_id, sid, replay_id, remote, None, b"") if acks and pos == len(b) else None
    if len(b) < pos + PACKET_ID_SIZE:
        return None
    return Control(opcode, key_id, sid, replay_id, remote, _u32(b, pos), b[pos + PACKET_ID_SIZE :])


def _plausible_replay_id(x: int) -> bool:
    """Replay packet-ids count from 1, or from EARLY_NEG_START + 1 (2.6 early negotiation)."""
    return 0 < x < MAX_COUNTER or EARLY_NEG_START < x < EARLY_NEG_START + MAX_COUNTER


def _plausible(c: Control) -> bool:
    """Counter ranges and hard-reset shape: the checks that kill wrong wrapping hypotheses quickly."""
    if c.replay_id is not None and not _plausible_replay_id(c.replay_id):
        return False
    if c.msg_id is not None and c.msg_id >= MAX_COUNTER:
        return False
    if c.opcode in HARD_RESETS:
        return (c.msg_id in (None, 0)) and _is_tlv_run(c.payload)
    return True


def _starts_tls_record(b: bytes) -> bool:
    """A TLS handshake record header: what the first control packet of each side carries."""
    if len(b) < 5 or b[0] != TLS_HANDSHAKE or b[1] != 3 or b[2] > 4:
        return False
    return int.from_bytes(b[3:5], "big") <= MAX_TLS_RECORD


class PduWalker(LengthFramed):
    """One direction of an OpenVPN-over-TCP stream cut into packets by their 2-byte length prefixes."""

    __slots__ = ()

    def partial(self) -> tuple[int, bytes] | None:
        """Declared size and first bytes of the packet still being assembled, to reject early."""
        if len(self.buf) < 3:
            return None
        return int.from_bytes(self.buf[:2], "big"), bytes(self.buf[2:HEADER_SIZE + 2])


@dataclass(slots=True)
class DataTrack:
    """Data packets of one direction: constant first byte and peer-id, clear AEAD packet-id counter."""

    first_byte: int = -1
    peer_id: bytes | None = None
    counters: list[int] = field(default_factory=list)
    consistent: bool = True
    sizes: list[int] = field(default_factory=list)
    steps_of_one: int = 0
    body_bytes: int = 0
    body_zeros: int = 0
    framed: bool = True  # first byte and peer-id constant (what the CBC rule needs; counters aside)

    def add(self, b: bytes) -> None:
        opcode = b[0] >> P_OPCODE_SHIFT
        head = 1 + (PEER_ID_SIZE if opcode == P_DATA_V2 else 0)
        peer = b[1:head] if opcode == P_DATA_V2 else None
        counter = _u32(b, head)
        if self.first_byte < 0:
            self.first_byte, self.peer_id = b[0], peer
        elif b[0] != self.first_byte or peer != self.peer_id:
            self.consistent = False
            self.framed = False
        if self.counters:
            step = counter - self.counters[-1]
            self.steps_of_one += step == 1
            if not 0 < step <= MAX_COUNTER_STEP:
                self.consistent = False
        self.counters.append(counter)
        self.sizes.append(len(b))
        self.body_bytes += len(b) - head
        self.body_zeros += b.count(0, head)

    def counting(self, at_least: int = MIN_DATA_PACKETS) -> bool:
        return self.consistent and len(self.counters) >= at_least and 0 < self.counters[0] < MAX_DATA_COUNTER

    def encrypted_looking(self) -> bool:
        return self.body_zeros <= MAX_ZERO_SHARE * self.body_bytes

    def one_way(self) -> bool:
        """Enough data from this side alone: counter stepping by one nearly always."""
        n = len(self.counters)
        return self.counting(MIN_ONE_WAY_DATA) and self.steps_of_one >= n - 2 and self.encrypted_looking()


def _cbc_layouts(tracks: tuple[DataTrack, ...]) -> list[tuple[str, int]]:
    """The (HMAC digest, cipher block) layouts every data packet of `tracks` fits."""
    fits = []
    for digest, hmac in CBC_HMAC_SIZES.items():
        for block in CBC_BLOCK_SIZES:
            ok = True
            for t in tracks:
                head = 1 + (PEER_ID_SIZE if t.first_byte >> P_OPCODE_SHIFT == P_DATA_V2 else 0) + hmac
                # IV + at least one block (the packet-id alone fills part of one)
                if any((n - head) % block or n - head < 2 * block for n in t.sizes):
                    ok = False
                    break
            if ok:
                fits.append((digest, block))
    return fits


def _min_data_size(opcode: int) -> int:
    """Header + AEAD packet-id + tag + one byte; CBC packets (HMAC + IV + block) are larger still."""
    return 1 + (PEER_ID_SIZE if opcode == P_DATA_V2 else 0) + PACKET_ID_SIZE + AEAD_TAG_SIZE + 1


def _size_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Per possible first byte (opcode << 3 | key_id): the least and the largest packet size that
    `_bad_start`/`_bad_size` let it start (the STUN check and the TCP length limit aside); an unknown
    opcode, or a hard reset with a key_id, gets an empty range. Two table reads and two comparisons per
    offset, without branches: `_chain_offset` asks this of every offset of a segment of random bytes,
    where a branch per condition is mispredicted about half the time."""
    first = np.arange(256)
    opcode, key_id = first >> P_OPCODE_SHIFT, first & P_KEY_ID_MASK
    reset = np.isin(opcode, list(HARD_RESETS))
    data = np.isin(opcode, list(DATA_OPCODES))
    known = np.isin(opcode, list(OPCODE_NAMES)) & ~(reset & (key_id != 0))
    min_data = np.array([_min_data_size(int(o)) for o in opcode], np.int64)
    least = np.where(data, min_data, HEADER_SIZE + 1 + PACKET_ID_SIZE)
    most = np.where(reset, MAX_RESET_SIZE - 1, np.iinfo(np.int64).max)
    return np.where(known, least, 1).astype(np.int64), np.where(known, most, 0).astype(np.int64)


_LEAST, _MOST = _size_bounds()


def _fits(first: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Per row: a packet of `size` bytes may start with byte `first` (0..255) (`_size_bounds`)."""
    first = first.astype(np.int64)
    return (size >= _LEAST[first]) & (size <= _MOST[first])


@njit(cache=True, nogil=True)
def _same_sender(b: np.ndarray, x: int, y: int) -> bool:  # pragma: no cover - compiled
    """Packets at x and y (their first byte; y + HEADER_SIZE <= len(b)) could come from one sender in a
    row: one data key and peer-id (P_DATA_V1: its clear packet-id a little higher), or one control
    session ID."""
    ox, oy = b[x] >> P_OPCODE_SHIFT, b[y] >> P_OPCODE_SHIFT
    x_data = ox == P_DATA_V1 or ox == P_DATA_V2
    y_data = oy == P_DATA_V1 or oy == P_DATA_V2
    if b[x] != b[y] and (x_data or y_data):
        return False
    width = PEER_ID_SIZE if ox == P_DATA_V2 else SID_SIZE
    if ox == P_DATA_V1:
        step = 0
        for j in range(1, 1 + PACKET_ID_SIZE):
            step = step * 256 + (np.int64(b[y + j]) - np.int64(b[x + j]))
        return 0 < step <= MAX_COUNTER_STEP
    for j in range(1, 1 + width):
        if b[x + j] != b[y + j]:
            return False
    return True


@njit(cache=True)
def _chain_offset(b: np.ndarray, least: np.ndarray, most: np.ndarray) -> int:  # pragma: no cover - compiled
    n = len(b)
    m = n - 2  # offsets where a length prefix and a first byte fit in `b`
    fit = np.empty(m, np.bool_)
    nxt = np.empty(m, np.int64)
    for i in range(m):
        size = np.int64(b[i]) << 8 | np.int64(b[i + 1])
        first = b[i + 2]
        fit[i] = (size <= MAX_TCP_PACKET) & (size >= least[first]) & (size <= most[first])
        nxt[i] = i + 2 + size
    if fit[0] and nxt[0] == n:  # exactly one packet: the segment(s) start and end on its bounds
        return 0
    for at in range(m):
        # the second header's first bytes (peer-id, packet-id or session ID) must be inside `b` too
        if not (fit[at] and nxt[at] + 2 + HEADER_SIZE <= n and fit[nxt[at]]):
            continue
        if not _same_sender(b, at + 2, nxt[at] + 2):
            continue
        pos = at
        while pos < m and fit[pos]:
            pos = nxt[pos]
        if pos >= m:
            return at
    return -1


@njit(cache=True)
def _chains_rows(data: np.ndarray, extra: np.ndarray, offset: np.ndarray, length: np.ndarray, rows: np.ndarray,
                 least: np.ndarray, most: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """`_chain_start(payload) is not None` for each of `rows`, the payloads read in place (`PacketHeads`)."""
    out = np.zeros(len(rows), np.bool_)
    split = len(data)
    for k in range(len(rows)):
        i = rows[k]
        a, n = offset[i], length[i]
        if n < 3:
            continue
        b = data[a : a + n] if a < split else extra[a - split : a - split + n]
        out[k] = _chain_offset(b, least, most) >= 0
    return out


def _chain_start(b: bytes) -> int | None:
    """First offset of `b` from which length-prefixed OpenVPN packets follow each other: `b` is exactly
    one packet, or a header fits and so does another where its packet ends, from the same sender
    (`_same_sender`: random bytes fit the length and first byte of one header about once in 50 offsets,
    a second one of the same key and peer-id or session almost never), and every further header inside
    `b` fits too. Compiled: a mid-flow connection asks this of every segment until it syncs."""
    if len(b) < 3:
        return None
    at = _chain_offset(np.frombuffer(b, np.uint8), _LEAST, _MOST)
    return None if at < 0 else at


def _short(sid: bytes) -> str:
    return sid[:4].hex() + "…"


class OpenVPN(Dissector):
    family = OPENVPN
    transports = frozenset({IPPROTO_UDP, IPPROTO_TCP})
    budget = 16  # nDPI needs up to 12 packets on TCP; data-only flows need 3 per direction

    # A connection joined mid-flow is looked at over its first two payload packets (`prefilter`).
    prefilter_window = 2

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """The first OpenVPN packet's opcode/key-id byte and size (`_bad_start`, `_bad_size`): on UDP the
        datagram, on TCP the packet behind the 2-byte length prefix (a segment of under 3 bytes passes:
        the dissector waits for more). A connection joined mid-flow may start inside a packet: its first
        segment passes only where a chain of packets starts in it (`_chain_start`, on the whole payload);
        without one the dissector would only hold the segment, unsynced, and decide nothing, so it is built
        on the next segment (which always passes: joined to the first it may sync) and fed both."""
        udp, tcp = p.proto == IPPROTO_UDP, p.proto == IPPROTO_TCP
        prefix = np.where(tcp, 2, 0)  # where the OpenVPN packet starts
        rows = np.arange(len(p))
        first = p.head[rows, prefix].astype(np.int64)
        size = np.where(tcp, p.be(0, 2), p.length)
        ok = _fits(first, size)
        mid = tcp & ~p.opened
        waits = mid & p.first()  # a first segment that may not sync by itself
        if p.data is not None and waits.any():
            which = np.flatnonzero(waits)
            waits[which] = ~_chains_rows(p.data, p.extra, p.offset, p.length, which, _LEAST, _MOST)
        else:
            waits[:] = False
        return (udp & ok) | (mid & ~waits) | (tcp & p.opened & ((p.length < 3) | (ok & (size <= MAX_TCP_PACKET))))

    @classmethod
    def closes_window(cls, p: PacketHeads) -> np.ndarray:
        """On UDP and on a connection seen to open, the first packet decides (a window of one)."""
        return ~((p.proto == IPPROTO_TCP) & ~p.opened)

    def __init__(self) -> None:
        super().__init__()
        self._tcp: bool | None = None
        self._walkers: list[PduWalker | None] = [PduWalker(), PduWalker()]
        self._unsynced = [0, 0]
        self._held: list[tuple[int, bytes] | None] = [None, None]  # unsynced: the direction's last segment
        self._sids: list[bytes | None] = [None, None]
        self._resets: list[int | None] = [None, None]
        self._parsed: dict[Wrap, list[tuple[int, Control]]] = {w: [] for w in WRAPS}
        self._data = (DataTrack(), DataTrack())
        self._last: FlowPacket | None = None

    # -- framing ---------------------------------------------------------------------------------------

    def on_packet(self, pkt: FlowPacket) -> None:
        self._last = pkt
        if self._tcp is None:
            self._tcp = pkt.proto == IPPROTO_TCP
            self.attributes["transport"] = "tcp" if self._tcp else "udp"
        if not self._tcp:
            self._packet(pkt, pkt.direction, pkt.payload)
            return
        if self.seen == 1 and not pkt.opened:
            self._walkers = [None, None]  # joined mid-flow: a segment may start inside a packet
            self.budget = MID_FLOW_TCP_BUDGET
        walker, seq, data = self._walkers[pkt.direction], pkt.tcp_seq, pkt.payload
        if walker is None:
            synced = self._sync(pkt)
            if synced is None:
                return
            walker, seq, data = synced
        for pdu in walker.push(seq, data):
            self._packet(pkt, pkt.direction, pdu)
            if self.state is not State.CANDIDATE:
                return
        head = walker.partial()
        if head is not None:
            size, first = head
            problem = self._bad_size(size, first[0] >> P_OPCODE_SHIFT) or self._bad_start(first)
            if problem:
                self.reject(problem)

    def _sync(self, pkt: FlowPacket) -> tuple[PduWalker, int, bytes] | None:
        """Mid-flow TCP: walk a direction from the first place where two OpenVPN packets follow each other
        (a length prefix and a header that fit, then another right where the first ends), looked for in
        this segment joined to the direction's previous one when they are contiguous; reject once
        MAX_UNSYNCED segments of one direction showed none. Returns the walker and what it is to be fed."""
        d = pkt.direction
        held, self._held[d] = self._held[d], (pkt.tcp_seq, pkt.payload)
        seq, b = pkt.tcp_seq, pkt.payload
        if held is not None and (held[0] + len(held[1])) % SEQ_MOD == seq:
            seq, b = held[0], held[1] + b
        at = _chain_start(b)
        if at is not None:
            self.attributes["mid_flow"] = "true"
            self._held[d] = None
            walker = self._walkers[d] = PduWalker()
            return walker, (seq + at) % SEQ_MOD, b[at:]
        self._unsynced[d] += 1
        if self._unsynced[d] >= MAX_UNSYNCED:
            self.reject(f"mid-flow, and no two consecutive OpenVPN packets in {MAX_UNSYNCED} segments")
        return None

    def on_end(self) -> None:
        if self._last is not None and self._check_one_way_data(self._last):
            return
        if None in self._resets:
            self.reject("no OpenVPN handshake seen in both directions")
        else:
            self.reject("hard resets both ways but no consistent follow-up")

    # -- per OpenVPN packet ----------------------------------------------------------------------------

    def _packet(self, pkt: FlowPacket, direction: int, b: bytes) -> None:
        opcode = b[0] >> P_OPCODE_SHIFT if b else 0
        problem = self._bad_start(b) or self._bad_size(len(b), opcode)
        if problem:
            self.reject(problem)
        elif opcode in DATA_OPCODES:
            self._data[direction].add(b)
            self._check_data(pkt)
        else:
            self._control(pkt, direction, b)

    def _bad_start(self, b: bytes) -> str | None:
        """Reasons one packet's first bytes cannot be OpenVPN (checked before any state is kept)."""
        if not b:
            return "empty OpenVPN packet"
        opcode, key_id = b[0] >> P_OPCODE_SHIFT, b[0] & P_KEY_ID_MASK
        if opcode not in OPCODE_NAMES:
            return f"first byte 0x{b[0]:02x} is no OpenVPN opcode"
        if opcode in HARD_RESETS and key_id:
            return f"{OPCODE_NAMES[opcode]} with key_id {key_id} (hard resets use key_id 0)"
        if len(b) >= 8 and _u32(b, 4) == STUN_MAGIC_COOKIE:
            return "STUN magic cookie at offset 4"
        return None

    def _bad_size(self, size: int, opcode: int) -> str | None:
        if self._tcp and size > MAX_TCP_PACKET:
            return f"TCP length prefix {size} too large for OpenVPN"
        if opcode in DATA_OPCODES:
            return None if size >= _min_data_size(opcode) else f"{size}-byte data packet too short"
        if size < HEADER_SIZE + 1 + PACKET_ID_SIZE:
            return f"{size}-byte control packet too short"
        if opcode in HARD_RESETS and size >= MAX_RESET_SIZE:
            return f"{size}-byte hard reset (QUIC-sized)"
        return None

    def _control(self, pkt: FlowPacket, direction: int, b: bytes) -> None:
        sid = b[1:HEADER_SIZE]
        if self._sids[direction] is None:
            self._sids[direction] = sid
        elif self._sids[direction] != sid:
            self.reject(f"session ID changed within direction {direction}")
            return
        opcode = b[0] >> P_OPCODE_SHIFT
        if opcode in HARD_RESETS:
            self._resets[direction] = opcode
        for wrap in list(self._parsed):
            self._extend(wrap, direction, b)
        if not self._parsed:
            self.reject(f"{OPCODE_NAMES[opcode]} fits no OpenVPN control-channel layout")
            return
        self._check_control(pkt)

    def _extend(self, wrap: Wrap, direction: int, b: bytes) -> None:
        """Add a packet to one wrapping hypothesis, or drop the hypothesis if the packet contradicts it."""
        seen = self._parsed[wrap]
        c = parse_control(b, wrap)
        # A 2.6 server answers the first reset statelessly (HMAC session-id cookie): that reset's replay id
        # comes from a throw-away context, and the session created after the client's reply counts its own
        # ids afresh. So replay ids must rise among resets and among the packets after them, not across.
        after_reset = c is not None and c.opcode not in HARD_RESETS
        previous = [p.replay_id for d, p in seen if d == direction and not (after_reset and p.opcode in HARD_RESETS)]
        if c is None or not _plausible(c) or (previous and c.replay_id is not None and c.replay_id <= previous[-1]):
            del self._parsed[wrap]
        else:
            seen.append((direction, c))

    # -- verdicts --------------------------------------------------------------------------------------

    def _check_control(self, pkt: FlowPacket) -> None:
        for wrap, seen in self._parsed.items():
            found = self._crypt_handshake(seen) if wrap.crypt else self._echo(seen) or self._one_way(seen)
            if found:
                confidence, evidence = found
                self._describe(wrap)
                self.confirm(pkt, confidence, *evidence, wrap.describe())
                return

    def _reset_names(self) -> str:
        names = [OPCODE_NAMES[r] for r in self._resets if r is not None]
        return " / ".join(names)

    def _echo(self, seen: list[tuple[int, Control]]) -> tuple[float, list[str]] | None:
        for direction, c in seen:
            other = self._sids[1 - direction]
            if c.remote_sid is not None and c.remote_sid == other:
                both = self._resets[0] is not None and self._resets[1] is not None
                return 0.99 if both else 0.9, [
                    f"{OPCODE_NAMES[c.opcode]} acknowledges the peer's session {_short(other)} "
                    f"(own session {_short(c.sid)})",
                    f"hard resets both ways: {self._reset_names()}" if both else "handshake partly before capture",
                ]
        return None

    def _crypt_handshake(self, seen: list[tuple[int, Control]]) -> tuple[float, list[str]] | None:
        """tls-crypt hides ACKs, so ask for client and server resets and follow-ups with the same IDs."""
        roles = {self._resets[0] in CLIENT_RESETS, self._resets[1] in CLIENT_RESETS}
        if roles != {True, False} or None in self._resets:
            return None
        counts = [sum(1 for d, _ in seen if d == side) for side in (0, 1)]
        if min(counts) < 2:
            return None
        ids = [[c.replay_id for d, c in seen if d == side] for side in (0, 1)]
        return 0.99, [
            f"hard resets both ways: {self._reset_names()}, sessions {_short(self._sids[0] or b'')} / "
            f"{_short(self._sids[1] or b'')} kept",
            f"replay packet-ids rising {ids[0]} / {ids[1]}",
        ]

    def _one_way(self, seen: list[tuple[int, Control]]) -> tuple[float, list[str]] | None:
        """Asymmetric capture: one side's reset, its TLS record, and ACKs naming one constant peer."""
        for side in (0, 1):
            mine = [c for d, c in seen if d == side]
            remotes = {c.remote_sid for c in mine if c.remote_sid is not None}
            tls = any(c.opcode == P_CONTROL_V1 and _starts_tls_record(c.payload) for c in mine)
            acks = sum(c.remote_sid is not None for c in mine)
            steady = acks >= 2 and len(remotes) == 1 and self._sids[side] not in remotes
            if self._resets[side] is not None and tls and steady:
                return 0.9, [
                    f"one direction only: {OPCODE_NAMES[self._resets[side]]} then P_CONTROL_V1 carrying a TLS "
                    f"handshake record, session {_short(mine[0].sid)}",
                    f"{acks} packets acknowledge one peer session {_short(remotes.pop())}",
                ]
        return None

    def _check_data(self, pkt: FlowPacket) -> None:
        """Mid-flow rule; QUIC short headers fail it (protected first byte, one CID per direction)."""
        a, b = self._data
        if a.counters and b.counters:
            if (a.first_byte ^ b.first_byte) & P_KEY_ID_MASK:
                return
            if a.peer_id is not None and b.peer_id is not None and a.peer_id != b.peer_id:
                return
        if not any(x.counting() and y.counting(MIN_DATA_QUIET) or x.one_way() and y.counting(1)
                   for x, y in ((a, b), (b, a))):
            # one-way only on the last packet the budget allows: a bulk transfer seen mid-flow may show
            # many packets of one side before the first of the other (which would make it two-way, 0.9)
            if not self._check_cbc_data(pkt) and self.seen >= self.budget:
                self._check_one_way_data(pkt)
            return
        peer = a.peer_id if a.peer_id is not None else b.peer_id
        names = {OPCODE_NAMES[t.first_byte >> P_OPCODE_SHIFT] for t in self._data}
        if peer is not None:
            self.attributes["peer_id"] = peer.hex()
        self.attributes["data"] = "+".join(sorted(names))
        self.confirm(
            pkt,
            0.9,
            f"{' and '.join(sorted(names))} both ways, key_id {a.first_byte & P_KEY_ID_MASK}"
            + (f", peer-id 0x{peer.hex()} both ways" if a.peer_id is not None and b.peer_id is not None else ""),
            f"AEAD packet-ids rising {a.counters[0]}..{a.counters[-1]} / {b.counters[0]}..{b.counters[-1]}",
        )

    def _check_cbc_data(self, pkt: FlowPacket) -> bool:
        """Mid-flow CBC + HMAC data (packet-id encrypted): one layout for every packet of both sides."""
        a, b = self._data
        if not (a.framed and b.framed) or min(len(a.sizes), len(b.sizes)) < MIN_CBC_PACKETS:
            return False
        if len(set(a.sizes) | set(b.sizes)) < MIN_CBC_SIZES or not (a.encrypted_looking() and b.encrypted_looking()):
            return False
        fits = _cbc_layouts(self._data)
        if not fits:
            return False
        digests = sorted({d for d, _ in fits})
        block = max(bl for _, bl in fits)
        peer = a.peer_id if a.peer_id is not None else b.peer_id
        if peer is not None:
            self.attributes["peer_id"] = peer.hex()
        names = sorted({OPCODE_NAMES[t.first_byte >> P_OPCODE_SHIFT] for t in self._data})
        self.attributes["data"] = "+".join(names)
        self.attributes["cipher"] = "cbc"
        if len(digests) == 1:
            self.attributes["hmac"] = digests[0]
        self.attributes["mid_flow"] = "true"
        self.confirm(
            pkt,
            0.8,
            f"{' and '.join(names)} both ways, key_id {a.first_byte & P_KEY_ID_MASK}, constant first byte"
            + (f" and peer-id 0x{peer.hex()}" if peer is not None else ""),
            f"all {len(a.sizes) + len(b.sizes)} data packets ({len(set(a.sizes) | set(b.sizes))} sizes) fit "
            f"HMAC ({'/'.join(d.upper() for d in digests)}) + IV + {block}-byte cipher blocks; body encrypted-looking",
        )
        return True

    def _check_one_way_data(self, pkt: FlowPacket) -> bool:
        """Asymmetric tap: one side's AEAD data alone, packet-id stepping by one (the other side unseen)."""
        for side, t in enumerate(self._data):
            if t.one_way() and not self._data[1 - side].counters:
                if t.peer_id is not None:
                    self.attributes["peer_id"] = t.peer_id.hex()
                self.attributes["data"] = OPCODE_NAMES[t.first_byte >> P_OPCODE_SHIFT]
                self.attributes["one_way"] = "true"
                self.attributes["mid_flow"] = "true"
                self.confirm(
                    pkt,
                    0.7,
                    f"one direction only: {len(t.counters)} {OPCODE_NAMES[t.first_byte >> P_OPCODE_SHIFT]} "
                    f"packets, key_id {t.first_byte & P_KEY_ID_MASK}"
                    + (f", peer-id 0x{t.peer_id.hex()}" if t.peer_id is not None else ""),
                    f"AEAD packet-id stepping by one {t.counters[0]}..{t.counters[-1]}, body encrypted-looking",
                )
                return True
        return False

    def _describe(self, wrap: Wrap) -> None:
        v2 = wrap.crypt and P_CONTROL_HARD_RESET_CLIENT_V3 in self._resets
        self.attributes["variant"] = "tls-crypt-v2" if v2 else wrap.variant
        if wrap.digest:
            self.attributes["hmac"] = wrap.digest
