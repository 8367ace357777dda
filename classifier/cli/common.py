"""What every command shares: the stderr console, warnings and errors (untrusted text escaped), the flow
and model options, and the model and registry a run uses."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.console import Console
from rich_argparse import RawDescriptionRichHelpFormatter

from vpnid.classifier.audit.text import shown

if TYPE_CHECKING:
    from vpnid.classifier.audit.registry.match import Matcher
    from vpnid.classifier.labelling.compiled import CompiledModel
    from vpnid.classifier.labelling.model import FlowModel
    from vpnid.classifier.running.pipeline import Options

FORMATTER = RawDescriptionRichHelpFormatter


class Command(NamedTuple):
    module: str  # the module that registers the command (and only it: `register(sub)`)
    help: str  # its line in `vpnid --help`; the module registers the command with it


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


def console(**kwargs: Any) -> Console:
    """A console for output that holds untrusted text: no emoji codes, no highlighting; the text itself
    goes in through `shown` (markup escaped, control characters written out)."""
    return Console(highlight=False, emoji=False, **kwargs)


err = console(stderr=True)


def warn(msg: str) -> None:
    """Messages carry file names and capture contents: shown as text, never as markup or escapes."""
    err.print(f"[yellow]vpnid: warning:[/] {shown(msg)}", soft_wrap=True)


def error(msg: str) -> None:
    err.print(f"[red]vpnid: error:[/] {shown(msg)}", soft_wrap=True)


def add_flow_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("flow options")
    g.add_argument("--idle-timeout", type=float, default=120.0, metavar="S",
                   help="end a flow after S seconds without packets (default: %(default)s)")
    g.add_argument("--active-timeout", type=float, default=1800.0, metavar="S",
                   help="split a flow after S seconds from its first packet (default: %(default)s)")
    g.add_argument("--max-flows", type=int, default=1_000_000, metavar="N",
                   help="open flows kept in memory; beyond that the least recently seen are ended early "
                        "and counted (default: %(default)s)")
    add_model_options(p)


def _risk_name(name: str) -> str:
    from vpnid.features.risks import known

    if name not in known():
        raise argparse.ArgumentTypeError(f"unknown risk {shown(name)!r}; known risks: {', '.join(known())}")
    return name


def add_risk_option(p: argparse.ArgumentParser) -> None:
    """`--risk NAME` (repeatable): keep only flows that carry any of the named risks."""
    from vpnid.features.risks import known

    p.add_argument("--risk", action="append", type=_risk_name, default=[], metavar="NAME",
                   help=f"write only flows carrying this risk (repeatable: any of them); one of {', '.join(known())}")


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model options").add_mutually_exclusive_group()
    g.add_argument("--model", metavar="PATH", help="trained model for flows signatures leave undecided "
                                                    "(default: the shipped model, vpnid/models/vpnid.skops)")
    g.add_argument("--no-model", action="store_true", help="signatures only")


class ModelUnusable(Exception):
    """The model named (or shipped) cannot be loaded; the reason was already printed."""


class ChosenModel(NamedTuple):
    model: CompiledModel | FlowModel | None  # None: signatures only
    identity: tuple[str, str] | None  # the model file's name and sha256, as a trial records them


def load_model(args: argparse.Namespace) -> ChosenModel:
    """The model a command should use: --model, else the shipped one if present, else none."""
    if args.no_model:
        return ChosenModel(None, None)
    from vpnid.classifier.labelling.judgement import ModelError
    from vpnid.classifier.labelling.loading import DEFAULT_MODEL, load_identified

    if args.model is None and not DEFAULT_MODEL.exists():
        warn(f"no model at {DEFAULT_MODEL}; labelling by signatures only")
        return ChosenModel(None, None)
    path = Path(args.model or DEFAULT_MODEL)
    try:
        model, sha256 = load_identified(path)
    except ModelError as e:
        error(str(e))
        raise ModelUnusable from None
    return ChosenModel(model, (path.name, sha256))


def options(args: argparse.Namespace, chosen: ChosenModel | None = None) -> Options:
    """Pipeline options from the flow and model options every classifying command shares (`chosen`:
    the model, when the caller loaded it already to record which it was)."""
    from vpnid.classifier.running.pipeline import Options  # the flow engine: only commands that classify load it

    return Options(idle_timeout=args.idle_timeout, active_timeout=args.active_timeout, max_flows=args.max_flows,
                   drop_first=getattr(args, "drop_first", 0), model=(chosen or load_model(args)).model)


def registry_matcher(db: str | None) -> Matcher:
    """The registry of `--db`/$VPNID_DB, indexed for the cross-check; StoreError if there is none."""
    # registry, lease and sqlite code: loaded only by runs given a registry
    from vpnid.classifier.audit.leases.store import LeaseStore
    from vpnid.classifier.audit.registry.match import Matcher
    from vpnid.classifier.audit.registry.store import db_location, open_store

    with open_store(db_location(db), create=False) as store:
        return Matcher.build(store.select(), LeaseStore(store).index())
