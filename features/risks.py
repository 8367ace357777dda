"""Flow risks: properties of a flow worth a look that name no protocol (nDPI's flow risk set).

A risk is not evidence for a label and never makes one: a flow can carry risks and be labelled `none`.
Dissectors raise them (`Dissector.raise_risk`), whether or not they confirm; the flow record lists every
risk any of the flow's dissectors raised.
"""

FULLY_ENCRYPTED = "fully_encrypted"
"""Both first payload segments of a TCP flow whose start was seen, client first, look random by the
Great Firewall's passive rules (Wu et al., USENIX Security 2023: no exemption for bits per byte, printable
prefix, share or run) and show no clear length field or zeroed header: what Shadowsocks, VMess or obfs4
look like, but also compressed, game and obfuscated messenger protocols (nDPI: NDPI_FULLY_ENCRYPTED)."""

RESERVED_SPI = "reserved_spi"
"""An IPsec packet (IP protocol 50/51) whose SPI is in the range 1-255 that RFC 4303 §2.1 reserves (or 0,
never sent on the wire): manually keyed SAs, test traces, or a malformed header. The flow is still labelled
`ipsec` (the IP header says ESP), at a lower confidence."""

BLOCKED_ATTEMPT = "blocked_attempt"
"""A tunnel's opening message sent again and again and never answered: WireGuard initiations retried every
~5 s, retransmitted PPTP Start-Control-Connection-Requests or L2TP SCCRQs with no reply in the capture.
The attempt is still labelled with its protocol; the risk says the tunnel never came up (blocked, or
the server is gone)."""

WRAPPED_TUNNEL = "wrapped_tunnel"
"""A tunnel carried inside another encrypted layer (OpenVPN in stunnel's TLS or in a Shadowsocks-like fully
encrypted proxy), recognised through the outer layer by its handshake's sizes and directions: the wrapper
was put there to hide the tunnel, which a registry review should know."""

OBFUSCATED = "obfuscated"
"""A tunnel whose own bytes were made to look random: recognised under a fully encrypted wrapper (OpenVPN
through a Shadowsocks-like proxy, random from the first byte), not merely inside TLS. Raised with
`wrapped_tunnel`; a flow that only looks random, with no tunnel found in it, carries `fully_encrypted`
instead (nDPI: NDPI_OBFUSCATED_TRAFFIC)."""

MALFORMED_HEADER = "malformed_header"
"""A packet whose header claims a tunnel protocol beyond chance but breaks that protocol's rules: an IKE
message whose exact length field and version byte say IKE but whose header or payload chain is wrong
(nDPI's malformed IPsec), or whose length field ends a well-formed message before the datagram does;
raw ESP/AH (IP protocol 50/51) shorter than its fixed header (8 / 12 B), or AH with a non-zero reserved
field or no room for an ICV; an L2TP control message followed by bytes its Length field leaves out.
Raised by the dissector that saw it, which labels nothing on that packet. A length field larger than the
bytes captured is left alone: a snaplen cuts packets that were whole on the wire (only a snaplen below
42 B could cut an ESP/AH header)."""


def known() -> tuple[str, ...]:
    """Every risk name this module defines, sorted (what `--risk` accepts)."""
    return tuple(sorted(v for k, v in globals().items() if k.isupper() and isinstance(v, str)))
