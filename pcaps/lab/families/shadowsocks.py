"""shadowsocks-libev: ss-local (SOCKS5 in namespace a) to ss-server; one AEAD TCP connection per proxied connection.

The plans use kept-alive connections only (several exchanges each, as proxied browsing and apps make):
a connection with one request and one answer is, by design, too little for the Shadowsocks label (see
`vpnid.features.dissectors.shadowsocks`), so a one-request-per-connection plan would label nothing.
"""
from __future__ import annotations

from vpnid.pcaps.lab.netns import SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

TARGET = "198.19.5.1"  # the "web server" behind the proxy, on lo in namespace b
SOCKS_HOST, SOCKS_PORT = "127.0.0.1", 1080  # ss-local's SOCKS5 front end, in namespace a
SOCKS = f"{SOCKS_HOST}:{SOCKS_PORT}"
PASSWORD = "lab-ss-password"


def start(lab: Lab, v: Variant) -> None:
    """ss-server on the variant's port in namespace b, ss-local's SOCKS5 front end in a (cipher `method`)."""
    port, method = str(v.server_port), v.opts["method"]
    lab.spawn("b", f"{v.name}-server", "ss-server", "-s", SERVER_IP, "-p", port, "-k", PASSWORD, "-m", method, "-v")
    lab.spawn("a", f"{v.name}-local", "ss-local", "-s", SERVER_IP, "-p", port, "-l", str(SOCKS_PORT), "-b",
              SOCKS_HOST, "-k", PASSWORD, "-m", method, "-v")
    for side in ("server", "local"):
        lab.wait_log(f"{v.name}-{side}", "listening at")


def drive(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    lab.sh("b", "ip", "addr", "add", f"{TARGET}/32", "dev", "lo")
    start(lab, v)
    lab.traffic_server(TARGET)
    lab.traffic(TARGET, v.plan(v.opts["plan"], scale), v.seed, "--socks", SOCKS)


VARIANTS = [
    Variant(name="shadowsocks-chacha-8388", family="shadowsocks", package="shadowsocks-libev", transport="tcp",
            server_port=8388, config="ss-server/ss-local chacha20-ietf-poly1305, SOCKS5 client", drive=drive,
            opts=dict(method="chacha20-ietf-poly1305", plan="keepalive:8,idle:3,keepalive:9,keepalive:12,keepalive:8"), seconds=25,
            needs=("shadowsocks-libev",)),
    Variant(name="shadowsocks-aes256gcm-443", family="shadowsocks", package="shadowsocks-libev", transport="tcp",
            server_port=443, config="ss-server/ss-local aes-256-gcm on tcp/443, SOCKS5 client", drive=drive,
            opts=dict(method="aes-256-gcm", plan="keepalive:10,idle:8,keepalive:8,keepalive:9"), seconds=25,
            needs=("shadowsocks-libev",)),
]
