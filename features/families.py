"""The one table of labels vpnid gives a flow: every tunnel family a dissector or the model can name.

Dissectors, the model, the registry's protocols, evaluation and the lab all read their family names
from here, so adding a family is one line here plus its dissector file.
"""

from __future__ import annotations

OPENVPN = "openvpn"
WIREGUARD = "wireguard"
IPSEC = "ipsec"
OPENCONNECT = "openconnect"
SHADOWSOCKS = "shadowsocks"
PPTP = "pptp"
L2TP = "l2tp"
NONE = "none"  # not a tunnel (or nothing vouches for one)

TUNNEL_FAMILIES = (OPENVPN, WIREGUARD, IPSEC, OPENCONNECT, SHADOWSOCKS, PPTP, L2TP)  # every tunnel label, in this order
# The families third-party reference labels (nDPI's, the dev set's truth.csv) name on their own; any other
# tunnel family vpnid names counts as their `other_vpn`.
REFERENCE_FAMILIES = (OPENVPN, WIREGUARD, IPSEC)
