"""The lab (real VPN software in network namespaces) and the project's own labelled captures.

`CORPUS` is the bundled corpus (`corpus/*.pcap` and its `manifest.csv`), package data found through
`importlib.resources`, so `vpnid demo` finds it in a checkout and in an installed wheel alike.
"""

from importlib.resources import files
from pathlib import Path

CORPUS = Path(str(files(__name__) / "corpus"))
