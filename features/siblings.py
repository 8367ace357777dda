"""Label a tunnel's control channel through its data channel (nDPI keeps a similar cache for tinc).

Some tunnels split into two flows between the same hosts: AnyConnect/OpenConnect sends its data over
DTLS with keys handed over inside the TLS control connection (CSTP), which stays open, quiet and
indistinguishable from HTTPS for as long as the DTLS channel works. Once a dissector confirms the data
channel, a flow of the control channel's transport from the same client to the same server address
and port, still open at that moment, is that tunnel's control channel.

A dissector opts in by naming the transport of its control channel in `sibling_transport`.
"""

from __future__ import annotations

from collections.abc import Sequence

from vpnid.features.dissectors.base import Dissector
from vpnid.features.flows import Flow, Segments, Verdict, flow_id

CONFIDENCE = 0.8  # one step below the data channel's own signature: the link is by endpoints only


class SiblingPlugin:
    """Flow plugin: remembers confirmed data channels, labels the matching control channels as they end."""

    def __init__(self, dissectors: Sequence[type[Dissector]]) -> None:
        self.control = {d.family: d.sibling_transport for d in dissectors if d.sibling_transport is not None}
        # (control transport, client, server, server port) -> (family, data channel flow id, its first
        # packet time); both orientations are kept, as a capture that starts mid-flow may name the server
        # as a flow's initiator
        self.channels: dict[tuple[int, bytes, bytes, int], tuple[str, str, int]] = {}

    def on_segments(self, seg: Segments) -> None:
        if not self.control:
            return
        for flow in seg.flows:
            v = flow.verdict
            if v is not None and v.family in self.control:
                proto = self.control[v.family]
                if (proto, flow.src, flow.dst, flow.dport) not in self.channels:
                    channel = (v.family, flow_id(flow), flow.first_ns)
                    self.channels[(proto, flow.src, flow.dst, flow.dport)] = channel
                    self.channels[(proto, flow.dst, flow.src, flow.sport)] = channel

    def on_end(self, flow: Flow) -> None:
        if flow.verdict is not None or not self.channels:
            return
        hit = (self.channels.get((flow.proto, flow.src, flow.dst, flow.dport))
               or self.channels.get((flow.proto, flow.dst, flow.src, flow.sport)))
        if hit is None or flow.last_ns < hit[2]:
            return  # no data channel, or this flow had ended before the data channel started
        family, data_flow, _ = hit
        flow.verdict = Verdict(family, CONFIDENCE, [
            f"control channel of {family} data channel {data_flow}: same client, server and port, open "
            "while the data channel ran"], {"data_channel": data_flow}, flow.total_packets)
