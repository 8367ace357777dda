"""L2TPv2 (xl2tpd as LAC and LNS): the control connection on UDP 1701, as far as it runs without PPP.

This kernel has neither PPP nor L2TP, so xl2tpd runs in userspace and the pppd it launches for a session
fails at once. What reaches the wire is real: SCCRQ, SCCRP, SCCCN and ZLB acknowledgements set up the
tunnel, ICRQ/ICRP/ICCN the session, then CDN when pppd is gone, HELLOs while the tunnel idles and StopCCN
at the end; the lab asks the LAC for a new session (its control pipe) a few times. L2TP data messages (PPP inside) are built from RFC 2661 in
tests (tests/vpnbytes_pptp_l2tp.py).
"""
from __future__ import annotations

import time

from vpnid.pcaps.lab.netns import CLIENT_IP, SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

L2TP_PORT = 1701


def drive(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    d = lab.workdir / v.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "options").write_text("noauth\nnodefaultroute\n")
    (d / "lns.conf").write_text(
        f"[global]\nlisten-addr = {SERVER_IP}\nport = {L2TP_PORT}\n\n[lns default]\nip range = 198.19.8.10-198.19.8.20\n"
        f"local ip = 198.19.8.1\nrequire authentication = no\nlength bit = yes\npppoptfile = {d}/options\n")
    (d / "lac.conf").write_text(
        f"[global]\nlisten-addr = {CLIENT_IP}\nport = {L2TP_PORT}\n\n[lac lab]\nlns = {SERVER_IP}\n"
        "autodial = yes\nredial = no\n"
        f"require authentication = no\nlength bit = yes\npppoptfile = {d}/options\n")
    for side, conf in (("b", "lns"), ("a", "lac")):
        lab.spawn(side, f"{v.name}-{conf}", "xl2tpd", "-D", "-c", str(d / f"{conf}.conf"), "-s", str(d / "secrets"),
                  "-p", str(d / f"{conf}.pid"), "-C", str(d / f"{conf}.control"))
        lab.wait_log(f"{v.name}-{conf}", "Listening on IP address")
    for _ in range(v.opts["sessions"] * scale - 1):  # the first one was autodialled
        time.sleep(v.opts["gap"])
        with open(d / "lac.control", "w") as control:  # xl2tpd's FIFO: "c <lac>" connects a new session
            control.write("c lab\n")
    time.sleep(v.opts["gap"])


VARIANTS = [
    Variant(name="l2tp-control-1701", family="l2tp", package="xl2tpd", transport="udp", server_port=L2TP_PORT,
            config="xl2tpd 1.3 LAC and LNS, L2TPv2 control connection (no PPP on this kernel: sessions fail)",
            drive=drive, opts=dict(sessions=2, gap=5), seconds=15, needs=("xl2tpd",)),
]
