"""Tunnels that carry one IP packet per record betray it through the record lengths.

With an AEAD cipher a record's plaintext length is its length minus a fixed overhead, so when a tunnel
puts one IP packet behind a small fixed header in each record, the inner packet's length is exact. A
tunnel carrying TCP is full of pure ACKs (IPv4 40 or 52 bytes with timestamps, IPv6 60 or 72), and
keepalives / dead-peer detection are bare headers (inner length 0). In one direction, a run of records
with those inner lengths making up most of that direction's records marks a tunnel; protocols that
frame their own messages (HTTP/1 text, HTTP/2's 9-byte frame headers, WebRTC data channels) do not
produce that run. A tunnel joined mid-flow may first carry something else (a call's media, a bulk
download's data), so the run also counts when it fills the last WINDOW records of a direction.

Joined mid-flow, the framing is a guess, and two tunnels' framings can fit the same records: offsets that
differ by the gap between two ACK sizes (12, 20 bytes) read one ACK size as another (`Readings`). The
reading that explains a flow is the one whose ACKs are the smallest packets of their TCP connection: a
shifted reading puts the real ACKs, or the real one-byte data segments, just below its own ACK size, in a
band where a TCP connection with that ACK size has no packet.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import njit

ACK_SIZES = frozenset({40, 52, 60, 72})  # pure TCP ACK over IPv4 / IPv6, without or with timestamps
SHAPED = ACK_SIZES | {0}  # ... and a bare tunnel header (keepalive, dead-peer detection)
MIN_SHAPED = 8  # tunnel-shaped records in one direction needed
MIN_SHARE = 0.6  # ... and at least this share of that direction's records (or of its last WINDOW)
WINDOW = 2 * MIN_SHAPED
BAND = 11  # inner sizes this far below a reading's ACK size: no packet of a TCP connection with that ACK size
LEAD = 2  # a reading names its family when it explains this many times the records of any other family's


class InnerSizes:
    """Per direction: records counted, the tunnel-shaped inner lengths among them, and the inner
    lengths of the last WINDOW records. The shaped totals (all records, last WINDOW) are kept as running
    counts: `add` runs once per record of every candidate flow, and builds evidence only when it fires."""

    __slots__ = ("records", "shaped", "recent", "_shaped", "_recent_shaped", "_sizes")

    def __init__(self, sizes: frozenset[int] = SHAPED) -> None:
        self._sizes = sizes  # the inner lengths that are tunnel-shaped for this framing
        self.records = [0, 0]
        self.shaped: list[Counter[int]] = [Counter(), Counter()]
        self.recent: tuple[deque[int], deque[int]] = (deque(maxlen=WINDOW), deque(maxlen=WINDOW))
        self._shaped = [0, 0]  # sum(self.shaped[d].values())
        self._recent_shaped = [0, 0]  # shaped lengths among self.recent[d]

    def add(self, direction: int, inner: int) -> str | None:
        """Count one record; returns the evidence once `direction` shows the tunnel's run, else None."""
        self.records[direction] += 1
        recent = self.recent[direction]
        if len(recent) == WINDOW and recent[0] in self._sizes:  # about to leave the window
            self._recent_shaped[direction] -= 1
        recent.append(inner)
        if inner in self._sizes:
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
        counts = Counter(n for n in recent if n in self._sizes)
        sizes = ", ".join(f"{n}× {s}" for s, n in counts.most_common())
        return (f"inner sizes {sizes} bytes (bare tunnel headers and pure TCP ACKs) in {run} of the last "
                f"{WINDOW} of {self.records[direction]} records from the {side}")

    # One direction's counts as a compiled stage keeps them (`pack`, `unpack`, `add_packed`): an int64 row of
    # PACKED_FIXED + 2 * len(sizes) slots: records, shaped, shaped among the recent, how many recent, the
    # recent inner lengths (oldest first), then per tunnel-shaped length (ascending) its count and the
    # order in which it first appeared (-1: not yet), which keeps `shaped`'s order of insertion (evidence
    # lists equal counts in that order).

    def pack(self, direction: int, row: np.ndarray) -> None:
        """Write `direction`'s counts into `row`, zeros (see above)."""
        recent, shaped = self.recent[direction], self.shaped[direction]
        row[:RECENT] = self.records[direction], self._shaped[direction], self._recent_shaped[direction], len(recent)
        row[RECENT : RECENT + len(recent)] = recent
        k = len(self._sizes)
        row[PACKED_FIXED + k : PACKED_FIXED + 2 * k] = -1
        if shaped:
            slot = sorted(self._sizes).index
            for first, (s, n) in enumerate(shaped.items()):
                row[PACKED_FIXED + slot(s)], row[PACKED_FIXED + k + slot(s)] = n, first

    def unpack(self, direction: int, row: np.ndarray) -> None:
        """Take `direction`'s counts back from a row `pack` made and a compiled stage advanced."""
        values = row.tolist()
        k = len(self._sizes)
        self.records[direction], self._shaped[direction], self._recent_shaped[direction], n = values[:RECENT]
        self.recent[direction].clear()
        self.recent[direction].extend(values[RECENT : RECENT + n])
        counts, first = values[PACKED_FIXED : PACKED_FIXED + k], values[PACKED_FIXED + k : PACKED_FIXED + 2 * k]
        seen = sorted((f, s, c) for f, s, c in zip(first, sorted(self._sizes), counts) if f >= 0)
        self.shaped[direction] = Counter({s: c for _, s, c in seen})


RECORDS, SHAPED_ALL, RECENT_SHAPED, RECENT_LEN = range(4)  # slots of an `InnerSizes.pack` row
RECENT = 4
PACKED_FIXED = RECENT + WINDOW


@njit(cache=True, nogil=True)
def add_packed(row: np.ndarray, base: int, sizes: np.ndarray, inner: int) -> bool:  # pragma: no cover - compiled
    """`InnerSizes.add` on a packed row at `row[base:]` (`sizes`: the tunnel-shaped lengths, ascending):
    count one record; True where `add` would return its evidence."""
    k = len(sizes)
    slot = -1
    for j in range(k):
        if sizes[j] == inner:
            slot = j
    row[base + RECORDS] += 1
    n = row[base + RECENT_LEN]
    if n == WINDOW:
        oldest = row[base + RECENT]
        for j in range(k):
            if sizes[j] == oldest:
                row[base + RECENT_SHAPED] -= 1
        for j in range(WINDOW - 1):
            row[base + RECENT + j] = row[base + RECENT + j + 1]
        row[base + RECENT + WINDOW - 1] = inner
    else:
        row[base + RECENT + n] = inner
        row[base + RECENT_LEN] = n + 1
    if slot >= 0:
        if row[base + PACKED_FIXED + slot] == 0:
            present = 0
            for j in range(k):
                present += row[base + PACKED_FIXED + k + j] >= 0
            row[base + PACKED_FIXED + k + slot] = present
        row[base + PACKED_FIXED + slot] += 1
        row[base + SHAPED_ALL] += 1
        row[base + RECENT_SHAPED] += 1
    records, shaped = row[base + RECORDS], row[base + SHAPED_ALL]
    if shaped >= MIN_SHAPED and shaped >= MIN_SHARE * records:
        return True
    return records > WINDOW and row[base + RECENT_SHAPED] >= MIN_SHARE * WINDOW


class Reading(NamedTuple):
    """One guess at how a flow's units wrap an IP packet: `family`'s framing (`framing` bytes) inside a
    wrapper that adds `wrapper` bytes per unit (a TLS record's AEAD overhead, a proxy's chunk overhead)."""

    family: str
    wrapper: int
    framing: int

    @property
    def offset(self) -> int:
        return self.wrapper + self.framing


class Readings:
    """One flow's units under several `Reading`s at once, each with the inner sizes its tunnel shows; `add`
    names a reading once it has its run and explains the flow better than every other family's reading."""

    __slots__ = ("_readings", "_sizes", "units")

    def __init__(self, readings: dict[Reading, frozenset[int]]) -> None:
        self._readings = readings
        self._sizes: dict[Reading, InnerSizes] | None = None  # built at the first need: many flows give no unit
        self.units: tuple[Counter[int], Counter[int]] = (Counter(), Counter())  # unit sizes per direction

    @property
    def sizes(self) -> dict[Reading, InnerSizes]:
        """Each reading's inner sizes."""
        if self._sizes is None:
            self._sizes = {r: InnerSizes(shaped) for r, shaped in self._readings.items()}
        return self._sizes

    @property
    def records(self) -> int:
        """Units counted (every reading counts the same)."""
        return sum(next(iter(self.sizes.values())).records)

    def keep(self, which: Callable[[Reading], bool]) -> None:
        """Drop the readings that other evidence (a TLS 1.2 explicit nonce, say) rules out."""
        self._sizes = {r: s for r, s in self.sizes.items() if which(r)}

    def add(self, direction: int, unit: int) -> tuple[Reading, str] | None:
        """Count one unit; returns the reading that has its run and leads, with the run's evidence."""
        self.units[direction][unit] += 1
        fired = {r: run for r, sizes in self.sizes.items() if (run := sizes.add(direction, unit - r.offset))}
        if not fired:
            return None
        score = {r: self.explained(r) for r in self.sizes}
        best = max(fired, key=score.__getitem__)
        rival = max((s for r, s in score.items() if r.family != best.family), default=0)
        return (best, fired[best]) if score[best] > 0 and score[best] >= LEAD * max(rival, 0) else None

    def explained(self, r: Reading) -> int:
        """Tunnel-shaped units under `r`, less the units in the BAND below its commonest ACK size."""
        shaped = self.sizes[r].shaped[0] + self.sizes[r].shaped[1]
        ack = _commonest_ack(shaped)
        if ack is None:
            return sum(shaped.values())
        low = ack + r.offset - BAND
        return sum(shaped.values()) - sum(n for units in self.units for u, n in units.items() if low <= u < low + BAND)

    def answers(self, r: Reading, direction: int) -> int:
        """Units the other way that are larger than `direction`'s commonest ACK under `r`: the data those
        ACKs acknowledge. A tunnel's ACKs answer data; a protocol trading one message size both ways
        (heartbeats, a ping-pong) has none."""
        ack = _commonest_ack(self.sizes[r].shaped[direction])
        if ack is None:
            return 0
        return sum(n for u, n in self.units[1 - direction].items() if u > ack + r.offset)


def _commonest_ack(shaped: Counter[int]) -> int | None:
    acks = [(n, s) for s, n in shaped.items() if s in ACK_SIZES]
    return max(acks)[1] if acks else None
