"""WireGuard with wireguard-go (this kernel has no WireGuard module): ports, keepalive, re-handshake."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vpnid.pcaps.lab.netns import SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

INNER = {"a": "198.19.2.1", "b": "198.19.2.2"}
UAPI = Path("/var/run/wireguard")  # shared by all namespaces, hence per-run interface names


def _keypair(d: Path, side: str) -> tuple[Path, str]:
    key = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    path = d / f"{side}.key"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(key)
    pub = subprocess.run(["wg", "pubkey"], input=key, capture_output=True, text=True, check=True).stdout.strip()
    return path, pub


def drive(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    d = lab.workdir / v.name
    d.mkdir(parents=True, exist_ok=True)
    keys = {side: _keypair(d, side) for side in "ab"}
    ifname = {side: f"wg{lab.tag}{side}" for side in "ab"}
    for side in "ab":
        lab.spawn(side, f"{v.name}-{side}", "wireguard-go", "-f", ifname[side])
        lab.wait_for((UAPI / f"{ifname[side]}.sock").exists, f"wireguard-go socket {ifname[side]}")
    port = str(v.server_port)
    lab.sh("b", "wg", "set", ifname["b"], "listen-port", port, "private-key", str(keys["b"][0]),
           "peer", keys["a"][1], "allowed-ips", f"{INNER['a']}/32")
    peer = ["peer", keys["b"][1], "endpoint", f"{SERVER_IP}:{port}", "allowed-ips", f"{INNER['b']}/32"]
    if v.opts.get("keepalive"):
        peer += ["persistent-keepalive", str(v.opts["keepalive"])]
    lab.sh("a", "wg", "set", ifname["a"], "private-key", str(keys["a"][0]), *peer)
    for side in "ab":
        lab.sh(side, "ip", "addr", "add", f"{INNER[side]}/24", "dev", ifname[side])
        lab.sh(side, "ip", "link", "set", ifname[side], "up")
    lab.traffic_server(INNER["b"])
    for i, plan in enumerate(v.opts["plans"]):
        if i:  # forced re-handshake: forget the peer's session, so the next packet starts a new handshake
            lab.sh("a", "wg", "set", ifname["a"], "peer", keys["b"][1], "remove")
            lab.sh("a", "wg", "set", ifname["a"], *peer)
        lab.traffic(INNER["b"], v.plan(plan, scale), v.seed + i)


def _variant(name: str, port: int, config: str, plans: tuple[str, ...], seconds: int, keepalive: int = 0) -> Variant:
    return Variant(name=f"wireguard-{name}", family="wireguard", package="wireguard-go", transport="udp",
                   server_port=port, config=config, drive=drive, seconds=seconds,
                   opts=dict(plans=plans, keepalive=keepalive), needs=("wireguard-go", "wireguard-tools"))


VARIANTS = [
    _variant("default-51820", 51820, "udp/51820 Curve25519 no keepalive", ("interactive:6,bulk:300000,voice:4",), 22),
    _variant("port-443", 443, "udp/443 (moved port)", ("web:3,voice:5,idle:8",), 30),
    _variant("keepalive", 51820, "persistent-keepalive=5, idle gaps up to 60 s, natural rekey after 120 s",
             ("voice:3,idle:30,interactive:4,idle:60,voice:2,idle:35",), 140, keepalive=5),
    _variant("rehandshake", 41820, "udp/41820 peer removed and re-added twice (forced new handshakes)",
             ("bulk:150000,interactive:3", "voice:4,idle:5", "web:2"), 30),
]
