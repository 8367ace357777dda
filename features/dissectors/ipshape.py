"""Tunnels that carry one IP packet per record betray it through the record lengths.

With an AEAD cipher a record's plaintext length is its length minus a fixed overhead, so when a tunnel
puts one IP packet behind a small fixed header in each record, the inner packet's length is exact. A
tunnel carrying TCP is full of pure ACKs (IPv4 40 or 52 bytes with timestamps, IPv6 60 or 72), and
keepalives / dead-peer detection are bare headers (inner length 0). In one direction, a run of records
with those inner lengths making up most of that direction's records marks a tunnel; protocols that
frame their own messages (HTTP/1 text, HTTP/2's 9-byte frame headers, WebRTC data channels) do not
produce that run. A tunnel joined mid-flow may first carry something else (a call's media, a bulk
download's data), so the run also counts when it fills the last WINDOW records of a direction.
"""

from __future__ import annotations

from collections import Counter, deque

SHAPED = frozenset({0, 40, 52, 60, 72})  # bare tunnel header; pure TCP ACK over IPv4 / IPv6, with or without timestamps
MIN_SHAPED = 8  # tunnel-shaped records in one direction needed
MIN_SHARE = 0.6  # ... and at least this share of that direction's records (or of its last WINDOW)
WINDOW = 2 * MIN_SHAPED


class InnerSizes:
    """Per direction: records counted, the tunnel-shaped inner lengths among them, and the inner
    lengths of the last WINDOW records. The shaped totals (all records, last WINDOW) are kept as running
    counts: `add` runs once per record of every candidate flow, and builds evidence only when it fires."""

    __slots__ = ("records", "shaped", "recent", "_shaped", "_recent_shaped")

    def __init__(self) -> None:
        self.records = [0, 0]
        self.shaped: list[Counter[int]] = [Counter(), Counter()]
        self.recent: tuple[deque[int], deque[int]] = (deque(maxlen=WINDOW), deque(maxlen=WINDOW))
        self._shaped = [0, 0]  # sum(self.shaped[d].values())
        self._recent_shaped = [0, 0]  # shaped lengths among self.recent[d]

    def add(self, direction: int, inner: int) -> str | None:
        """Count one record; returns the evidence once `direction` shows the tunnel's run, else None."""
        self.records[direction] += 1
        recent = self.recent[direction]
        if len(recent) == WINDOW and recent[0] in SHAPED:  # about to leave the window
            self._recent_shaped[direction] -= 1
        recent.append(inner)
        if inner in SHAPED:
            self.shaped[direction][inner] += 1
            self._shaped[direction] += 1
            self._recent_shaped[direction] += 1
        side = "initiator" if direction == 0 else "responder"
        shaped = self._shaped[direction]
        if shaped >= MIN_SHAPED and shaped >= MIN_SHARE * self.records[direction]:
            sizes = ", ".join(f"{n}× {s}" for s, n in self.shaped[direction].most_common())
            return (f"inner sizes {sizes} bytes (bare tunnel headers and pure TCP ACKs) in {shaped} of "
                    f"{self.records[direction]} records from the {side}")
        run = self._recent_shaped[direction]
        if self.records[direction] <= WINDOW or run < MIN_SHARE * WINDOW:
            return None
        counts = Counter(n for n in recent if n in SHAPED)
        sizes = ", ".join(f"{n}× {s}" for s, n in counts.most_common())
        return (f"inner sizes {sizes} bytes (bare tunnel headers and pure TCP ACKs) in {run} of the last "
                f"{WINDOW} of {self.records[direction]} records from the {side}")
