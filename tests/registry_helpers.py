"""Shared helpers for the registry tests: CSV rows and the `vpnid registry` parser, run in-process."""

from __future__ import annotations

import argparse

from vpnid.classifier.audit.registry.registration import FIELDS
from vpnid.classifier.cli import registry as cli

HEADER = ",".join(FIELDS) + "\n"
GOOD = {"registration_id": "R1", "organization": "First Bank", "category": "bank", "protocol": "openvpn",
        "client_networks": "198.18.0.1/32", "server_endpoints": "198.18.0.2/32:51820", "valid_from": "2020-01-01",
        "valid_until": "", "status": "active", "notes": "", "subscriber_id": "", "phone": "", "account_id": ""}


def row(**changes: str) -> str:
    return ",".join((GOOD | changes)[k] for k in FIELDS) + "\n"


def vpnid_registry(*argv: str) -> int:
    """Parse and run like `vpnid registry ...` (classifier/cli.py wires the same `register`)."""
    parser = argparse.ArgumentParser(prog="vpnid")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["registry", *argv])
    return args.func(args)
