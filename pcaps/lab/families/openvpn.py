"""OpenVPN 2.6: UDP and TCP, each with plain TLS, tls-auth, tls-crypt and tls-crypt-v2.

The eight variants also spread two data ciphers and the ports 1194, 443, 53 and
an arbitrary high port over the matrix, so no dimension is tied to another.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from vpnid.pcaps.lab.config import render
from vpnid.pcaps.lab.netns import SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

INNER_SERVER = "198.19.1.1"
HIGH_PORT = 37519  # arbitrary, away from every well-known VPN port
READY = "Initialization Sequence Completed"


def _keys(d: Path) -> dict[str, tuple[str, str]]:
    """Server and client lines for each control-channel protection mode."""
    d.mkdir(parents=True, exist_ok=True)
    ovpn = ["openvpn", "--genkey"]
    subprocess.run([*ovpn, "secret", str(d / "ta.key")], check=True, capture_output=True)
    subprocess.run([*ovpn, "tls-crypt-v2-server", str(d / "v2s.key")], check=True, capture_output=True)
    subprocess.run(["openvpn", "--tls-crypt-v2", str(d / "v2s.key"), "--genkey", "tls-crypt-v2-client",
                    str(d / "v2c.key")], check=True, capture_output=True)
    return {
        "plain": ("", ""),
        "tlsauth": (f"tls-auth {d}/ta.key 0", f"tls-auth {d}/ta.key 1"),
        "tlscrypt": (f"tls-crypt {d}/ta.key", f"tls-crypt {d}/ta.key"),
        "tlscryptv2": (f"tls-crypt-v2 {d}/v2s.key", f"tls-crypt-v2 {d}/v2c.key"),
    }


def drive(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    run(lab, pki, v, scale, (SERVER_IP, v.server_port), (SERVER_IP, v.server_port))


def run(lab: Lab, pki: Pki, v: Variant, scale: int, listen: tuple[str, int], remote: tuple[str, int],
        *client_lines: str) -> None:
    """Server on ``listen`` in namespace b, client (with extra config lines) to ``remote`` from namespace a,
    the plan through the tunnel. A wrapper may sit in between (openvpn_wrapped)."""
    d = lab.workdir / v.name
    server_tls, client_tls = _keys(d)[v.opts["tls"]]
    common = dict(ca=pki.crt("ca"), cipher=v.opts["cipher"])
    proto = v.transport
    srv = render("openvpn-server.conf", d / "server.conf", proto="tcp-server" if proto == "tcp" else "udp",
                 server_ip=listen[0], port=listen[1], cert=pki.crt("server"), key=pki.key("server"), tls=server_tls,
                 **common)
    cli = render("openvpn-client.conf", d / "client.conf", proto="tcp-client" if proto == "tcp" else "udp",
                 server_ip=remote[0], port=remote[1], cert=pki.crt("client"), key=pki.key("client"),
                 tls="\n".join((client_tls, *client_lines)), **common)
    lab.spawn("b", f"{v.name}-server", "openvpn", "--config", str(srv))
    lab.wait_log(f"{v.name}-server", READY)
    lab.traffic_server(INNER_SERVER)
    client = lab.spawn("a", f"{v.name}-client", "openvpn", "--config", str(cli))
    lab.wait_log(f"{v.name}-client", READY)
    lab.traffic(INNER_SERVER, v.plan(v.opts["plan"], scale), v.seed)
    lab.stop(client)


def _variant(proto: str, tls: str, cipher: str, port: int, plan: str, seconds: int) -> Variant:
    tag = "high" if port == HIGH_PORT else str(port)
    return Variant(
        name=f"openvpn-{proto}-{tls}-{tag}", family="openvpn", package="openvpn", transport=proto, server_port=port,
        config=f"{proto} {tls} data-ciphers={cipher} keepalive=10/60 ECDSA-P256 certs", drive=drive,
        opts=dict(tls=tls, cipher=cipher, plan=plan), seconds=seconds, needs=("openvpn",))


VARIANTS = [
    _variant("udp", "plain", "AES-256-GCM", 1194, "interactive:6,bulk:250000,idle:12,voice:4", 32),
    _variant("udp", "tlsauth", "CHACHA20-POLY1305", 443, "web:3,idle:8,interactive:5", 35),
    _variant("udp", "tlscrypt", "AES-256-GCM", 53, "voice:8,idle:22,voice:3", 40),
    _variant("udp", "tlscryptv2", "CHACHA20-POLY1305", HIGH_PORT, "bulk:300000,web:2,interactive:4", 25),
    _variant("tcp", "plain", "CHACHA20-POLY1305", 443, "web:3,bulk:200000,idle:5", 28),
    _variant("tcp", "tlsauth", "AES-256-GCM", 1194, "interactive:10,idle:12,bulk:150000", 32),
    _variant("tcp", "tlscrypt", "CHACHA20-POLY1305", HIGH_PORT, "voice:5,interactive:5,web:2", 28),
    _variant("tcp", "tlscryptv2", "AES-256-GCM", 53, "bulk:250000,idle:15,web:2", 32),
]
