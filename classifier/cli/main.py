"""`vpnid`: the entry point. Builds the parser from one module per command and runs the chosen one."""

from __future__ import annotations

import argparse
import importlib
import sys

from vpnid import __version__
from vpnid.classifier.cli.common import COMMANDS, FORMATTER, ModelUnusable, error
from vpnid.classifier.runtime import prepare_process


def version() -> str:
    """vpnid's version and the sha256 of the shipped model (or that there is none)."""
    from vpnid.classifier.labelling.loading import DEFAULT_MODEL, model_sha256

    sha = model_sha256(DEFAULT_MODEL)
    return f"vpnid {__version__} (model {DEFAULT_MODEL.name} sha256 {sha})" if sha else \
        f"vpnid {__version__} (no shipped model: signatures only)"


class _Version(argparse.Action):
    """--version, computed only when asked (hashing the model costs a run that does not print it)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print vpnid's version and the shipped model's sha256")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version())
        parser.exit()


def build_parser(command: str | None = None, listing: bool = False) -> argparse.ArgumentParser:
    """The parser: for a known `command`, one that knows only that command's module; else one that knows
    every command's module or, with `listing`, one that only lists the commands (help and errors)."""
    parser = argparse.ArgumentParser(
        prog="vpnid",
        description="Find VPN tunnels in packet captures, passively, and audit them.",
        formatter_class=FORMATTER,
        epilog="Run 'vpnid COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if listing:
        for name, cmd in COMMANDS.items():
            sub.add_parser(name, help=cmd.help)
        return parser
    modules = [COMMANDS[command].module] if command in COMMANDS else dict.fromkeys(c.module for c in COMMANDS.values())
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else None
    listing = command not in COMMANDS and not COMMANDS.keys() & set(argv)  # no command named anywhere
    args = build_parser(command, listing).parse_args(argv)
    prepare_process()
    try:
        return args.func(args)
    except BrokenPipeError:
        return 0
    except ModelUnusable:
        return 2
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
