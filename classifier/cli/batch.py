"""`vpnid batch`: classify many captures on a local process pool or a Dask cluster, resumably."""

from __future__ import annotations

import argparse
import os
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vpnid.classifier.cli.common import (
    COMMANDS,
    FORMATTER,
    add_flow_options,
    add_risk_option,
    err,
    error,
    options,
    warn,
)
from vpnid.classifier.running.batch import Output, chains, executor, expand, run_chains
from vpnid.classifier.running.records import with_risks

BATCH_HELP = """\
Classify many captures in parallel (a local process pool, or a Dask cluster with --dask) and write
every flow, with its Community ID, as JSONL and Parquet. Inputs are files, directories (searched
recursively for .pcap/.pcapng/.cap, gzip ok) and globs.

Runs are resumable: captures listed in the output's manifest.json with the same size and mtime (or
contents) are skipped unless --force. A capture that cannot be read is reported and skipped; the exit
status is then 1.

--join treats the captures of each directory, in name order, as consecutive rotated files of one
capture: flows that span files are joined (a task hands its open flows, dissector state included, to
the task of the next file). The result is the same as `vpnid classify --join` over those files.

--risk NAME (repeatable) writes only the flows carrying any of the named risks; the manifest counts
the flows written, so a resumed run keeps the filter it was done with (--force redoes it).

examples:
  vpnid batch /data/captures --out flows/ --workers 4
  vpnid batch 'spool/**/*.pcap.gz' --join --out flows.parquet
  vpnid batch /shared/pcaps --out flows.parquet --dask tcp://scheduler:8786
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help=COMMANDS["batch"].help,
                       description=BATCH_HELP, formatter_class=FORMATTER)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="capture files, directories or globs")
    p.add_argument("--out", required=True, metavar="DIR|FILE.parquet", help="output directory or Parquet file")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="local worker processes (default: one per CPU)")
    p.add_argument("--dask", metavar="tcp://HOST:PORT", help="run the tasks on this Dask scheduler instead")
    p.add_argument("--join", action="store_true", help="join flows across the rotated files of each directory")
    p.add_argument("--force", action="store_true", help="redo captures the manifest lists as done")
    add_risk_option(p)
    add_flow_options(p)
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    captures = expand(args.inputs)
    if not captures:
        error("no capture files found")
        return 2
    out = Output(args.out, with_registry=False)
    todo = [c for c in chains(captures, args.join)
            if args.force or not all(out.manifest.is_done(p) for p in c)]
    skipped = len(captures) - sum(map(len, todo))
    if skipped:
        warn(f"{skipped} capture(s) already done (see {out.manifest.path}); --force redoes them")
    opts = options(args)
    risks = frozenset(args.risk)
    failed = 0
    with executor(args.workers, args.dask) as pool, _progress() as progress:
        task = progress.add_task("classifying", total=sum(map(len, todo)), pps="")
        packets, t0 = 0, time.perf_counter()
        for result in run_chains(todo, opts, pool.submit, args.join):
            for w in result.warnings:
                warn(w)
            if result.error is not None:
                error(result.error)
                failed += 1
            else:
                assert result.table is not None and result.fingerprint is not None
                result.table = with_risks(result.table, risks)
                parts = out.write(result)
                out.manifest.record(result.path, result.fingerprint, result.table.num_rows, result.packets, parts)
            packets += result.packets
            pps = packets / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, advance=1, pps=f"{pps:,.0f} packets/s")
    out.finish(captures)
    return 1 if failed else 0


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[pps]}"), TimeElapsedColumn(), console=err, transient=False)
