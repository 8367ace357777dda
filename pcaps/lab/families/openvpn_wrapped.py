"""TCP OpenVPN 2.6 behind a wrapper: in TLS (stunnel4), in obfs4 (obfs4proxy) and through Shadowsocks.

Each wrapper's client listens (or proxies) in namespace a and its server in namespace b hands the bytes
to an OpenVPN TCP server on b's loopback, so the underlay shows only the wrapper: TLS records, obfs4's
random-looking frames, or Shadowsocks AEAD chunks. The manifest family stays ``openvpn``.

obfs4proxy is a Tor pluggable transport and speaks only the managed-transport protocol (pt-spec): it is
configured by TOR_PT_* environment variables and reports its listener on stdout (SMETHOD / CMETHOD lines).
The client side is a SOCKS5 proxy whose username and password carry the bridge arguments (cert=...;
iat-mode=...), which OpenVPN's `socks-proxy` with an auth file supplies.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from vpnid.pcaps.lab.families import openvpn, shadowsocks
from vpnid.pcaps.lab.netns import SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

INNER_PORT = 1194  # the OpenVPN server behind each wrapper, on loopback of namespace b (and a, for stunnel)
LOOPBACK = "127.0.0.1"
INNER = (LOOPBACK, INNER_PORT)


def stunnel(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    d = lab.workdir / v.name
    d.mkdir(parents=True, exist_ok=True)
    common = "foreground = yes\npid =\nsyslog = no\ndebug = 5\n"
    server = d / "stunnel-server.conf"
    server.write_text(f"{common}[ovpn]\naccept = {SERVER_IP}:{v.server_port}\nconnect = {LOOPBACK}:{INNER_PORT}\n"
                      f"cert = {pki.crt('server')}\nkey = {pki.key('server')}\n")
    client = d / "stunnel-client.conf"
    client.write_text(f"{common}[ovpn]\nclient = yes\naccept = {LOOPBACK}:{INNER_PORT}\n"
                      f"connect = {SERVER_IP}:{v.server_port}\nCAfile = {pki.crt('ca')}\nverifyChain = yes\n"
                      "checkHost = server.lab\nsni = server.lab\n")
    for side, conf in (("b", server), ("a", client)):
        lab.spawn(side, f"{v.name}-{conf.stem}", "stunnel4", str(conf))
        lab.wait_log(f"{v.name}-{conf.stem}", "Configuration successful")
    openvpn.run(lab, pki, v, scale, INNER, INNER)


def _pt_env(state: Path) -> dict[str, str]:
    return {"TOR_PT_MANAGED_TRANSPORT_VER": "1", "TOR_PT_STATE_LOCATION": str(state)}


def obfs4(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    d = lab.workdir / v.name
    d.mkdir(parents=True, exist_ok=True)
    lab.spawn("b", f"{v.name}-obfs4-server", "obfs4proxy", env={
        **_pt_env(d / "obfs4-server"), "TOR_PT_SERVER_TRANSPORTS": "obfs4",
        "TOR_PT_SERVER_BINDADDR": f"obfs4-{SERVER_IP}:{v.server_port}", "TOR_PT_ORPORT": f"{LOOPBACK}:{INNER_PORT}",
        "TOR_PT_SERVER_TRANSPORT_OPTIONS": f"obfs4:iat-mode={v.opts['iat_mode']}"})
    lab.wait_log(f"{v.name}-obfs4-server", "SMETHODS DONE")
    bridge = re.search(r"SMETHOD obfs4 \S+ ARGS:(\S+)", lab.log(f"{v.name}-obfs4-server").read_text())
    lab.spawn("a", f"{v.name}-obfs4-client", "obfs4proxy",
              env={**_pt_env(d / "obfs4-client"), "TOR_PT_CLIENT_TRANSPORTS": "obfs4"})
    lab.wait_log(f"{v.name}-obfs4-client", "CMETHODS DONE")
    socks = re.search(r"CMETHOD obfs4 socks5 (\S+):(\d+)", lab.log(f"{v.name}-obfs4-client").read_text())
    if bridge is None or socks is None:
        raise RuntimeError(f"obfs4proxy did not report its listeners; see {lab.workdir}")
    # SOCKS5 username + password, concatenated by obfs4proxy, are the bridge line's arguments (pt-spec 3.5)
    args = bridge.group(1).split(",")
    auth = d / "obfs4-socks-auth"
    auth.write_text(";".join(args[:-1]) + ";\n" + args[-1] + "\n")
    openvpn.run(lab, pki, v, scale, INNER, (SERVER_IP, v.server_port),  # obfs4proxy connects where SOCKS asks
                f"socks-proxy {socks.group(1)} {socks.group(2)} {auth}")


def over_shadowsocks(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    shadowsocks.start(lab, v)
    openvpn.run(lab, pki, v, scale, INNER, INNER,  # ss-server dials b's INNER
                f"socks-proxy {shadowsocks.SOCKS_HOST} {shadowsocks.SOCKS_PORT}")


def _variant(wrapper: str, port: int, drive: Callable[[Lab, Pki, Variant, int], None], tls: str, cipher: str,
             plan: str, package: str, needs: tuple[str, ...], config: str, **opts: object) -> Variant:
    tag = "high" if port == openvpn.HIGH_PORT else str(port)
    return Variant(
        name=f"openvpn-tcp-{wrapper}-{tag}", family="openvpn", package=package, transport="tcp", server_port=port,
        config=f"tcp {tls} data-ciphers={cipher} inside {config}", drive=drive,
        opts=dict(tls=tls, cipher=cipher, plan=plan, **opts), seconds=30, needs=("openvpn", *needs))


VARIANTS = [
    _variant("stunnel", 443, stunnel, "tlsauth", "AES-256-GCM", "interactive:6,bulk:200000,idle:6,web:2",
             "stunnel4", ("stunnel4",), "stunnel 5 TLS (server cert, SNI server.lab)"),
    _variant("obfs4", openvpn.HIGH_PORT, obfs4, "plain", "CHACHA20-POLY1305", "web:3,interactive:5,bulk:150000",
             "obfs4proxy", ("obfs4proxy",), "obfs4 (obfs4proxy managed PT, iat-mode=0)", iat_mode=0),
    _variant("shadowsocks", 8388, over_shadowsocks, "tlscrypt", "AES-256-GCM", "bulk:200000,interactive:6,idle:5",
             "shadowsocks-libev", ("shadowsocks-libev",), "a Shadowsocks tunnel (socks-proxy via ss-local, "
             "chacha20-ietf-poly1305)", method="chacha20-ietf-poly1305"),
]
