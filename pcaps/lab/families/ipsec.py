"""strongSwan IKEv1/IKEv2 with userspace ESP (kernel-libipsec).

This kernel has no ESP transform, and strongSwan 5.9.8's libipsec only does
UDP encapsulation, so every capture is NAT-T shaped: IKE_SA_INIT on 500, then IKE
and ESP on 4500. Each charon gets its own mount namespace, because its pidfile,
vici socket and /etc/swanctl are fixed paths.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from vpnid.pcaps.lab.config import render
from vpnid.pcaps.lab.netns import CLIENT_IP, SERVER_IP, Lab, run_checked
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

INNER = {"a": "198.19.3.1", "b": "198.19.3.2"}
ADDR = {"a": CLIENT_IP, "b": SERVER_IP}
ID = {"a": "client.lab", "b": "server.lab"}
PSK = "lab-preshared-key-0123456789"
SWANCTL_DIRS = "x509 x509ca x509ocsp x509aa x509ac x509crl pubkey rsa ecdsa bliss pkcs8 pkcs12 private".split()


def _configure(lab: Lab, pki: Pki, v: Variant, side: str) -> Path:
    d = lab.workdir / v.name / side
    for sub in ["run", *(f"swanctl/{s}" for s in SWANCTL_DIRS)]:
        (d / sub).mkdir(parents=True, exist_ok=True)
    peer = "b" if side == "a" else "a"
    o = v.opts
    if o["auth"] == "psk":
        auth, certs, send_cert = "psk", "", "ifasked"
        secrets = f'ike-lab {{\n    id-1 = {ID["a"]}\n    id-2 = {ID["b"]}\n    secret = "{PSK}"\n  }}'
    else:
        leaf = ("client" if side == "a" else "server") + "-rsa"
        shutil.copy(pki.crt(leaf), d / "swanctl/x509")
        shutil.copy(pki.key(leaf), d / "swanctl/private")
        shutil.copy(pki.crt("ca"), d / "swanctl/x509ca")
        auth, certs, send_cert, secrets = "pubkey", f"certs = {leaf}.crt", "always", ""
    yes_no = {True: "yes", False: "no"}
    render("strongswan.conf", d / "strongswan.conf", log=d / "charon.log", aggressive=yes_no[o.get("aggressive", False)])
    render("swanctl.conf", d / "swanctl/swanctl.conf", version=o["version"], local_ip=ADDR[side],
           remote_ip=ADDR[peer], encap=yes_no[o.get("encap", False)], aggressive=yes_no[o.get("aggressive", False)],
           fragmentation=o.get("fragmentation", "yes"), send_cert=send_cert, auth=auth, certs=certs, local_id=ID[side],
           remote_id=ID[peer], local_ts=f"{INNER[side]}/32", remote_ts=f"{INNER[peer]}/32",
           child_rekey=o.get("child_rekey", "1h"), secrets=secrets)
    return d


def drive(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    pids = {}
    for side in "ab":
        d = _configure(lab, pki, v, side)
        lab.sh(side, "ip", "addr", "add", f"{INNER[side]}/32", "dev", "lo")
        mounts = f"mount --bind {d}/run /run && mount --bind {d}/swanctl /etc/swanctl && exec /usr/lib/ipsec/charon"
        p = lab.spawn(side, f"{v.name}-charon-{side}", "unshare", "-m", "--propagation", "private", "sh", "-c", mounts,
                      env={"STRONGSWAN_CONF": str(d / "strongswan.conf")})
        lab.wait_for((d / "run/charon.vici").exists, f"charon vici socket in {d}/run")
        pids[side] = p.pid

    def swanctl(side: str, *argv: str) -> None:
        run_checked(["nsenter", "-t", str(pids[side]), "-m", "-n", "swanctl", *argv])

    swanctl("b", "--load-all", "--noprompt")
    swanctl("a", "--load-all", "--noprompt")
    lab.traffic_server(INNER["b"])
    swanctl("a", "--initiate", "--child", "lab", "--timeout", "20")
    for i, plan in enumerate(v.opts["plans"]):
        if i:  # forced rekeys between plans: a new child SA (new SPIs), then a new IKE SA
            swanctl("a", "--rekey", "--child", "lab")
            swanctl("a", "--rekey", "--ike", "lab")
        lab.traffic(INNER["b"], v.plan(plan, scale), v.seed + i)
    swanctl("a", "--terminate", "--ike", "lab", "--timeout", "10")


def _variant(name: str, config: str, plans: tuple[str, ...], seconds: int, **opts: object) -> Variant:
    return Variant(name=f"ipsec-{name}", family="ipsec", package="strongswan-charon", transport="udp",
                   server_port=500, config=f"{config}; IKE 500->4500, ESP in UDP 4500 (libipsec)", drive=drive,
                   seconds=seconds, opts={"version": 2, "auth": "psk", **opts, "plans": plans},
                   needs=("strongswan-charon", "strongswan-swanctl", "libcharon-extra-plugins",
                          "libstrongswan-standard-plugins", "libstrongswan-extra-plugins"))


VARIANTS = [
    _variant("ikev2-psk", "IKEv2 PSK aes256-sha256-x25519, ESP aes256gcm16", ("interactive:6,bulk:250000,voice:4",), 20),
    _variant("ikev2-cert-skf", "IKEv2 RSA-4096 certs, fragmentation=yes (RFC 7383 SKF)",
             ("web:2,interactive:5",), 22, auth="cert"),
    _variant("ikev2-cert-ipfrag", "IKEv2 RSA-4096 certs, fragmentation=no (IP fragments)",
             ("voice:5,bulk:150000",), 15, auth="cert", fragmentation="no"),
    _variant("ikev1-main", "IKEv1 main mode PSK", ("bulk:200000,idle:10,interactive:4",), 22, version=1),
    _variant("ikev1-aggressive", "IKEv1 aggressive mode PSK", ("interactive:5,web:2",), 20, version=1,
             aggressive=True),
    _variant("ikev2-encap", "IKEv2 PSK encap=yes (forced UDP encapsulation)", ("voice:6,idle:12,bulk:150000",), 25,
             encap=True),
    _variant("ikev2-rekey", "IKEv2 PSK child rekey_time=15s plus forced child and IKE rekeys",
             ("voice:4,idle:14,interactive:4", "bulk:150000,idle:10,voice:3"), 45, child_rekey="15s"),
]
