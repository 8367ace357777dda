"""Every dissector the flow table runs. Adding a protocol = adding a module and a line here."""

from vpnid.features.dissectors.base import Dissector
from vpnid.features.dissectors.cstp import Cstp
from vpnid.features.dissectors.esp import AH, ESP
from vpnid.features.dissectors.ike import IKE
from vpnid.features.dissectors.l2tp import L2TP
from vpnid.features.dissectors.openconnect import OpenConnect
from vpnid.features.dissectors.openvpn import OpenVPN
from vpnid.features.dissectors.openvpn_wrapped import OpenVPNWrapped
from vpnid.features.dissectors.pptp import PPTP
from vpnid.features.dissectors.shadowsocks import Shadowsocks
from vpnid.features.dissectors.wireguard import WireGuard

# Order is the tie-break when two dissectors confirm on the same packet (it should not happen).
ALL: tuple[type[Dissector], ...] = (IKE, ESP, AH, WireGuard, OpenVPN, OpenVPNWrapped, OpenConnect, Cstp, Shadowsocks, PPTP,
                                    L2TP)
