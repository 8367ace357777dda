"""Protocol dissectors, one small module per protocol. Adding a protocol = adding a module and a line here."""

from features.dissectors.base import Dissector, FlowPacket, State
from features.dissectors.esp import AH, ESP
from features.dissectors.ike import IKE
from features.dissectors.openvpn import OpenVPN
from features.dissectors.wireguard import WireGuard

# Order is the tie-break when two dissectors confirm on the same packet (it should not happen).
ALL: tuple[type[Dissector], ...] = (IKE, ESP, AH, WireGuard, OpenVPN)

__all__ = ["ALL", "AH", "ESP", "IKE", "Dissector", "FlowPacket", "OpenVPN", "State", "WireGuard"]
