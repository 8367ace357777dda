"""Two network namespaces joined by one veth pair, and every process started in them.

The lab must never leak traffic or processes: addresses are 198.18.0.0/15 only,
there is no default route and IPv6 is off, names are unique per run, and
teardown (also on errors and Ctrl-C) ends exactly the processes recorded here,
plus whatever is still inside our own namespaces, then deletes the namespaces.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Callable, Iterator

LAB_NET = "198.18.0.0/15"
CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
TRAFFIC_PORT = 8080
TRAFFIC_SCRIPT = Path(str(files(__package__) / "traffic.py"))  # run as a script inside the namespaces


class LabError(RuntimeError):
    """A lab step failed; the message says which and where the logs are."""


class Lab:
    """Client namespace ``a`` (198.18.0.1) and server namespace ``b`` (198.18.0.2)."""

    def __init__(self, workdir: Path):
        self.tag = secrets.token_hex(3)
        self.workdir = workdir
        self.ns = {"a": f"vlab-{self.tag}-a", "b": f"vlab-{self.tag}-b"}
        self.dev = {"a": f"vl{self.tag}a", "b": f"vl{self.tag}b"}
        self.procs: list[subprocess.Popen] = []

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "Lab":
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def _up(self) -> None:
        for side in "ab":
            run_checked(["ip", "netns", "add", self.ns[side]])
        run_checked(["ip", "link", "add", self.dev["a"], "netns", self.ns["a"], "type", "veth",
              "peer", "name", self.dev["b"], "netns", self.ns["b"]])
        for side, ip in (("a", CLIENT_IP), ("b", SERVER_IP)):
            dev = self.dev[side]
            self.sh(side, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.lo.disable_ipv6=1",
                    f"net.ipv6.conf.{dev}.disable_ipv6=1")
            self.sh(side, "ip", "link", "set", "lo", "up")
            self.sh(side, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            self.sh(side, "ip", "link", "set", dev, "up")
            # wire-sized frames with real checksums instead of 64 KB offload super-frames
            self.sh(side, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off")
        self.sh("a", "ping", "-c1", "-W2", SERVER_IP)

    def down(self) -> None:
        """End our processes (newest first), then anything left in our namespaces, then the namespaces."""
        for p in reversed(self.procs):
            _stop(p)
        for side in "ab":
            for pid in self._netns_pids(side):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for side in "ab":
            subprocess.run(["ip", "netns", "del", self.ns[side]], stderr=subprocess.DEVNULL, check=False)

    def _netns_pids(self, side: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns[side]], capture_output=True, text=True, check=False)
        return [int(x) for x in out.stdout.split()]

    # -- processes -----------------------------------------------------------
    def sh(self, side: str, *argv: str, input: str | None = None, timeout: float = 60) -> str:
        """Run a command to completion inside a namespace; raise with its output on failure."""
        return run_checked(["ip", "netns", "exec", self.ns[side], *argv], input=input, timeout=timeout)

    def spawn(self, side: str, name: str, *argv: str, env: dict[str, str] | None = None,
              stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen:
        """Start a daemon in a namespace (``ip netns exec`` execs, so the PID is the daemon's)."""
        log = open(self.log(name), "wb")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[side], *argv], stdout=log, stderr=subprocess.STDOUT,
                             stdin=stdin, env=None if env is None else {**os.environ, **env}, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        """End one of our processes while the capture still runs, so its goodbye is on the wire."""
        _stop(p)

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def wait_log(self, name: str, text: str, timeout: float = 30) -> None:
        self.wait_for(lambda: text in self.log(name).read_text(errors="replace"), f"{text!r} in {self.log(name)}",
                      timeout)

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > end:
                raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)

    # -- traffic and capture -------------------------------------------------
    def traffic_server(self, bind: str) -> None:
        """The paced-traffic server on the far end of the tunnel (namespace b)."""
        self.spawn("b", f"traffic-server-{bind}", sys.executable, "-u", str(TRAFFIC_SCRIPT), "serve", bind,
                   str(TRAFFIC_PORT))
        self.wait_log(f"traffic-server-{bind}", "ready")

    def traffic(self, server: str, plan: str, seed: int, *extra: str) -> None:
        """Drive one plan from namespace a; blocks until the plan is done."""
        timeout = 600 + sum(float(i.split(":")[1]) for i in plan.split(",") if i.split(":")[0] in ("idle", "voice"))
        self.sh("a", sys.executable, "-u", str(TRAFFIC_SCRIPT), "client", server, str(TRAFFIC_PORT), plan,
                "--seed", str(seed), *extra, timeout=timeout)

    @contextlib.contextmanager
    def capture(self, pcap: Path) -> Iterator[None]:
        """tcpdump on the client's veth: the underlay only, lab addresses only."""
        pcap.parent.mkdir(parents=True, exist_ok=True)
        name = f"tcpdump-{pcap.stem}"
        p = self.spawn("a", name, "tcpdump", "-i", self.dev["a"], "-s", "0", "-U", "-n", "-Z", "root",
                       "-w", str(pcap), "net", LAB_NET)
        self.wait_log(name, "listening on")
        try:
            yield
            time.sleep(1)  # let the last segments and ACKs arrive
        finally:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def run_checked(argv: list[str], input: str | None = None, timeout: float = 60) -> str:
    try:
        r = subprocess.run(argv, input=input, capture_output=True, text=True, errors="replace", timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from e
    if r.returncode != 0:
        raise LabError(f"exit {r.returncode}: {' '.join(argv)}\n{r.stdout}{r.stderr}")
    return r.stdout


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
