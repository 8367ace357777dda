"""Paced application traffic for the lab: one server, one client, five shapes.

There is no netem on this kernel and a veth pair is instantaneous, so every gap,
rate and packet size that should look human, web- or media-like is made here by
sleeping. Stdlib only: it is run as a script inside the network namespaces.

Plan syntax (client): comma-separated SHAPE:ARG items, e.g.
``interactive:8,bulk:300000,web:3,voice:6,idle:20,keepalive:8`` (seconds, bytes, pages or exchanges);
``mtu:1280`` lowers the MTU of the client's route to the server (the tunnel's
inner interface, or the underlay for a proxy) to at most 1280 for what follows.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import socketserver
import struct
import subprocess
import threading
import time

CHUNK = 16384
WEB_RATE_BPS = 20_000_000
VOICE_PERIOD_S = 0.02  # 50 packets/s, like G.711 with 20 ms frames
VOICE_PAYLOAD = 160


def send_paced(sock: socket.socket, nbytes: int, rate_bps: int) -> None:
    """Send ``nbytes`` random bytes no faster than ``rate_bps`` (the veth would do Gbit/s)."""
    sent, t0 = 0, time.monotonic()
    while sent < nbytes:
        k = min(CHUNK, nbytes - sent)
        sock.sendall(os.urandom(k))
        sent += k
        ahead = t0 + sent * 8 / rate_bps - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


# Plan items the client runs (`Client.run`); the lab's plans and their --scale variations use only these.
SHAPES = ("mtu", "bulk", "idle", "web", "keepalive", "interactive", "voice")

class _Handler(socketserver.StreamRequestHandler):
    """``GET <bytes> <rate> [padding]`` streams bytes, and the connection stays open for the next request
    (HTTP keep-alive); ``TTY`` echoes keystrokes and answers each Enter."""

    def handle(self) -> None:
        while (words := self.rfile.readline().split())[:1] == [b"GET"]:
            send_paced(self.connection, int(words[1]), int(words[2]))
        if words[:1] == [b"TTY"]:
            rng = random.Random(self.client_address[1])
            while ch := self.rfile.read(1):
                self.connection.sendall(ch)
                if ch == b"\r":
                    time.sleep(rng.uniform(0.01, 0.05))
                    self.connection.sendall(os.urandom(rng.randint(60, 2500)))


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(bind: str, port: int) -> None:
    """TCP shapes plus a UDP echo on the same port (the echo makes voice two-way)."""
    tcp = _Server((bind, port), _Handler)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind, port))
    print("ready", flush=True)
    while True:
        data, peer = udp.recvfrom(65535)
        udp.sendto(data, peer)


class Client:
    """Runs a plan against a server, optionally through a SOCKS5 proxy (Shadowsocks)."""

    def __init__(self, server: str, port: int, seed: int, socks: tuple[str, int] | None, bulk_rate: int):
        self.server, self.port, self.socks, self.bulk_rate = server, port, socks, bulk_rate
        self.rng = random.Random(seed)

    def connect(self) -> socket.socket:
        if self.socks is None:
            return socket.create_connection((self.server, self.port), timeout=30)
        s = socket.create_connection(self.socks, timeout=30)
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 proxy refused no-auth")
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(self.server) + struct.pack("!H", self.port))
        reply = s.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            raise ConnectionError(f"SOCKS5 connect failed: {reply!r}")
        return s

    def fetch(self, nbytes: int, rate: int) -> None:
        with self.connect() as s:
            s.sendall(f"GET {nbytes} {rate}\n".encode())
            _read_exactly(s, nbytes)

    def keepalive(self, exchanges: int) -> None:
        """One kept-alive connection carrying several request/response exchanges, as a browser or an app
        polling an API through a proxy does: requests of varying length (headers, cookies), small answers
        (JSON, 304 Not Modified) a short think time apart, then one larger object on the same connection."""
        with self.connect() as s:
            for i in range(exchanges):
                last = i == exchanges - 1
                size = self.rng.randint(20_000, 120_000) if last else self.rng.randint(60, 460)
                pad = "x" * self.rng.randint(20, 400)
                s.sendall(f"GET {size} {WEB_RATE_BPS} {pad}\n".encode())
                _read_exactly(s, size)
                if not last:
                    time.sleep(self.rng.uniform(0.1, 1.2))

    def interactive(self, seconds: float) -> None:
        """Typing: a few keys 80-350 ms apart, Enter, output burst, think time."""
        end = time.monotonic() + seconds
        with self.connect() as s:
            s.sendall(b"TTY\n")
            threading.Thread(target=_drain, args=(s,), daemon=True).start()
            while time.monotonic() < end:
                for _ in range(self.rng.randint(3, 12)):
                    s.sendall(bytes([self.rng.randint(97, 122)]))
                    time.sleep(self.rng.uniform(0.08, 0.35))
                s.sendall(b"\r")
                time.sleep(self.rng.uniform(0.5, 3.0))
            s.shutdown(socket.SHUT_WR)

    def web(self, pages: int) -> None:
        """Page loads: a main document, then objects on two parallel connections, then reading time."""
        for _ in range(pages):
            self.fetch(self.rng.randint(5_000, 40_000), WEB_RATE_BPS)
            objects = [self.rng.randint(500, 30_000) for _ in range(self.rng.randint(3, 6))]
            lanes = [threading.Thread(target=self._fetch_all, args=(objects[i::2],)) for i in range(2)]
            for t in lanes:
                t.start()
            for t in lanes:
                t.join()
            time.sleep(self.rng.uniform(1.0, 5.0))

    def _fetch_all(self, sizes: list[int]) -> None:
        for n in sizes:
            self.fetch(n, WEB_RATE_BPS)

    def voice(self, seconds: float) -> None:
        """Constant bit rate: an RTP-sized datagram every 20 ms, echoed back by the server."""
        if self.socks is not None:
            raise ValueError("voice needs UDP; not available through the SOCKS proxy")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((self.server, self.port))
            s.setblocking(False)
            ssrc, t0 = self.rng.getrandbits(32), time.monotonic()
            for seq in range(int(seconds / VOICE_PERIOD_S)):
                rtp = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * VOICE_PAYLOAD, ssrc)
                s.send(rtp + os.urandom(VOICE_PAYLOAD))
                _drain_udp(s)
                time.sleep(max(0.0, t0 + (seq + 1) * VOICE_PERIOD_S - time.monotonic()))
            time.sleep(0.2)
            _drain_udp(s)

    def route_dev(self, wait_s: float = 15.0) -> str:
        """The device of the route to the server. A VPN client may still be adding it when the plan starts
        (openconnect's script, seen once when a plan began with `mtu:`), so it is waited for a while."""
        deadline = time.monotonic() + wait_s
        while True:
            r = subprocess.run(["ip", "-o", "route", "get", self.server], capture_output=True, text=True)
            if r.returncode == 0:
                route = r.stdout.split()
                return route[route.index("dev") + 1]
            if time.monotonic() > deadline:
                raise SystemExit(f"no route to {self.server} after {wait_s:.0f} s: {r.stderr.strip()}")
            time.sleep(0.25)

    def lower_mtu(self, mtu: int) -> None:
        """New connections then negotiate a smaller MSS, so both directions carry smaller packets. Through
        the proxy the server is not routed from here: the namespace's own links are lowered instead."""
        if self.socks is None:
            devs = [self.route_dev()]
        else:
            devs = [d for d in os.listdir("/sys/class/net") if d != "lo"]
        for dev in devs:
            with open(f"/sys/class/net/{dev}/mtu") as f:
                current = int(f.read())
            if mtu < current:
                subprocess.run(["ip", "link", "set", "dev", dev, "mtu", str(mtu)], check=True)

    def run(self, plan: str) -> None:
        for item in plan.split(","):
            shape, _, arg = item.partition(":")
            if shape not in SHAPES:
                raise ValueError(f"unknown shape {shape!r} in plan {plan!r}")
            if shape == "mtu":
                self.lower_mtu(int(arg))
            elif shape == "bulk":
                self.fetch(int(arg), self.bulk_rate)
            elif shape == "idle":
                time.sleep(float(arg))
            elif shape == "web":
                self.web(int(arg))
            elif shape == "keepalive":
                self.keepalive(int(arg))
            else:  # interactive, voice
                getattr(self, shape)(float(arg))
            print("done", item, flush=True)


def _read_exactly(s: socket.socket, nbytes: int) -> None:
    got = 0
    while got < nbytes:
        chunk = s.recv(min(65536, nbytes - got))
        if not chunk:
            raise ConnectionError(f"short read: {got} of {nbytes} bytes")
        got += len(chunk)


def _drain(s: socket.socket) -> None:
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass


def _drain_udp(s: socket.socket) -> None:
    try:
        while True:
            s.recv(65535)
    except BlockingIOError:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve")
    s.add_argument("bind")
    s.add_argument("port", type=int)
    c = sub.add_parser("client")
    c.add_argument("server")
    c.add_argument("port", type=int)
    c.add_argument("plan")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--socks", help="HOST:PORT of a SOCKS5 proxy")
    c.add_argument("--bulk-rate", type=int, default=8_000_000, help="bit/s for bulk downloads")
    a = p.parse_args()
    if a.role == "serve":
        serve(a.bind, a.port)
    else:
        socks = None
        if a.socks:
            host, _, port = a.socks.rpartition(":")
            socks = (host, int(port))
        Client(a.server, a.port, a.seed, socks, a.bulk_rate).run(a.plan)


if __name__ == "__main__":
    main()
