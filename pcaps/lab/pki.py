"""A throw-away openssl CA with server and client certificates, made once per lab run.

ECDSA P-256 keeps handshakes small; the RSA-4096 pair exists to make IKE_AUTH
larger than one datagram, so IKEv2 fragmentation (RFC 7383) and IP fragmentation
actually happen.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from vpnid.pcaps.lab.netns import CLIENT_IP, SERVER_IP

IKE_EKU = "1.3.6.1.5.5.8.2.2"  # ikeIntermediate, wanted by some IKE peers


@dataclass(frozen=True)
class Pki:
    dir: Path

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @classmethod
    def create(cls, dir: Path) -> "Pki":
        dir.mkdir(parents=True, exist_ok=True)
        pki = cls(dir)
        _openssl("req", "-x509", *_newkey("ec"), "-keyout", pki.key("ca"), "-out", pki.crt("ca"), "-days", "3650",
                 "-subj", "/CN=vpnid lab CA", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        for kind, suffix in (("ec", ""), ("rsa", "-rsa")):
            pki._leaf(f"server{suffix}", kind, "server.lab", f"serverAuth,{IKE_EKU}", f"DNS:server.lab,IP:{SERVER_IP}")
            pki._leaf(f"client{suffix}", kind, "client.lab", f"clientAuth,{IKE_EKU}", f"DNS:client.lab,IP:{CLIENT_IP}")
        return pki

    def _leaf(self, name: str, kind: str, cn: str, eku: str, san: str) -> None:
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                       f"extendedKeyUsage={eku}\nsubjectAltName={san}\n")
        csr = self.dir / f"{name}.csr"
        _openssl("req", *_newkey(kind), "-keyout", self.key(name), "-out", csr, "-subj", f"/CN={cn}")
        _openssl("x509", "-req", "-in", csr, "-CA", self.crt("ca"), "-CAkey", self.key("ca"), "-CAcreateserial",
                 "-out", self.crt(name), "-days", "3650", "-extfile", ext)


def _newkey(kind: str) -> list[str]:
    if kind == "rsa":
        return ["-newkey", "rsa:4096", "-nodes"]
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
