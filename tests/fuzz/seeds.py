"""Build the committed seed corpus: `python -m tests.fuzz.seeds` rewrites tests/fuzz/corpus/.

Seeds are small valid inputs the mutations start from, so the fuzzer reaches deep states (a confirmed
handshake, a reassembled datagram, a decapsulated tunnel) instead of bouncing off the first check:
the first packets of the committed lab captures in pcaps/corpus, re-encoded for each target, plus frames
built here for the link layers and tunnels the lab does not produce.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

from scapy.all import GRE, IP, UDP, CookedLinuxV2, Dot1Q, Ether, IPv6, IPv6ExtHdrFragment, fragment, fragment6
from scapy.contrib.gtp import GTP_U_Header
from scapy.layers.vxlan import VXLAN

from tests import pcapbuild as pb
from tests.fuzz import targets as t
from tests.vpnbytes_wg_ipsec import ah
from vpnid.features.capture import read_chunks
from vpnid.features.decode import Reassembler, decode
from vpnid.features.dissectors import catalog
from vpnid.features.dissectors.base import State
from vpnid.features.dissectors.esp import AH
from vpnid.features.packets import IPPROTO_AH, LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW

DISSECTORS = {f"dissect_{cls.__name__.lower()}": cls for cls in catalog.ALL}
LAB = Path(__file__).parent.parent.parent / "pcaps" / "corpus"
CORPUS = Path(__file__).parent / "corpus"
FRAMES_PER_CAPTURE = 12
SEED_BYTES = 16_384  # libFuzzer -max_len in __main__


def lab_frames(path: Path, n: int = FRAMES_PER_CAPTURE) -> list[tuple[int, int, bytes]]:
    """(ts_ns, link type, bytes) of the first n frames of a lab capture."""
    out = []
    for chunk in read_chunks(path, chunk_frames=n):
        for i in range(min(n, len(chunk))):
            off = int(chunk.offset[i])
            out.append((int(chunk.ts_ns[i]), int(chunk.linktype[i]),
                        chunk.data[off:off + int(chunk.caplen[i])].tobytes()))
        break
    return out


def capture_seeds() -> list[bytes]:
    """Each lab capture's first frames as pcap (µs, ns, big-endian) and pcapng (EPB, SPB, PB, two
    sections), so every reader path has a valid start."""
    seeds = []
    for i, path in enumerate(sorted(LAB.glob("*.pcap"))):
        frames = [(d, ts // 10**9, ts % 10**9) for ts, _, d in lab_frames(path, 6)]
        style = i % 4
        if style == 0:
            seeds.append(pb.pcap_file([(d, s, f // 1000) for d, s, f in frames]))
        elif style == 1:
            seeds.append(pb.pcap_file(frames, order=">", magic=pb.PCAP_MAGIC_NS))
        elif style == 2:
            body = b"".join(pb.epb(0, s * 10**6 + f // 1000, d) for d, s, f in frames[:3])
            body += pb.spb(frames[3][0]) + pb.pb(0, 0, frames[4][0]) if len(frames) > 4 else b""
            seeds.append(pb.shb() + pb.idb(LINKTYPE_ETHERNET) + body)
        else:
            half = len(frames) // 2
            seeds.append(pb.shb() + pb.idb(LINKTYPE_ETHERNET, tsresol=9)
                         + b"".join(pb.epb(0, s * 10**9 + f, d) for d, s, f in frames[:half])
                         + pb.shb(">") + pb.idb(LINKTYPE_ETHERNET, ">", tsoffset=1)
                         + b"".join(pb.epb(0, s * 10**6, d, ">") for d, s, f in frames[half:]))
    return [s for s in seeds if len(s) <= SEED_BYTES]


def pipeline_seeds() -> list[bytes]:
    """Whole handshakes: the first frames of every lab capture, as one pcap each."""
    seeds = []
    for path in sorted(LAB.glob("*.pcap")):
        frames = [(d, ts // 10**9, ts % 10**9 // 1000) for ts, _, d in lab_frames(path)]
        while frames and len(pb.pcap_file(frames)) > SEED_BYTES:
            frames.pop()
        seeds.append(pb.pcap_file(frames))
    return seeds


def _tunnel_frames() -> list[tuple[bytes, int]]:
    """Link layers and tunnels the lab captures do not have: VLAN, SLL2, BSD loopback, raw IP, GRE,
    GTP-U, VXLAN, IP-in-IP, GRE nested past the depth limit, IPv4 and IPv6 fragments."""
    inner = IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=40000, dport=51820) / (b"\x01\0\0\0" + bytes(144))
    outer = IP(src="192.0.2.1", dst="192.0.2.2")
    nested = inner
    for _ in range(6):
        nested = IP(src="192.0.2.3", dst="192.0.2.4") / GRE() / nested
    big = IP(src="10.2.0.1", dst="10.2.0.2", id=7) / UDP(sport=500, dport=500) / bytes(1200)
    big6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=9) / UDP(sport=500, dport=500) / bytes(1200)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames = [
        (bytes(eth / Dot1Q(vlan=5) / inner), LINKTYPE_ETHERNET),
        (bytes(CookedLinuxV2(proto=0x0800) / inner), LINKTYPE_LINUX_SLL2),
        (struct.pack("<I", 2) + bytes(inner), LINKTYPE_NULL),
        (bytes(outer / GRE() / inner), LINKTYPE_RAW),
        (bytes(outer / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=1) / inner), LINKTYPE_RAW),
        (bytes(outer / UDP(sport=4789, dport=4789) / VXLAN(vni=1) / eth / inner), LINKTYPE_RAW),
        (bytes(outer / inner), LINKTYPE_RAW),
        (bytes(nested), LINKTYPE_RAW),
    ]
    frames += [(bytes(f), LINKTYPE_RAW) for f in fragment(big, 400)]
    frames += [(bytes(f), LINKTYPE_RAW) for f in fragment6(big6, 500)]
    return frames


def decode_seeds() -> list[bytes]:
    seeds = []
    for path in sorted(LAB.glob("*.pcap"))[::3]:
        seeds.append(t.encode_frames([(d, lt) for _, lt, d in lab_frames(path, 4)], LINKTYPE_ETHERNET))
    tunnels = _tunnel_frames()
    seeds.append(t.encode_frames(tunnels, LINKTYPE_RAW))
    seeds += [t.encode_frames([(frame, lt)], lt) for frame, lt in tunnels[:8]]
    seeds.append(t.encode_frames(tunnels[8:], LINKTYPE_RAW, dt_s=1))  # fragments only, a second apart
    return seeds


def lab_flows(path: Path) -> list[tuple[int, list[tuple[float, int, bytes, bytes, int, int, int, bytes]]]]:
    """(proto, packets) of each flow of a lab capture: (ts, direction, src, dst, sport, dport, flags,
    payload) in capture order, the direction relative to the flow's first sender."""
    flows: dict[tuple, tuple[int, list]] = {}
    reasm = Reassembler()
    for chunk in read_chunks(path):
        tab = decode(chunk, reasm)
        for i in range(len(tab)):
            src, dst = tab.src[i].tobytes(), tab.dst[i].tobytes()
            sp, dp, proto = int(tab.sport[i]), int(tab.dport[i]), int(tab.proto[i])
            key = (proto, *sorted([(src, sp), (dst, dp)]))
            first = flows.setdefault(key, ((src, sp), []))
            direction = 0 if (src, sp) == first[0] else 1
            first[1].append((int(tab.ts_ns[i]) / 1e9, direction, src, dst, sp, dp, int(tab.tcp_flags[i]),
                             tab.payload(i)))
    return [(key[0], pkts) for key, (_, pkts) in flows.items()]


def dissector_seeds() -> dict[str, list[bytes]]:
    """Per dissector: the first payload packets of lab flows it confirms (two per capture at most), then
    of negative-lab flows it must reject; AH, which the lab does not run, from built headers."""
    confirmed: dict[str, list[bytes]] = {name: [] for name in DISSECTORS}
    rejected: dict[str, list[bytes]] = {name: [] for name in DISSECTORS}
    for path in sorted(LAB.glob("*.pcap")):
        taken: dict[str, int] = {}
        for proto, pkts in lab_flows(path):
            payloads = [(d, p) for _, d, _, _, _, _, _, p in pkts if p][:20]
            for name, cls in DISSECTORS.items():
                data = t.encode_packets(proto, payloads, cls.transports) if proto in cls.transports else b""
                if not payloads or not data or len(data) > SEED_BYTES or taken.get(name, 0) >= 2:
                    continue
                d = cls()
                for pkt in t.flow_packets(data, cls.transports):
                    d.feed(pkt)
                if d.state is State.CONFIRMED:
                    confirmed[name].append(data)
                    taken[name] = taken.get(name, 0) + 1
                elif path.name.startswith("neg-"):
                    rejected[name].append(data)
    confirmed["dissect_ah"] += [t.encode_packets(IPPROTO_AH, [(i % 2, ah(0x1000 + i % 2, 1 + i // 2))
                                                              for i in range(6)], AH.transports)]
    return {name: confirmed[name][:16] + rejected[name][:8] for name in DISSECTORS}


def flow_seeds() -> list[bytes]:
    """Lab flows re-encoded for the flow table (addresses and ports mapped onto the target's pools,
    payloads cut to 255 bytes), several flows per seed so that they interleave."""
    seeds = []
    for path in sorted(LAB.glob("*.pcap"))[::2]:
        packets = sorted((p, proto) for proto, pkts in lab_flows(path) if proto in t.PROTOS for p in pkts[:10])[:40]
        addrs: dict[bytes, int] = {}
        encoded, last = [], packets[0][0][0] if packets else 0.0
        for (ts, _, src, dst, sp, dp, flags, payload), proto in packets:
            ports = [t.PORTS.index(p) if p in t.PORTS else len(t.PORTS) - 1 for p in (sp, dp)]
            ends = [addrs.setdefault(a, len(addrs) % len(t.ADDRESSES)) for a in (src, dst)]
            encoded.append((min(ts - last, 31.0), *ends, *ports, t.PROTOS.index(proto), flags, payload[:255]))
            last = ts
        seeds.append(t.encode_flow_packets(encoded))
    return seeds


def main() -> None:
    corpus = {"capture": capture_seeds(), "pipeline": pipeline_seeds(), "decode": decode_seeds(),
              "flows": flow_seeds(), **dissector_seeds()}
    shutil.rmtree(CORPUS, ignore_errors=True)
    for target, seeds in corpus.items():
        folder = CORPUS / target
        folder.mkdir(parents=True)
        for seed in seeds[:24]:
            (folder / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
        print(f"{target}: {min(len(seeds), 24)} seeds, {sum(map(len, seeds[:24]))} bytes")


if __name__ == "__main__":
    main()
