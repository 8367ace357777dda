"""What one capture is: its label, its software, its configuration, and how to drive it."""
from __future__ import annotations

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

    @property
    def seed(self) -> int:
        """Stable per variant, so a re-run sends the same plan and roughly the same packets."""
        return zlib.crc32(self.name.encode())


def scaled(plan: str, scale: int) -> str:
    """A longer capture for --scale N: the same plan N times, as N successive sessions' worth of traffic."""
    return ",".join([plan] * scale)
