"""All variants, in the order a full lab run makes them."""
from __future__ import annotations

from vpnid.pcaps.lab.families import (
    ipsec,
    l2tp,
    negatives,
    negatives_apps,
    openconnect,
    openvpn,
    openvpn_wrapped,
    pptp,
    shadowsocks,
    wireguard,
)
from vpnid.pcaps.lab.variant import Variant

VARIANTS: list[Variant] = [
    *openvpn.VARIANTS, *openvpn_wrapped.VARIANTS, *wireguard.VARIANTS, *ipsec.VARIANTS, *openconnect.VARIANTS,
    *shadowsocks.VARIANTS, *pptp.VARIANTS, *l2tp.VARIANTS, *negatives.VARIANTS,
    *negatives_apps.VARIANTS,
]


def select(only: str | None) -> list[Variant]:
    """Variants named in a comma list; a family name or a name prefix selects several."""
    if not only:
        return list(VARIANTS)
    chosen: list[Variant] = []
    for want in only.split(","):
        hits = [v for v in VARIANTS if v.name == want or v.family == want or v.name.startswith(want)]
        if not hits:
            raise SystemExit(f"unknown variant {want!r}; see --list")
        chosen += [v for v in hits if v not in chosen]
    return chosen
