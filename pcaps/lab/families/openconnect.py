"""ocserv + openconnect (AnyConnect protocol): TLS/CSTP on TCP, data over DTLS on UDP unless disabled."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from vpnid.pcaps.lab.config import TEMPLATES, render
from vpnid.pcaps.lab.netns import SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

INNER_SERVER = "198.19.4.1"
PASSWORD = "labpass"


def drive(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    # ocserv workers drop to nobody and must reach sec-mod's socket: keep it out of the private work dir
    sockets = Path(f"/run/vpnid-lab-{lab.tag}")
    sockets.mkdir(mode=0o755)
    try:
        _drive(lab, pki, v, scale, sockets)
    finally:
        shutil.rmtree(sockets)


def _drive(lab: Lab, pki: Pki, v: Variant, scale: int, sockets: Path) -> None:
    d = lab.workdir / v.name
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ocpasswd", "-c", str(d / "ocpasswd"), "lab"], input=f"{PASSWORD}\n{PASSWORD}\n", text=True,
                   check=True, capture_output=True)
    conf = render("ocserv.conf", d / "ocserv.conf", passwd=d / "ocpasswd", server_ip=SERVER_IP, port=v.server_port,
                  dir=sockets, cert=pki.crt("server"), key=pki.key("server"))
    script = shutil.copy(TEMPLATES / "openconnect-script.sh", d / "oc-script.sh")
    lab.spawn("b", f"{v.name}-ocserv", "ocserv", "-f", "-d", "1", "-c", str(conf))
    lab.wait_for(lambda: f"{SERVER_IP}:{v.server_port}" in lab.sh("b", "ss", "-ltn"), "ocserv listening")
    dtls = [] if v.opts["dtls"] else ["--no-dtls"]
    client = lab.spawn("a", f"{v.name}-openconnect", "openconnect", "--protocol=anyconnect", "--user=lab",
                       "--passwd-on-stdin", "--cafile", str(pki.crt("ca")), "--script", f"/bin/sh {script}",
                       "--interface", f"oc{lab.tag}", *dtls, f"https://{SERVER_IP}:{v.server_port}/",
                       stdin=subprocess.PIPE)
    client.stdin.write(f"{PASSWORD}\n".encode())
    client.stdin.close()
    lab.wait_log(f"{v.name}-openconnect", "Established DTLS" if v.opts["dtls"] else "CSTP connected")
    lab.wait_for(lambda: INNER_SERVER in lab.sh("b", "ip", "-o", "-4", "addr"), "ocserv tunnel address")
    lab.traffic_server(INNER_SERVER)
    lab.traffic(INNER_SERVER, v.plan(v.opts["plan"], scale), v.seed)
    lab.stop(client)


VARIANTS = [
    Variant(name="openconnect-dtls-443", family="openconnect", package="ocserv", transport="udp+tcp", server_port=443,
            config="AnyConnect CSTP over TLS 1.2 on tcp/443 plus DTLS 1.2 on udp/443, password auth, dpd=20",
            drive=drive, opts=dict(dtls=True, plan="interactive:6,voice:5,idle:25,bulk:200000"), seconds=45,
            needs=("ocserv", "openconnect")),
    Variant(name="openconnect-tls-8443", family="openconnect", package="ocserv", transport="tcp", server_port=8443,
            config="AnyConnect CSTP over TLS only (--no-dtls) on tcp/8443, password auth", drive=drive,
            opts=dict(dtls=False, plan="web:3,interactive:5,bulk:150000"), seconds=25, needs=("ocserv", "openconnect")),
]
