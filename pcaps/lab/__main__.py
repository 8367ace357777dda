"""``python -m vpnid.pcaps.lab``: the lab CLI until it is wired into ``vpnid``."""
from __future__ import annotations

import argparse
import sys

from vpnid.pcaps.lab.cli import register


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnid.pcaps.lab")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lab", *sys.argv[1:]])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
