"""Per-direction (key, counter) bookkeeping shared by the record-layer rules of ESP and WireGuard.

Both protocols stamp every data packet with a key that stays constant for a session (ESP SPI, WireGuard
receiver index) and a counter that the sender increments by exactly one per packet (RFC 4303 §3.3.3;
WireGuard whitepaper §5.4.6). Look-alikes break one half of that: RTP and QUIC short headers have no
stable key in those bytes or no counter next to it, and a game header's "counter" field rarely steps by one
in each direction independently while the key differs per direction.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CounterTrack:
    """One direction of a flow: the current key and how its counter has moved so far."""

    key: int | None = None
    last: int = 0
    packets: int = 0
    steps_of_one: int = 0
    other_steps: int = 0

    def start(self, key: int, counter: int) -> None:
        """Begin a new key (first packet of the direction, or a rekeyed SA)."""
        self.key, self.last, self.packets, self.steps_of_one, self.other_steps = key, counter, 1, 0, 0

    def step(self, counter: int) -> None:
        """Record one more packet under the current key; loss and reordering count as other steps."""
        self.packets += 1
        if counter == self.last + 1:
            self.steps_of_one += 1
        else:
            self.other_steps += 1
        self.last = max(self.last, counter)

    @property
    def erratic(self) -> bool:
        """The counter mostly does not step by one: not a sender-side packet counter."""
        return self.other_steps >= 2 and self.other_steps > self.steps_of_one

    def steady(self, min_packets: int) -> bool:
        """At least `min_packets - 1` steps of exactly one under the current key, and at least twice as
        many as other steps (a little loss or reordering is tolerated)."""
        return self.steps_of_one >= max(min_packets - 1, 2 * self.other_steps)
