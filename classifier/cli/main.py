"""`vpnid`: the entry point. Builds the parser from one module per command and runs the chosen one."""

from __future__ import annotations

import argparse
import importlib
import sys

from vpnid import __version__
from vpnid.classifier.cli.common import FORMATTER, ModelUnusable, error
from vpnid.classifier.runtime import prepare_process

# command -> module that registers it (and only it). A run imports just its command's module: importing
# every command's libraries to build the parser would cost a short `vpnid classify` a tenth of its run.
_CLI = "vpnid.classifier.cli."
COMMANDS = {
    "classify": _CLI + "classify", "eval": _CLI + "eval", "features": _CLI + "train", "train": _CLI + "train",
    "registry": _CLI + "registry", "leases": _CLI + "leases", "trial": _CLI + "trial", "demo": _CLI + "trial", "explain": _CLI + "explain",
    "batch": _CLI + "batch", "live": _CLI + "live", "lookalike": _CLI + "lookalike",
    "lab": "vpnid.pcaps.lab.cli",  # the lab stands apart: its own CLI module adds its subcommand
}


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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; when `command` names a known command, one that knows only that command's module."""
    parser = argparse.ArgumentParser(
        prog="vpnid",
        description="Find VPN tunnels in packet captures, passively, and audit them.",
        formatter_class=FORMATTER,
        epilog="Run 'vpnid COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
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
