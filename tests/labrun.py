"""What the ``lab`` tests share: whether this machine can run the lab, and one PKI per test module."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import pytest

from vpnid.pcaps.lab import system
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant


def skip_reason(variants: Iterable[Variant]) -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces, TUN devices and tcpdump"
    debs, mods = system.missing(variants)
    if debs or mods:
        return f"lab packages missing: {' '.join(debs + mods)} (vpnid lab --install)"
    return None


def pki_fixture(variants: list[Variant]) -> Callable:
    """A module-scoped ``pki`` fixture that skips, with the reason, where ``variants`` cannot run."""

    @pytest.fixture(scope="module")
    def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
        if reason := skip_reason(variants):
            pytest.skip(reason)
        return Pki.create(tmp_path_factory.mktemp("pki"))

    return pki
