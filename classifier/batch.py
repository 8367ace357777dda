"""`vpnid batch`: classify many captures on a local process pool or a Dask cluster, resumably.

The unit of work is one capture file. A *chain* is the files whose flows may span each other: a single
capture, or with `--join` the captures of one directory in name order (rotated files, which tcpdump
-G/-C and most recorders name in time order). A task classifies one file given the `Carry` of the file
before it in its chain (the open flows, dissector state included) and returns that file's records plus
the carry for the next one; chains run in parallel, the files of one chain in turn. So a local run, a
pool run and a Dask run compute exactly the same records.

Output: `--out DIR` gets one JSONL and one Parquet file per capture; `--out FILE.parquet` gets one
Parquet file, assembled from per-capture parts kept beside it (`FILE.parquet.parts/`). Either way a
manifest (`manifest.json`) lists each finished capture with its size, mtime and SHA-256; a rerun skips
those (all files of a chain, for a joined chain) unless `--force`, and redoes the rest.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import hashlib
import json
import os
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich_argparse import RawDescriptionRichHelpFormatter

from classifier.pipeline import CaptureStats, Carry, Options, classify_capture, end_carry
from classifier.records import FlowRecord, output_fields
from classifier.runtime import tune_gc
from features.packets import CaptureError

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")
MANIFEST = "manifest.json"
HASH_BLOCK = 8 << 20


# ---------------------------------------------------------------------------------------------- inputs
def expand(inputs: list[str]) -> list[str]:
    """Files, directories (their captures, recursively, in name order) and globs -> capture paths, each
    once, in the order given."""
    out: dict[str, None] = {}
    for item in inputs:
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        for m in matches:
            p = Path(m)
            if p.is_dir():
                out.update(dict.fromkeys(str(f) for f in sorted(p.rglob("*"))
                                         if f.is_file() and f.name.lower().endswith(CAPTURE_SUFFIXES)))
            else:
                out[str(p)] = None
    return list(out)


def chains(paths: list[str], join: bool) -> list[list[str]]:
    """Each file alone, or (join) the files of each directory together, in the order given."""
    if not join:
        return [[p] for p in paths]
    by_dir: dict[str, list[str]] = {}
    for p in paths:
        by_dir.setdefault(str(Path(p).resolve().parent), []).append(p)
    return list(by_dir.values())


# ---------------------------------------------------------------------------------------------- manifest
@dataclass(frozen=True, slots=True)
class Fingerprint:
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: str) -> Fingerprint:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                h.update(block)
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, h.hexdigest())

    def same_file(self, path: str) -> bool:
        """Same size and mtime, or (touched, copied) same size and contents."""
        st = os.stat(path)
        if st.st_size != self.size:
            return False
        return st.st_mtime_ns == self.mtime_ns or Fingerprint.of(path).sha256 == self.sha256


class Manifest:
    """Finished captures (absolute path -> fingerprint, counts, output part), saved after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def is_done(self, capture: str) -> bool:
        entry = self.done.get(os.path.abspath(capture))
        if entry is None or not os.path.exists(capture):
            return False
        fp = Fingerprint(entry["size"], entry["mtime_ns"], entry["sha256"])
        return fp.same_file(capture) and all((self.path.parent / p).exists() for p in entry["parts"])

    def record(self, capture: str, fp: Fingerprint, flows: int, packets: int, parts: list[str]) -> None:
        self.done[os.path.abspath(capture)] = {"size": fp.size, "mtime_ns": fp.mtime_ns, "sha256": fp.sha256,
                                               "flows": flows, "packets": packets, "parts": parts}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=1, sort_keys=True))
        tmp.replace(self.path)


# ---------------------------------------------------------------------------------------------- records
_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "list[str]": pa.list_(pa.string())}


def arrow_schema() -> pa.Schema:
    """FlowRecord's fields as Arrow columns (annotations are strings: `from __future__ import annotations`)."""
    cols = []
    for f in fields(FlowRecord):
        base = typing.cast(str, f.type).removesuffix(" | None")
        cols.append(pa.field(f.name, _ARROW_TYPES[base], nullable=True))
    return pa.schema(cols)


def to_arrow(records: list[FlowRecord]) -> pa.Table:
    schema = arrow_schema()
    return pa.Table.from_pydict({name: [getattr(r, name) for r in records] for name in schema.names}, schema)


# ---------------------------------------------------------------------------------------------- tasks
@dataclass(slots=True)
class FileResult:
    """What one task hands back: its file's records (Arrow), counts, problems and the carry."""

    path: str
    table: pa.Table | None
    packets: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    fingerprint: Fingerprint | None = None
    carry: Carry | None = None


def classify_file(path: str, opts: Options, carry: Carry | None, last: bool) -> FileResult:
    """One task: classify `path` (continuing `carry` when its chain has one); the chain's last file also
    ends the flows still open. A capture error is reported, not raised, and the chain goes on."""
    tune_gc()
    t0 = time.perf_counter()
    stats = CaptureStats()
    warnings: list[str] = []
    records: list[FlowRecord] = []
    error = None
    try:
        records = list(classify_capture(path, opts, warn=warnings.append, stats=stats, carry=carry))
    except CaptureError as e:
        error = str(e)
    if last and carry is not None:
        records += end_carry(carry, opts)
        carry = None
    fp = Fingerprint.of(path) if error is None else None
    return FileResult(path, to_arrow(records), stats.packets, time.perf_counter() - t0, warnings, error, fp,
                      carry)


Submit = Callable[..., cf.Future]


def run_chains(todo: list[list[str]], opts: Options, submit: Submit, join: bool) -> Iterator[FileResult]:
    """Schedule every chain's files in turn, chains side by side; yield results as tasks finish."""
    pending: dict[cf.Future, tuple[list[str], int]] = {}

    def start(chain: list[str], i: int, carry: Carry | None) -> None:
        pending[submit(classify_file, chain[i], opts, carry, i == len(chain) - 1)] = (chain, i)

    for chain in todo:
        start(chain, 0, Carry() if join else None)
    while pending:
        finished, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            chain, i = pending.pop(fut)
            result = fut.result()
            if i + 1 < len(chain):
                start(chain, i + 1, result.carry)
            result.carry = None
            yield result


# ---------------------------------------------------------------------------------------------- output
class Output:
    """Where results go: per-capture JSONL + Parquet in a directory, or one Parquet file from parts."""

    def __init__(self, out: str, with_registry: bool) -> None:
        self.single = out.endswith(".parquet")
        self.target = Path(out)
        self.dir = Path(out + ".parts") if self.single else self.target
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.dir / MANIFEST)
        self.columns = list(output_fields(with_registry))

    def part_name(self, capture: str) -> str:
        return f"{Path(capture).name}.{hashlib.sha1(os.path.abspath(capture).encode()).hexdigest()[:10]}"

    def write(self, result: FileResult) -> list[str]:
        """Write one capture's records; returns the part files (relative to the output directory)."""
        table = result.table.select(self.columns)
        name = self.part_name(result.path)
        pq.write_table(table, self.dir / f"{name}.parquet")
        parts = [f"{name}.parquet"]
        if not self.single:
            with open(self.dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            parts.append(f"{name}.jsonl")
        return parts

    def finish(self, captures: list[str]) -> None:
        """One Parquet file from the parts of every finished capture, in input order."""
        if not self.single:
            return
        parts = [self.dir / f"{self.part_name(c)}.parquet" for c in captures
                 if os.path.abspath(c) in self.manifest.done]
        tables = [pq.read_table(p) for p in parts]
        schema = arrow_schema()
        empty = pa.Table.from_pylist([], schema).select(self.columns)
        pq.write_table(pa.concat_tables(tables) if tables else empty, self.target)


# ---------------------------------------------------------------------------------------------- command
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

examples:
  vpnid batch /data/captures --out flows/ --workers 4
  vpnid batch 'spool/**/*.pcap.gz' --join --out flows.parquet
  vpnid batch /shared/pcaps --out flows.parquet --dask tcp://scheduler:8786
"""


def register(sub: argparse._SubParsersAction) -> None:
    from classifier.cli import add_flow_options

    p = sub.add_parser("batch", help="classify many captures in parallel (pool or Dask), resumable",
                       description=BATCH_HELP, formatter_class=RawDescriptionRichHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="capture files, directories or globs")
    p.add_argument("--out", required=True, metavar="DIR|FILE.parquet", help="output directory or Parquet file")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="local worker processes (default: one per CPU)")
    p.add_argument("--dask", metavar="tcp://HOST:PORT", help="run the tasks on this Dask scheduler instead")
    p.add_argument("--join", action="store_true", help="join flows across the rotated files of each directory")
    p.add_argument("--force", action="store_true", help="redo captures the manifest lists as done")
    add_flow_options(p)
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from classifier.cli import error, options, warn

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
    failed = 0
    with _executor(args) as pool, _progress() as progress:
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
                parts = out.write(result)
                out.manifest.record(result.path, result.fingerprint, result.table.num_rows, result.packets, parts)
            packets += result.packets
            pps = packets / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, advance=1, pps=f"{pps:,.0f} packets/s")
    out.finish(captures)
    return 1 if failed else 0


def _progress() -> Progress:
    from classifier.cli import err

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[pps]}"), TimeElapsedColumn(), console=err, transient=False)


def _executor(args: argparse.Namespace) -> cf.Executor:
    """A local process pool, or an executor whose tasks run on the Dask cluster at `--dask`."""
    if args.dask:
        from distributed import Client

        return _DaskExecutor(Client(args.dask))
    return cf.ProcessPoolExecutor(max_workers=max(1, args.workers))


class _DaskExecutor(cf.Executor):
    """`Client.get_executor` (concurrent.futures interface), closing the client when done. Tasks are not
    `pure`: a rerun must run again, not return a cached result."""

    def __init__(self, client) -> None:
        self.client = client
        self.executor = client.get_executor(pure=False)

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self.executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.executor.shutdown(wait=wait)
        self.client.close()
