#!/bin/sh
# Replaces vpnc-script, which would rewrite the host's /etc/resolv.conf: address and lab route only.
[ "$reason" = connect ] || exit 0
ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
ip link set "$TUNDEV" up mtu "${INTERNAL_IP4_MTU:-1400}"
ip route add 198.19.4.0/24 dev "$TUNDEV"
