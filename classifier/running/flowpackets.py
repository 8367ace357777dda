"""The captured frames of chosen flows, for evidence an analyst opens in Wireshark (`explain`, flagged.pcap).

Frames are found by re-reading the capture through the same read -> decode -> flow table loop the pipeline
uses (`vpnid.features.stream.flows_of`, which shows this plugin each captured chunk)
(without dissectors, which never move flow boundaries): a flow whose 5-tuple is wanted keeps its frames
while it is open, and when it ends its id says whether it is one of the wanted flows. So the selection
follows the pipeline's flow boundaries (timeouts, TCP port reuse, eviction) exactly, instead of
approximating them with a time window, and matches tunnels carried inside GRE or GTP-U by their inner
addresses. A datagram reassembled from IP fragments is represented by its last fragment's frame.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpnid.classifier.running.pipeline import Options, Warn
from vpnid.features.flows import Flow, FlowTable, FlowTableConfig, Segments, flow_id
from vpnid.features.packets import RawChunk, ipv4_mapped
from vpnid.features.stream import flows_of

_KEY = "flowpackets"
PCAP_MAGIC_NS = 0xA1B23C4D  # nanosecond pcap: keeps the capture's timestamps exactly
SNAPLEN = 262_144


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame of a flow, as it was in the capture."""

    number: int  # the flow's packet number (1-based, as in the record's verdict_packet)
    frame: int  # frame number in the capture file (what Wireshark shows)
    direction: int  # 0: initiator to responder
    ts_ns: int
    linktype: int
    wirelen: int
    data: bytes


def _address(text: str) -> bytes:
    """The flow table's 16-byte form of an address."""
    a = ipaddress.ip_address(text)
    return a.packed if a.version == 6 else ipv4_mapped(a.packed)


class _Collector:
    """Flow table plugin keeping the frames of flows with a wanted 5-tuple until their ids are known."""

    def __init__(self, wanted: Mapping[str, Mapping]) -> None:
        self.ids = set(wanted)
        self.ends = {(_address(r["src_ip"]), r["src_port"], _address(r["dst_ip"]), r["dst_port"])
                     for r in wanted.values()}
        self.chunk = RawChunk.empty()  # the chunk whose decoded packets the flow table is adding
        self.found: dict[str, list[Frame]] = {}

    def on_segments(self, seg: Segments) -> None:
        bounds = np.r_[seg.starts, len(seg.rows)].tolist()
        for i, flow in enumerate(seg.flows):
            if (flow.src, flow.sport, flow.dst, flow.dport) not in self.ends:
                continue
            frames: list[Frame] = flow.ext.setdefault(_KEY, [])  # type: ignore[assignment]
            rows = seg.rows[bounds[i]:bounds[i + 1]]
            at = np.searchsorted(self.chunk.frame, seg.table.frame[rows])
            for row_dir, j in zip(seg.direction[bounds[i]:bounds[i + 1]].tolist(), at.tolist()):
                off, cap = int(self.chunk.offset[j]), int(self.chunk.caplen[j])
                frames.append(Frame(len(frames) + 1, int(self.chunk.frame[j]), row_dir, int(self.chunk.ts_ns[j]),
                                    int(self.chunk.linktype[j]), int(self.chunk.wirelen[j]),
                                    self.chunk.data[off:off + cap].tobytes()))

    def on_end(self, flow: Flow) -> None:
        frames = flow.ext.pop(_KEY, None)
        if frames and (fid := flow_id(flow)) in self.ids:
            self.found[fid] = frames  # type: ignore[assignment]


def flow_frames(path: str, wanted: Mapping[str, Mapping], opts: Options | None = None,
                warn: Warn = lambda _m: None) -> dict[str, list[Frame]]:
    """Frames of the flows of one capture named by flow_id (`wanted`: flow_id -> its record, which gives
    the 5-tuple). `opts` must be the flow options the records were made with, or the ids will not match."""
    opts = opts or Options()
    collector = _Collector(wanted)
    table = FlowTable([], FlowTableConfig(opts.idle_timeout, opts.active_timeout, opts.max_flows), [collector])

    def show(chunk: RawChunk) -> None:
        collector.chunk = chunk

    for _ in flows_of(path, table, opts.chunk_frames, {}, warn, on_chunk=show):
        pass
    return collector.found


def write_pcaps(frames: Iterable[Frame], path: Path) -> list[Path]:
    """Write frames in time order to a nanosecond pcap with their own link type. A pcap holds one link
    type, so frames of other link types (rare: mixed pcapng interfaces) go to `<stem>-linktype-N.pcap`
    beside it. Returns the files written (`path` always, empty if there are no frames)."""
    by_link: dict[int, list[Frame]] = {}
    for f in sorted(frames, key=lambda f: f.ts_ns):
        by_link.setdefault(f.linktype, []).append(f)
    main = max(by_link, key=lambda k: len(by_link[k]), default=1)
    written = []
    for linktype in [main, *(k for k in by_link if k != main)]:
        out = path if linktype == main else path.with_name(f"{path.stem}-linktype-{linktype}{path.suffix}")
        with open(out, "wb") as f:
            f.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, SNAPLEN, linktype))
            for fr in by_link.get(linktype, []):
                sec, nsec = divmod(fr.ts_ns, 1_000_000_000)
                f.write(struct.pack("<IIII", sec, nsec, len(fr.data), fr.wirelen) + fr.data)
        written.append(out)
    return written
