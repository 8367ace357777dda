"""Which system packages the lab needs, which are missing, and installing them with apt."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from typing import Iterable

from vpnid.pcaps.lab.variant import Variant

BASE_PACKAGES = ("iproute2", "iputils-ping", "ethtool", "tcpdump", "openssl")
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]  # other processes may hold the dpkg lock


def installed(package: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", package], capture_output=True, text=True,
                       check=False)
    return r.stdout == "installed"


def version(package: str) -> str:
    """The Debian package's version, else the Python distribution's (aioquic comes from PyPI)."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    if r.stdout:
        return r.stdout
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def needed(variants: Iterable[Variant]) -> tuple[list[str], list[str]]:
    """(Debian packages, Python modules) the given variants need."""
    debs, mods = list(BASE_PACKAGES), []
    for v in variants:
        debs += [p for p in v.needs if p not in debs]
        mods += [m for m in v.modules if m not in mods]
    return debs, mods


def missing(variants: Iterable[Variant]) -> tuple[list[str], list[str]]:
    debs, mods = needed(variants)
    return [p for p in debs if not installed(p)], [m for m in mods if importlib.util.find_spec(m) is None]


def install(debs: list[str], mods: list[str]) -> None:
    """apt for daemons and tools; pip (into this interpreter) for the QUIC library, which Debian 12 lacks."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if debs:
        subprocess.run([*APT, "update", "-q"], check=True, env=env)
        subprocess.run([*APT, "install", "-y", "-q", "--no-install-recommends", *debs], check=True, env=env)
    if mods:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *mods], check=True)
