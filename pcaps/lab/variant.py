"""What one capture is: its label, its software, its configuration, and how to drive it."""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vpnid.features.families import NONE, TUNNEL_FAMILIES

if TYPE_CHECKING:
    from vpnid.pcaps.lab.netns import Lab
    from vpnid.pcaps.lab.pki import Pki

FAMILIES = (*TUNNEL_FAMILIES, NONE)


@dataclass(frozen=True)
class Variant:
    """One labelled capture. ``drive`` runs inside an up Lab while the underlay is being captured."""

    name: str
    family: str
    package: str  # Debian package whose version goes into the manifest
    config: str  # one-line summary for the manifest
    transport: str  # udp | tcp | udp+tcp, of the tunnel's underlay
    server_port: int
    drive: Callable[["Lab", "Pki", "Variant", int], None]
    opts: Mapping[str, Any] = field(default_factory=dict)
    seconds: int = 20  # rough wall time at scale 1, for --list and the README
    needs: tuple[str, ...] = ()  # Debian packages beyond the lab's base set
    modules: tuple[str, ...] = ()  # Python modules (from PyPI) the drive imports in a helper
    recording: int = 0  # `vpnid lab --seed K`: 0 is the committed corpus's recording, K > 0 another one

    @property
    def seed(self) -> int:
        """Stable per variant and recording, so a re-run sends the same plan and roughly the same packets."""
        return zlib.crc32(self.name.encode()) + RECORDING_STRIDE * self.recording

    def plan(self, plan: str, scale: int) -> str:
        """What this recording drives through the tunnel for one of the variant's plans (see `scaled`)."""
        return scaled(plan, scale, self.recording)


# Plan variety for --scale N > 1 (training captures): every repetition after the first is the plan reshuffled,
# its durations and sizes stretched or shrunk, one more traffic kind added and the path MTU lowered, so a model
# trained on a scaled run sees several MTUs, mixes and session lengths per variant, not one plan N times.
VARIETY_MTUS = (1400, 1360, 1280)
VARIETY_EXTRA = ("idle:25", "bulk:400000", "interactive:8", "web:2", "idle:45")
VARIETY_STRETCH = (0.5, 2.0)
RECORDING_STRIDE = 1_000_003  # seeds of different recordings of one variant never meet


def scaled(plan: str, scale: int, recording: int = 0) -> str:
    """A longer capture for --scale N: the plan, then N-1 varied repetitions of it (scale 1 is the plan as is).
    Another recording (K > 0) varies every repetition, the first too, with choices of its own, so two
    recordings of a variant differ in MTU, mix, sizes and length, as two users of one configuration do."""
    rng = random.Random(zlib.crc32(plan.encode()) + RECORDING_STRIDE * recording)
    first = [] if recording else [plan]
    return ",".join([*first, *(_varied(plan, rng) for _ in range(scale - len(first)))])


def _varied(plan: str, rng: random.Random) -> str:
    items = [_stretched(item, rng) for item in plan.split(",")]
    kept_alive = {i.partition(":")[0] for i in items} <= {"keepalive", "idle"}
    # A plan of kept-alive connections only (Shadowsocks: each labelled by its exchanges) stays one.
    items.append(f"keepalive:{rng.randint(6, 12)}" if kept_alive else rng.choice(VARIETY_EXTRA))
    rng.shuffle(items)
    return ",".join([f"mtu:{rng.choice(VARIETY_MTUS)}", *items])


def _stretched(item: str, rng: random.Random) -> str:
    shape, _, arg = item.partition(":")
    value = max(1, round(float(arg) * rng.uniform(*VARIETY_STRETCH)))
    return f"{shape}:{value}"
