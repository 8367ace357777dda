"""The bundled demo lease log, `sample_leases.csv` (DHCP layout): the lab client 198.18.0.1 changes hands
during the lab captures (2026-11-28, 23:11-23:24 UTC), from lab-alice to lab-bob at 23:17, so `vpnid
demo` attributes tunnels to two subscribers and registers lab-bob's IKE by subscriber (LAB-0008 of the
sample registry). Package data, found like the sample registry."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PATH = Path(str(files(__package__) / "sample_leases.csv"))
KIND = "dhcp"
