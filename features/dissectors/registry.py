"""Every dissector the flow table runs. Adding a protocol = adding a module and a line here."""

from features.dissectors.base import Dissector
from features.dissectors.cstp import Cstp
from features.dissectors.esp import AH, ESP
from features.dissectors.ike import IKE
from features.dissectors.openconnect import OpenConnect
from features.dissectors.openvpn import OpenVPN
from features.dissectors.shadowsocks import Shadowsocks
from features.dissectors.wireguard import WireGuard

# Order is the tie-break when two dissectors confirm on the same packet (it should not happen).
ALL: tuple[type[Dissector], ...] = (IKE, ESP, AH, WireGuard, OpenVPN, OpenConnect, Cstp, Shadowsocks)
