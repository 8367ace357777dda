"""Non-VPN application traffic of the kinds a detector mistakes for tunnels (family ``none``).

The dev set's false tunnels came from BitTorrent over uTP, SSH, and messenger and conferencing
clients (Teams, imo, KakaoTalk): long-lived encrypted flows, UDP media at a steady rate, a relay
in the middle. Each variant here runs the real programs of such a kind between the lab's two
namespaces: Transmission peers (uTP, and TCP with the MSE/PE encrypted handshake), ffmpeg sending
SRTP and RTP media both ways, coturn relaying a TURN client's data (STUN Allocate, ChannelData),
mosquitto with TLS clients holding messenger-like push connections, and OpenSSH's scp/sftp with
keepalives. Only the tracker is the lab's own (a real swarm's tracker is elsewhere).
"""
from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

from vpnid.pcaps.lab.families.negatives import neg, sshd
from vpnid.pcaps.lab.netns import CLIENT_IP, SERVER_IP, Lab, LabError
from vpnid.pcaps.lab.pki import Pki
from vpnid.pcaps.lab.variant import Variant

BT_TRACKER = Path(str(files("vpnid.pcaps.lab.peers") / "bt_tracker.py"))  # run as a script
TRACKER_PORT = 6969
RPC = "127.0.0.1:9091"  # transmission-daemon's RPC, each namespace its own loopback


def _transmission(lab: Lab, side: str, v: Variant, downloads: Path) -> None:
    """A transmission-daemon with the variant's uTP and encryption settings, DHT/LPD/PEX off (no route out)."""
    conf = lab.workdir / f"{v.name}-{side}"
    conf.mkdir(exist_ok=True)
    downloads.mkdir(exist_ok=True)
    settings = {"utp-enabled": v.opts["utp"], "encryption": v.opts["encryption"], "dht-enabled": False,
                "lpd-enabled": False, "pex-enabled": False, "port-forwarding-enabled": False,
                "peer-port": v.server_port + (side == "a"), "peer-port-random-on-start": False,
                "bind-address-ipv4": CLIENT_IP if side == "a" else SERVER_IP, "rpc-bind-address": "127.0.0.1",
                "rpc-authentication-required": False, "rpc-whitelist-enabled": False, "download-dir": str(downloads),
                "speed-limit-up-enabled": True, "speed-limit-up": v.opts["rate_kib"], "ratio-limit-enabled": False,
                "message-level": 2}
    (conf / "settings.json").write_text(json.dumps(settings))
    lab.spawn(side, f"{v.name}-{side}", "transmission-daemon", "-f", "-g", str(conf), "--log-info")
    lab.wait_for(lambda: _remote(lab, side, "-l", check=False) is not None, f"transmission RPC in {side}")


def _remote(lab: Lab, side: str, *args: str, check: bool = True) -> str | None:
    try:
        return lab.sh(side, "transmission-remote", RPC, *args)
    except LabError:
        if check:
            raise
        return None


def bittorrent(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    """One seeder (b) and one leecher (a) of a private torrent, found through the tracker; the download
    runs at the seeder's upload limit until the leecher has every piece, then both seed a while."""
    rng = random.Random(v.seed)
    seed_dir, leech_dir = lab.workdir / "seed", lab.workdir / "leech"
    seed_dir.mkdir(exist_ok=True)
    data = seed_dir / "lab-data.bin"
    data.write_bytes(rng.randbytes(v.opts["megabytes"] * scale * 2**20))
    torrent = lab.workdir / "lab-data.torrent"
    subprocess.run(["transmission-create", "-p", "-s", "256", "-o", str(torrent), "-t",
                    f"http://{SERVER_IP}:{TRACKER_PORT}/announce", str(data)], check=True, capture_output=True)
    lab.spawn("b", f"{v.name}-tracker", sys.executable, "-u", str(BT_TRACKER), SERVER_IP, str(TRACKER_PORT))
    lab.wait_log(f"{v.name}-tracker", "ready")
    _transmission(lab, "b", v, seed_dir)
    _remote(lab, "b", "-a", str(torrent))
    lab.wait_for(lambda: "100%" in _remote(lab, "b", "-l"), "the seeder to verify its data", timeout=120)
    _transmission(lab, "a", v, leech_dir)
    _remote(lab, "a", "-a", str(torrent))
    download_s = v.opts["megabytes"] * scale * 1024 / v.opts["rate_kib"]
    lab.wait_for(lambda: "Percent Done: 100%" in _remote(lab, "a", "-t", "1", "-i"), "the leecher to finish",
                 timeout=60 + 4 * download_s)
    time.sleep(rng.uniform(3, 6))  # both seeding: keepalives and have-messages only


def _ffmpeg(lab: Lab, side: str, name: str, source: list[str], codec: list[str], url: str) -> subprocess.Popen:
    return lab.spawn(side, name, "ffmpeg", "-hide_banner", "-loglevel", "warning", "-nostdin", "-re", *source, *codec,
              "-f", "rtp", *url.split(" "))


def media(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    """A call: each side sends an audio stream (Opus in 20 ms frames, talk spurts and pauses) and, for a
    video call, a VP8 stream to the other, on the same port pair (one two-way flow per stream), SRTP
    (AES_CM_128_HMAC_SHA1_80) or plain RTP."""
    rng = random.Random(v.seed)
    seconds = v.opts["seconds"] * scale
    streams = [("audio", v.server_port, ["-f", "lavfi", "-t", str(seconds), "-i",
                f"aevalsrc=0.4*sin(2*PI*{rng.randint(180, 400)}*t)*lt(mod(t\\,{rng.randint(5, 9)})\\,3):s=48000"],
                ["-c:a", "libopus", "-b:a", "32k", "-application", "voip", "-frame_duration", "20"])]
    if v.opts["video"]:
        streams.append(("video", v.server_port + 2, ["-f", "lavfi", "-t", str(seconds), "-i", "testsrc2=s=320x240:r=15"],
                        ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "250k", "-g", "45"]))
    scheme, senders = "srtp" if v.opts["srtp"] else "rtp", []
    for kind, port, source, codec in streams:
        for side, peer in (("a", SERVER_IP), ("b", CLIENT_IP)):
            keys = (f"-srtp_out_suite AES_CM_128_HMAC_SHA1_80 -srtp_out_params "
                    f"{base64.b64encode(rng.randbytes(30)).decode()} ") if v.opts["srtp"] else ""
            senders.append(_ffmpeg(lab, side, f"{v.name}-{kind}-{side}", source, codec,
                    f"{keys}{scheme}://{peer}:{port}?localport={port}&pkt_size=1200"))
    lab.wait_for(lambda: all(p.poll() is not None for p in senders), "the media streams to end",
                 timeout=seconds + 60)


def turn(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    """coturn in b relays for turnutils_uclient in a (over UDP, TCP, or DTLS with the lab's server
    certificate): Allocate with long-term credentials, permissions, channel binds, then ChannelData
    every 20 ms to an echoing peer (turnutils_peer) behind the relay."""
    user, password = "lab", "lab-turn-password"
    secure = ["--tls-listening-port", str(v.server_port), "--cert", str(pki.crt("server")), "--pkey",
              str(pki.key("server")), "--no-tcp", "--no-udp"] if "-S" in v.opts["flags"] else ["--no-tls", "--no-dtls"]
    lab.spawn("b", f"{v.name}-server", "turnserver", "-n", "--listening-ip", SERVER_IP, "--relay-ip", SERVER_IP,
              "--listening-port", str(v.server_port), "--realm", "lab", "--lt-cred-mech", "--user",
              f"{user}:{password}", *secure, "--no-cli", "--log-file", "stdout",
              "--pidfile", str(lab.workdir / "turnserver.pid"), "--simple-log", "--allow-loopback-peers",
              "--min-port", "49160", "--max-port", "49260")  # a short relay range initialises in a moment
    lab.spawn("b", f"{v.name}-peer", "turnutils_peer", "-L", SERVER_IP, "-p", "3480")
    lab.wait_log(f"{v.name}-server", "Total General servers")
    time.sleep(1)
    rng = random.Random(v.seed)
    for burst in range(v.opts["calls"] * scale):
        lab.sh("a", "turnutils_uclient", *v.opts["flags"], "-u", user, "-w", password, "-e", SERVER_IP, "-r", "3480",
               "-p", str(v.server_port), "-n", str(rng.randint(150, 400)), "-l", str(rng.randint(100, 600)),
               "-z", "20", SERVER_IP, timeout=120)
        time.sleep(rng.uniform(1, 4))


def mqtt(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    """mosquitto with TLS in b; in a, a subscriber and a line-by-line publisher hold one long connection
    each (MQTT keepalive 10 s: PINGREQ/PINGRESP in the pauses). Chat-sized messages both ways at human
    intervals, now and then a photo-sized one, pushed by a publisher on the server's side."""
    conf = lab.workdir / "mosquitto.conf"
    conf.write_text(f"listener {v.server_port} {SERVER_IP}\nallow_anonymous true\ncafile {pki.crt('ca')}\n"
                    f"certfile {pki.crt('server')}\nkeyfile {pki.key('server')}\nlog_dest stdout\nuser root\n"
                    f"listener 1883 127.0.0.1\n")
    lab.spawn("b", f"{v.name}-broker", "mosquitto", "-c", str(conf))
    listening = lambda: all(f"{ip}:{port} " in lab.sh("b", "ss", "-Hltn") for ip, port in
                            ((SERVER_IP, v.server_port), ("127.0.0.1", 1883)))
    lab.wait_for(listening, "mosquitto's listeners")  # its log reaches the file only when it ends
    tls = ["-h", SERVER_IP, "-p", str(v.server_port), "--cafile", str(pki.crt("ca")), "-k", "10", "-q", "1"]
    lab.spawn("a", f"{v.name}-sub", "mosquitto_sub", *tls, "-i", "phone-sub", "-t", "chat/#")
    me = lab.spawn("a", f"{v.name}-pub", "mosquitto_pub", *tls, "-i", "phone-pub", "-t", "chat/me", "-l",
                   stdin=subprocess.PIPE)
    friend = lab.spawn("b", f"{v.name}-friend", "mosquitto_pub", "-h", "127.0.0.1", "-p", "1883", "-i", "friend",
                       "-t", "chat/friend", "-l", stdin=subprocess.PIPE)
    rng = random.Random(v.seed)
    for _ in range(v.opts["messages"] * scale):
        pub = me if rng.random() < 0.4 else friend
        size = rng.randint(20_000, 60_000) if rng.random() < 0.08 else rng.randint(10, 300)
        pub.stdin.write(base64.b64encode(rng.randbytes(size * 3 // 4)) + b"\n")
        pub.stdin.flush()
        time.sleep(rng.expovariate(1 / 2.5) if rng.random() < 0.85 else rng.uniform(12, 25))  # pauses: pings
    for pub in (me, friend):
        pub.stdin.close()
        pub.wait(10)


def scp(lab: Lab, pki: Pki, v: Variant, scale: int) -> None:
    """scp up and down at a limited rate, an sftp session listing and fetching, then an idle session
    held open by ServerAliveInterval keepalives."""
    opts = sshd(lab, v, "Subsystem=sftp internal-sftp")  # scp speaks SFTP since OpenSSH 9
    rng = random.Random(v.seed)
    up = lab.workdir / "upload.bin"
    up.write_bytes(rng.randbytes(800_000 * scale))
    port = str(v.server_port)
    lab.sh("a", "scp", *opts, "-P", port, "-l", "8000", str(up), f"root@{SERVER_IP}:{lab.workdir}/copy.bin",
           timeout=300)
    lab.sh("a", "scp", *opts, "-P", port, "-l", "6000", f"root@{SERVER_IP}:{lab.workdir}/copy.bin",
           str(lab.workdir / "back.bin"), timeout=300)
    batch = f"ls -l {lab.workdir}\nget {lab.workdir}/copy.bin {lab.workdir}/sftp.bin\nls\n"
    lab.sh("a", "sftp", *opts, "-P", port, "-b", "-", f"root@{SERVER_IP}", input=batch, timeout=300)
    lab.sh("a", "ssh", *opts, "-p", port, "-o", "ServerAliveInterval=3", f"root@{SERVER_IP}",
           f"sleep {v.opts['idle_s'] * scale}", timeout=60 + v.opts["idle_s"] * scale)


VARIANTS = [
    neg("bittorrent-utp-51413", bittorrent, 51413, "udp", "transmission-daemon",
        "Transmission 3.00 seeder and leecher over uTP (encryption preferred), HTTP tracker", 30,
        opts=dict(utp=True, encryption=1, megabytes=12, rate_kib=1200), needs=("transmission-daemon", "transmission-cli")),
    neg("bittorrent-mse-tcp-6881", bittorrent, 6881, "tcp", "transmission-daemon",
        "Transmission 3.00 over TCP only, encryption required (MSE/PE handshake), HTTP tracker", 30,
        opts=dict(utp=False, encryption=2, megabytes=12, rate_kib=1200), needs=("transmission-daemon", "transmission-cli")),
    neg("srtp-video-call-5004", media, 5004, "udp", "ffmpeg",
        "ffmpeg both ways: SRTP Opus 20 ms talk spurts + SRTP VP8 320x240 15 fps, one port pair per stream", 40,
        opts=dict(seconds=35, video=True, srtp=True), needs=("ffmpeg",)),
    neg("rtp-voice-16384", media, 16384, "udp", "ffmpeg",
        "ffmpeg both ways: plain RTP Opus 20 ms talk spurts", 30, opts=dict(seconds=25, video=False, srtp=False),
        needs=("ffmpeg",)),
    neg("turn-udp-3478", turn, 3478, "udp", "coturn",
        "coturn TURN over UDP, turnutils_uclient: Allocate, ChannelData every 20 ms, 4 sessions", 80,
        opts=dict(calls=4, flags=()), needs=("coturn",)),
    neg("turn-tcp-3478", turn, 3478, "tcp", "coturn",
        "coturn TURN over TCP, turnutils_uclient -t: Allocate, ChannelData every 20 ms, 3 sessions", 60,
        opts=dict(calls=3, flags=("-t",)), needs=("coturn",)),
    neg("turn-dtls-5349", turn, 5349, "udp", "coturn",
        "coturn TURN over DTLS (turnutils_uclient -S): Allocate, ChannelData every 20 ms, 3 sessions", 60,
        opts=dict(calls=3, flags=("-S",)), needs=("coturn",)),
    neg("mqtt-tls-8883", mqtt, 8883, "tcp", "mosquitto",
        "mosquitto TLS, a subscriber and a publisher held open (keepalive 10 s), chat-sized messages and pauses", 130,
        opts=dict(messages=25), needs=("mosquitto", "mosquitto-clients")),
    neg("ssh-scp-2222", scp, 2222, "tcp", "openssh-server",
        "OpenSSH scp up/down at 8/6 Mbit/s, sftp batch, then an idle session with ServerAliveInterval 3 s", 30,
        opts=dict(idle_s=20), needs=("openssh-server", "openssh-client")),
]
