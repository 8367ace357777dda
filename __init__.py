"""vpnid: find VPN tunnels in packet captures, passively, and audit them against a registry.

The repository's top folders are this package's rooms (a setuptools package-dir mapping):
`vpnid.features` (capture -> packets -> flows -> dissector evidence -> feature vectors),
`vpnid.classifier` (labelling and model, audit, running, and the CLI on top) and `vpnid.pcaps`
(the lab and the bundled captures). The shipped model sits in `models/` as package data.
"""

__version__ = "0.1.0"
