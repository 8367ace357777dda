"""`vpnid`: the entry point. Builds the parser from one module per command and runs the chosen one."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

from vpnid import __version__
from vpnid.classifier.cli.common import FORMATTER, ModelUnusable, error
from vpnid.classifier.runtime import prepare_process


class Command(NamedTuple):
    module: str  # the module that registers the command (and only it: `register(sub)`)
    help: str  # its line in `vpnid --help`: the same text the module registers


# A run imports just its command's module: importing every command's libraries to build the parser would
# cost a short `vpnid classify` a tenth of its run. When no command is named (`vpnid --help`, `vpnid`, a
# mistyped command) the list of commands is built from the lines below without importing any module (they
# load numba, pyarrow and NumPy: ~0.4 s); tests/test_cli.py checks it is the list the modules give.
_CLI = "vpnid.classifier.cli."
COMMANDS = {
    "classify": Command(_CLI + "classify", "label the flows of capture files"),
    "eval": Command(_CLI + "eval", "score labels against a labelled-flows CSV"),
    "features": Command(_CLI + "train", "write per-flow feature vectors (Parquet)"),
    "train": Command(_CLI + "train", "train the flow model and write its card"),
    "registry": Command(_CLI + "registry", "keep the registry of sanctioned tunnels"),
    "leases": Command(_CLI + "leases", "load IP-assignment logs (RADIUS, DHCP, CGNAT) for attribution"),
    "trial": Command(_CLI + "trial", "run, list, report and compare trial runs"),
    "demo": Command(_CLI + "trial", "run a complete trial on the bundled captures and write its report"),
    "explain": Command(_CLI + "explain", "show the packets and evidence behind one flow's label"),
    "batch": Command(_CLI + "batch", "classify many captures in parallel (pool or Dask), resumable"),
    "live": Command(_CLI + "live", "classify traffic on a network interface as it passes"),
    "lookalike": Command(_CLI + "lookalike", "build look-alike negatives: ordinary flows moved onto VPN ports"),
    # the lab stands apart: its own CLI module adds its subcommand
    "lab": Command("vpnid.pcaps.lab.cli", "regenerate labelled captures with real VPN software (root)"),
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
