"""PPTP (pptpd + pptp-linux): the TCP control connection on 1723, as far as it runs without PPP.

This kernel has no PPP (no /dev/ppp), so no pppd can run on either side. The client runs with
`--nolaunchpppd` and is handed async-HDLC framed LCP Configure-Requests on its stdin (where pppd's pty
would be); pptpd is given a stand-in for pppd (`-e`) that swallows what its pty receives. So all that
reaches the wire is made by the real daemons: the control connection (Start-Control-Connection-Request
and -Reply, Outgoing-Call-Request and -Reply, Call-Clear-Request at the end) and the enhanced-GRE packets
carrying the client's LCP frames plus pptpd's GRE acknowledgements. What a working PPP link would add
(LCP answers, authentication, IPCP, compressed data) is built from RFC 2637 in tests
(tests/vpnbytes_pptp_l2tp.py).
"""
from __future__ import annotations

import os
import struct
import subprocess
import time

from vpnid.pcaps.lab.netns import SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

PPTP_PORT = 1723  # fixed in pptpd and pptp-linux
PPP_LCP = 0xC021
LCP_CONFIGURE_REQUEST = 1
LCP_MRU, LCP_MAGIC = 1, 5  # RFC 1661 §6.1, §6.4
HDLC_FLAG, HDLC_ESCAPE = 0x7E, 0x7D


def _fcs16(data: bytes) -> int:
    """PPP's 16-bit frame check sequence (RFC 1662 §C.2)."""
    fcs = 0xFFFF
    for b in data:
        fcs ^= b
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
    return fcs ^ 0xFFFF


def lcp_configure_request(ident: int) -> bytes:
    """One async-HDLC framed LCP Configure-Request (RFC 1662), as pppd would hand pptp on its pty: pptp
    unframes it and sends it in enhanced GRE, the data plane this kernel's missing pppd cannot make."""
    options = struct.pack("!BBH", LCP_MRU, 4, 1400) + struct.pack("!BB", LCP_MAGIC, 6) + os.urandom(4)
    frame = b"\xff\x03" + struct.pack("!HBBH", PPP_LCP, LCP_CONFIGURE_REQUEST, ident, 4 + len(options)) + options
    frame += struct.pack("<H", _fcs16(frame))
    escaped = bytearray()
    for b in frame:
        escaped += bytes([HDLC_ESCAPE, b ^ 0x20]) if b < 0x20 or b in (HDLC_FLAG, HDLC_ESCAPE) else bytes([b])
    return bytes([HDLC_FLAG]) + bytes(escaped) + bytes([HDLC_FLAG])


def drive(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    d = lab.workdir / v.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "options").write_text("name pptpd\nrefuse-pap\nrefuse-chap\nnoauth\nnodefaultroute\n")
    sink = d / "pppd-sink"  # stands in for pppd: keeps the call's pty open, reads and drops PPP frames
    sink.write_text("#!/bin/sh\nexec cat >/dev/null\n")
    sink.chmod(0o755)
    (d / "pptpd.conf").write_text(f"option {d}/options\nlocalip 198.19.7.1\nremoteip 198.19.7.10-20\n")
    lab.spawn("b", f"{v.name}-server", "pptpd", "-f", "-c", str(d / "pptpd.conf"), "-e", str(sink), "-l", SERVER_IP,
              "-p", str(d / "pptpd.pid"))
    lab.wait_for(lambda: f"{SERVER_IP}:{PPTP_PORT}" in lab.sh("b", "ss", "-ltn"), "pptpd listening")
    for i in range(v.opts["calls"] * scale):
        client = lab.spawn("a", f"{v.name}-client-{i}", "pptp", SERVER_IP, "--nolaunchpppd", "--nohostroute",
                           "--loglevel", "2", "--debug", stdin=subprocess.PIPE)
        for ident in range(v.opts["hold"]):
            time.sleep(1)
            try:
                client.stdin.write(lcp_configure_request(ident + 1))
                client.stdin.flush()
            except BrokenPipeError:
                break
        lab.stop(client)
        time.sleep(1)


VARIANTS = [
    Variant(name="pptp-control-1723", family="pptp", package="pptpd", transport="tcp", server_port=PPTP_PORT,
            config="pptpd 1.4 + pptp-linux 1.10 control connection (no PPP on this kernel: the call fails)",
            drive=drive, opts=dict(calls=3, hold=6), seconds=25, needs=("pptpd", "pptp-linux")),
]
