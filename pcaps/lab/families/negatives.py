"""Non-VPN traffic between the same namespaces (family ``none``): what a detector must not flag.

Real clients and servers (curl, python http.server, openssl, dnsmasq, dig, OpenSSH,
aioquic), paced here so the flows have think times, typing and bursts too.
"""
from __future__ import annotations

import random
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

from vpnid.pcaps.lab.netns import SERVER_IP, Lab
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

SYSTEM_PYTHON = "/usr/bin/python3"  # `python3` on PATH may be a pyenv shim
QUIC_PEER = Path(str(files("vpnid.pcaps.lab.peers") / "quic_peer.py"))  # run as a script


def _site(lab: Lab, rng: random.Random, pages: int) -> tuple[Path, list[list[str]]]:
    """Files for a small web site: per page a document and 3-6 objects of web-like sizes."""
    www = lab.workdir / "www"
    www.mkdir(exist_ok=True)
    site = []
    for p in range(pages):
        names = [f"p{p}o{i}" for i in range(rng.randint(4, 7))]
        for name in names:
            (www / name).write_bytes(rng.randbytes(rng.randint(500, 30_000)))
        site.append(names)
    (www / "bulk").write_bytes(rng.randbytes(300_000))
    return www, site


def _browse(lab: Lab, v: Variant, scale: int, base: str, *curl_opts: str) -> None:
    """Page loads with curl (one connection per page), reading time between pages, then one rate-limited download."""
    rng = random.Random(v.seed)
    _, site = _site(lab, rng, 3 * scale)
    for names in site:
        lab.sh("a", "curl", "-sS", "-o", "/dev/null", *curl_opts, *(f"{base}/{n}" for n in names))
        time.sleep(rng.uniform(1.0, 4.0))
    lab.sh("a", "curl", "-sS", "-o", "/dev/null", "--limit-rate", "400k", *curl_opts, f"{base}/bulk")


def http(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    www = lab.workdir / "www"
    www.mkdir(exist_ok=True)
    lab.spawn("b", v.name, SYSTEM_PYTHON, "-u", "-m", "http.server", str(v.server_port), "--bind", SERVER_IP,
              "--directory", str(www))
    lab.wait_log(v.name, "Serving HTTP")
    _browse(lab, v, scale, f"http://{SERVER_IP}:{v.server_port}")


def https(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    www = lab.workdir / "www"
    www.mkdir(exist_ok=True)
    lab.spawn("b", v.name, "sh", "-c", f"cd {www} && exec openssl s_server -WWW -accept {SERVER_IP}:{v.server_port} "
              f"-cert {pki.crt('server')} -key {pki.key('server')} -naccept 1000")
    lab.wait_log(v.name, "ACCEPT")
    _browse(lab, v, scale, f"https://server.lab:{v.server_port}", "--cacert", str(pki.crt("ca")),
            "--resolve", f"server.lab:{v.server_port}:{SERVER_IP}", *v.opts["curl"])


def dns(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    lab.spawn("b", v.name, "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--bind-interfaces", "--log-queries", "--log-facility=-",
              f"--listen-address={SERVER_IP}", "-p", str(v.server_port), "--address=/lab/198.19.6.1",
              "--txt-record=txt.lab,lab text record", "--mx-host=lab,mail.lab,10", "--user=root", "--pid-file=")
    lab.wait_log(v.name, "started")
    rng = random.Random(v.seed)
    for i in range(25 * scale):
        name = rng.choice(["www", "mail", "api", "cdn", "login", "txt", "static"]) + ".lab"
        lab.sh("a", "dig", "+tries=1", "+time=2", *(["+tcp"] if i % 10 == 9 else []), f"@{SERVER_IP}",
               "-p", str(v.server_port), name, rng.choice(["A", "AAAA", "MX", "TXT"]))
        time.sleep(rng.expovariate(1.5))


def sshd(lab: Lab, v: Variant, *options: str) -> list[str]:
    """OpenSSH's server on the variant's port in namespace b (fresh ed25519 keys, more ``-o`` options if
    given); the client options to reach it."""
    d = lab.workdir / v.name
    d.mkdir(exist_ok=True)
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation directory sshd insists on
    lab.spawn("b", v.name, "/usr/sbin/sshd", "-D", "-e", "-f", "/dev/null", "-o", f"ListenAddress={SERVER_IP}",
              "-o", f"Port={v.server_port}", "-o", f"HostKey={d}/host", "-o", f"AuthorizedKeysFile={d}/client.pub",
              "-o", "PermitRootLogin=prohibit-password", "-o", "StrictModes=no", "-o", "PidFile=none",
              "-o", "UsePAM=no", *(a for o in options for a in ("-o", o)))
    lab.wait_log(v.name, "Server listening")
    return ["-i", f"{d}/client", "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]


def ssh(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    opts = [*sshd(lab, v), "-p", str(v.server_port), f"root@{SERVER_IP}"]
    rng = random.Random(v.seed)
    shell = lab.spawn("a", f"{v.name}-client", "ssh", "-tt", *opts, stdin=subprocess.PIPE)
    for _ in range(8 * scale):  # typing: keys 80-350 ms apart, Enter, reading time
        for ch in rng.choice(["ls -l /", "uptime", "df -h", "cat /etc/os-release", "ps ax", "id", "free -m"]):
            shell.stdin.write(ch.encode())
            shell.stdin.flush()
            time.sleep(rng.uniform(0.08, 0.35))
        shell.stdin.write(b"\n")
        shell.stdin.flush()
        time.sleep(rng.uniform(0.5, 3.0))
    shell.stdin.write(b"exit\n")
    shell.stdin.close()
    shell.wait(10)
    lab.sh("a", "ssh", *opts, f"head -c {300_000 * scale} /dev/urandom | base64")


def quic(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    lab.spawn("b", v.name, sys.executable, "-u", str(QUIC_PEER), "serve", SERVER_IP, str(v.server_port),
              str(pki.crt("server")), str(pki.key("server")))
    lab.wait_log(v.name, "ready")
    rng = random.Random(v.seed)
    gets = [f"{rng.randint(500, 40_000)}:{rng.uniform(0.0, 0.3) if i % 5 else rng.uniform(1, 4):.2f}"
            for i in range(20 * scale)] + ["300000"]
    lab.sh("a", sys.executable, str(QUIC_PEER), "get", SERVER_IP, str(v.server_port), str(pki.crt("ca")), *gets,
           timeout=300)


def dtls(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    """Two-way 50 lines/s over DTLS 1.2 (openssl s_server/s_client), like a media or game flow."""
    peers = {"b": ["s_server", "-dtls1_2", "-accept", f"{SERVER_IP}:{v.server_port}", "-cert", str(pki.crt("server")),
                   "-key", str(pki.key("server"))],
             "a": ["s_client", "-dtls1_2", "-connect", f"{SERVER_IP}:{v.server_port}", "-CAfile", str(pki.crt("ca"))]}
    procs = {}
    for side in "ba":
        procs[side] = lab.spawn(side, f"{v.name}-{side}", "openssl", *peers[side], stdin=subprocess.PIPE)
        lab.wait_log(f"{v.name}-{side}", "ACCEPT" if side == "b" else "Verify return code")
    rng = random.Random(v.seed)
    for burst in range(3 * scale):
        for _ in range(250):
            for p in procs.values():
                p.stdin.write(rng.randbytes(60).hex().encode() + b"\n")
                p.stdin.flush()
            time.sleep(0.02)
        time.sleep(rng.uniform(3, 8) if burst < 3 * scale - 1 else 0.5)
    procs["a"].stdin.close()


def neg(name: str, drive, port: int, transport: str, package: str, config: str, seconds: int, **extra) -> Variant:
    return Variant(name=f"neg-{name}", family="none", package=package, transport=transport, server_port=port,
                   config=config, drive=drive, seconds=seconds, **extra)


VARIANTS = [
    neg("http-80", http, 80, "tcp", "python3", "python http.server, curl page loads + 400 kB/s download", 15,
         needs=("curl",)),
    neg("https-tls13-443", https, 443, "tcp", "openssl", "openssl s_server -WWW, curl TLS 1.3", 15,
         opts=dict(curl=("--tlsv1.3",)), needs=("curl",)),
    neg("https-tls12-8443", https, 8443, "tcp", "openssl", "openssl s_server -WWW, curl TLS 1.2 (--tls-max 1.2)", 15,
         opts=dict(curl=("--tlsv1.2", "--tls-max", "1.2")), needs=("curl",)),
    neg("dns-53", dns, 53, "udp", "dnsmasq-base", "dnsmasq authoritative for .lab, dig A/AAAA/MX/TXT, every 10th over TCP",
         20, needs=("dnsmasq-base", "bind9-dnsutils")),
    neg("ssh-22", ssh, 22, "tcp", "openssh-server", "OpenSSH ed25519: typed interactive shell, then 300 kB exec output",
         30, needs=("openssh-server", "openssh-client")),
    neg("quic-443", quic, 443, "udp", "aioquic", "aioquic HTTP/3: 20 GETs with think times + 300 kB", 15,
         modules=("aioquic",)),
    neg("dtls-4433", dtls, 4433, "udp", "openssl", "openssl s_server/s_client DTLS 1.2, 2x50 lines/s bursts", 30),
]
