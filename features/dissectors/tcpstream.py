"""One direction of a TCP stream, in order, for dissectors that cut it into their own units.

OpenVPN's length-prefixed packets and TLS records run across segment boundaries, so their dissectors
buffer the bytes a receiver would deliver. Retransmitted bytes are dropped by sequence number; after a
gap (a segment lost or not captured) the unit boundaries can no longer be trusted, and the stream goes
quiet for good rather than guess.
"""

from __future__ import annotations

from typing import ClassVar

SEQ_MOD = 1 << 32  # TCP sequence numbers wrap (RFC 9293 section 3.4)


class InOrderStream:
    """Buffered in-order bytes of one direction; subclasses consume `buf` unit by unit."""

    __slots__ = ("next_seq", "buf", "broken")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.buf = bytearray()
        self.broken = False

    def append(self, seq: int, data: bytes) -> bool:
        """Add one segment's new bytes to `buf`; False once a gap has broken the stream."""
        if self.broken:
            return False
        if self.next_seq is not None:
            ahead = (seq - self.next_seq) % SEQ_MOD
            if ahead >= SEQ_MOD // 2:  # starts before what we have: a retransmission, maybe with new bytes
                data = data[(self.next_seq - seq) % SEQ_MOD :]
                seq = self.next_seq
            elif ahead:
                self.broken = True
                return False
        self.next_seq = (seq + len(data)) % SEQ_MOD
        self.buf += data
        return True


class LengthFramed(InOrderStream):
    """A stream of messages that each start with a 16-bit big-endian length. `LENGTH_IS_TOTAL`: the length
    counts the whole message, itself included (PPTP); else it counts the bytes after it, which are the
    message (OpenVPN over TCP). A length below `MIN_LENGTH` means the stream is out of step: nothing more
    is cut from it."""

    __slots__ = ()
    LENGTH_IS_TOTAL: ClassVar[bool] = False
    MIN_LENGTH: ClassVar[int] = 0

    def push(self, seq: int, data: bytes) -> list[bytes]:
        """Add one segment; returns the messages it completed."""
        if not self.append(seq, data):
            return []
        skip = 0 if self.LENGTH_IS_TOTAL else 2
        out = []
        while len(self.buf) >= 2:
            size = int.from_bytes(self.buf[:2], "big")
            end = skip + size
            if size < self.MIN_LENGTH or len(self.buf) < end:
                break
            out.append(bytes(self.buf[skip:end]))
            del self.buf[:end]
        return out
