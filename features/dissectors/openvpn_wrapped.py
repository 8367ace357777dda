"""OpenVPN over TCP inside a wrapper (TLS, e.g. stunnel; a fully encrypted proxy, e.g. Shadowsocks), seen
through the sizes and directions of the wrapper's units, never from ports.

A wrapper without padding hands each OpenVPN write to the wire as one unit of its own: a TLS record (RFC
8446 §5.2: the write plus a fixed AEAD overhead known from the ServerHello's suite), or a Shadowsocks AEAD
write (SIP004: the write plus a 34-byte chunk overhead). So the OpenVPN control channel's handshake keeps
its shape (Xue et al., USENIX Security 2022: tunnel-wrapped OpenVPN leaks its ACK pattern; Xue et al.,
USENIX Security 2024: the inner handshake's record sizes and directions show through an outer TLS). The
handshake, in inner sizes, after the wrapper's own handshake:

1. client: hard reset, small (below SMALL bytes);
2. server: hard reset, small (TLS 1.3 session tickets may come before or after it); through TLS exactly
   ACK_ENTRY bytes longer than the client's (it acknowledges the client's reset: one ACK id and the
   client's session ID), so a tls-crypt-v2 reset (the wrapped key makes it long) is not recognised in TLS;
3. client: P_CONTROL_V1 carrying the inner TLS ClientHello (HELLO_MIN..HELLO_MAX bytes);
4. server: the next unit is a full control-channel fragment of F bytes (FRAGMENT_MIN..FRAGMENT_MAX:
   OpenVPN cuts its TLS flight at --tls-mtu, 1250 by default, into packets of one size);
5. client: the next unit is small (its P_ACK_V1 for that fragment); through a fully encrypted proxy,
   whose first writes hide the resets' sizes behind salt and address, it must also be the size of the
   server's reset less a salt (both carry the same ACK array: lab OpenVPN 2.6, every control wrapping);
6. client, within FOLLOW units: a fragment of exactly F bytes (its certificate flight, cut at the same
   tls-mtu by the same rule).

Ordinary TLS does not do this: HTTP/1.1 and HTTP/2 send a request then answers of the server's record
sizes, and a client record of exactly the size of the server's first full record, after a small
acknowledgement-sized record, is a coincidence the negatives never show. The label is `openvpn` with
attribute `wrapped` = `tls` (the outer handshake was TLS) or `fully_encrypted` (random from the first byte:
Shadowsocks and look-alikes; which one the sizes cannot say), and the `wrapped_tunnel` risk.

What is not recognised: obfs4 (its random padding of the handshake and of every frame erases the sizes),
wrappers with CBC suites (no fixed record overhead is needed, but the sizes round up to blocks: left out),
a capture that starts after the handshake, and OpenVPN over UDP (nothing wraps UDP this way).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from vpnid.features.dissectors.base import Dissector, FlowPacket, PacketHeads, State
from vpnid.features.dissectors.cstp import (
    CONTENT_APPLICATION_DATA,
    CONTENT_HANDSHAKE,
    TLS13_SUITES,
    RecordWalker,
    record_overhead,
    server_hello_suite,
)
from vpnid.features.dissectors.shadowsocks import CHUNK_OVERHEAD, FULL_SEGMENT, MIN_CLIENT_FIRST, Shadowsocks, exemption
from vpnid.features.families import OPENVPN
from vpnid.features.packets import IPPROTO_TCP
from vpnid.features.risks import OBFUSCATED, WRAPPED_TUNNEL

CLIENT_HELLO = 1
SMALL = 200  # hard resets and P_ACK_V1 (with a few ACK ids) over TCP, under any control-channel wrapping
HELLO_MIN, HELLO_MAX = 150, 800  # P_CONTROL_V1 + an inner TLS ClientHello (with tls-crypt-v2's key: more)
FRAGMENT_MIN, FRAGMENT_MAX = 900, 1500  # --tls-mtu fragments (default 1250, less the control header)
ACK_ENTRY = 4 + 8  # the server's hard reset = the client's + one ACK id and the remote session ID (reliable.h)
SALTS = (16, 24, 32)  # a fully encrypted proxy's first server write also holds its salt (SIP004 key sizes)
MAX_SALT = max(SALTS)
FOLLOW = 6  # units after the client's ACK within which the client's own fragment must come
UNITS = 24  # inner units looked at before giving up
TLS_WRAPPER, FULLY_ENCRYPTED_WRAPPER = "tls", "fully_encrypted"


class OpenVPNWrapped(Dissector):
    """TCP OpenVPN's control-channel handshake, seen as unit sizes through a TLS or fully encrypted wrapper."""

    family: ClassVar[str] = OPENVPN
    transports: ClassVar[frozenset[int]] = frozenset({IPPROTO_TCP})
    budget: ClassVar[int] = 48
    feature_state: ClassVar[bool] = False  # came after feature schema v1

    @staticmethod
    def prefilter(p: PacketHeads) -> np.ndarray:
        """The opening client segment of a connection seen to open: a TLS handshake record holding a
        ClientHello, or what the Shadowsocks prefilter passes (the fully encrypted first segments)."""
        hello = (p.u8(0) == CONTENT_HANDSHAKE) & (p.u8(1) == 3) & (p.u8(5) == CLIENT_HELLO)
        return ((p.proto == IPPROTO_TCP) & p.opened & (p.direction == 0) & hello) | Shadowsocks.prefilter(p)

    def __init__(self) -> None:
        super().__init__()
        self._wrapper = ""
        self._walkers = (RecordWalker(), RecordWalker())
        self._overhead = 0
        self._tls13 = False
        self._skip = [0, 0]  # TLS 1.3: the client's Finished, the server's encrypted handshake records
        self._last = [0, 0]  # fully encrypted: the size of each direction's last segment
        self._units: list[tuple[int, int]] = []  # (direction, inner size), in order

    def on_packet(self, pkt: FlowPacket) -> None:
        d, p = pkt.direction, pkt.payload
        if self.seen == 1:
            self._open(pkt)
            if self.state is not State.CANDIDATE:
                return
        if self._wrapper == TLS_WRAPPER:
            self._tls(pkt)
        else:
            self._write(d, len(p))
        if self.state is State.CANDIDATE:
            self._match(pkt)

    def _open(self, pkt: FlowPacket) -> None:
        p = pkt.payload
        if not pkt.opened or pkt.direction != 0:
            self.reject("the connection's opening client segment was not seen")
        elif p[:2] == bytes([CONTENT_HANDSHAKE, 3]) and p[5:6] == bytes([CLIENT_HELLO]):
            self._wrapper = TLS_WRAPPER
        elif len(p) >= MIN_CLIENT_FIRST and exemption(p) is None:
            self._wrapper = FULLY_ENCRYPTED_WRAPPER
        else:
            self.reject("opens with neither a TLS ClientHello nor a fully encrypted segment")

    def _tls(self, pkt: FlowPacket) -> None:
        d = pkt.direction
        records = self._walkers[d].push(pkt.tcp_seq, pkt.payload)
        if records is None:
            self.reject("the stream is not a sequence of TLS records")
            return
        for content, size, head in records:
            if d == 1 and content == CONTENT_HANDSHAKE and not self._overhead:
                suite = server_hello_suite(head)
                overhead = None if suite is None else record_overhead(suite)
                if overhead is None:
                    self.reject("no ServerHello with an AEAD suite (fixed per-record overhead)")
                    return
                self._overhead, self._tls13 = overhead, suite in TLS13_SUITES
                self._skip = [1, 0] if self._tls13 else [0, 0]
            elif content == CONTENT_APPLICATION_DATA and self._overhead:
                if self._tls13 and d == 1 and self._skip[0]:
                    continue  # the server's encrypted handshake, before the client's Finished
                if self._skip[d]:
                    self._skip[d] -= 1
                    continue
                self._units.append((d, size - self._overhead))

    def _write(self, d: int, n: int) -> None:
        """A fully encrypted wrapper's segments as writes: a segment continues the previous write of its
        direction when that one filled a segment."""
        if self._last[d] >= FULL_SEGMENT and self._units and self._units[-1][0] == d:
            self._units[-1] = (d, self._units[-1][1] + n)
        elif self._last[d]:  # each direction's first write holds the salt and (client) the address as well
            self._units.append((d, n - CHUNK_OVERHEAD))
        else:
            self._units.append((d, n))
        self._last[d] = n

    def _match(self, pkt: FlowPacket) -> None:
        """Steps 1-6 of the module docstring, on the units so far; reject once they cannot hold."""
        u = self._units
        if len(u) >= UNITS:
            self.reject(f"{UNITS} wrapper units without TCP OpenVPN's control-channel handshake shape")
            return
        client = [i for i, (d, _) in enumerate(u) if d == 0]
        if not client:
            return
        if self._wrapper == TLS_WRAPPER and u[client[0]][1] >= SMALL:  # a proxy's first write adds salt, address
            self.reject(f"the first inner client unit ({u[client[0]][1]} bytes) is no OpenVPN hard reset")
            return
        if len(client) < 2:
            return
        c1, c2 = client[0], client[1]
        resets = [n for d, n in u[c1 + 1 : c2] if d == 1 and n < SMALL + MAX_SALT]
        if self._wrapper == TLS_WRAPPER and u[c1][1] + ACK_ENTRY not in resets:
            self.reject(f"no server unit of the client's first unit + {ACK_ENTRY} bytes (a hard reset that "
                        "acknowledges the client's) before the client's second unit")
            return
        if not resets:
            self.reject("no small server unit (hard reset) before the client's second unit")
            return
        if not HELLO_MIN <= u[c2][1] <= HELLO_MAX:
            self.reject(f"the client's second unit ({u[c2][1]} bytes) does not fit a control packet with a "
                        "TLS ClientHello")
            return
        if len(u) <= c2 + 2:
            return
        (ds, frag), (da, ack) = u[c2 + 1], u[c2 + 2]
        if ds != 1 or not FRAGMENT_MIN <= frag <= FRAGMENT_MAX or da != 0 or ack >= SMALL:
            self.reject("the ClientHello is not answered by a full control fragment and a small client ACK")
            return
        if self._wrapper == FULLY_ENCRYPTED_WRAPPER and not any(ack + CHUNK_OVERHEAD + salt in resets for salt in SALTS):
            self.reject(f"the client's ACK ({ack} B) is not the size of the server's hard reset (less its salt)")
            return
        later = u[c2 + 3 : c2 + 3 + FOLLOW]
        if (0, frag) in later:
            self.attributes["wrapped"] = self._wrapper
            self.raise_risk(WRAPPED_TUNNEL)
            if self._wrapper == FULLY_ENCRYPTED_WRAPPER:
                self.raise_risk(OBFUSCATED)
            where = (f"TLS records less the suite's {self._overhead}-byte overhead" if self._wrapper == TLS_WRAPPER
                     else f"writes less a {CHUNK_OVERHEAD}-byte AEAD chunk overhead, first segments fully encrypted")
            self.confirm(pkt, 0.7, f"wrapped={self._wrapper}; inside {where}: client hard reset, server hard reset, "
                                   f"client ClientHello control packet ({u[c2][1]} B), server {frag}-byte "
                                   f"control fragment, client ACK ({ack} B), client {frag}-byte fragment "
                                   "(TCP OpenVPN's control-channel handshake through a wrapper)")
        elif len(later) == FOLLOW:
            self.reject(f"no client fragment of the server's {frag} bytes within {FOLLOW} units")
