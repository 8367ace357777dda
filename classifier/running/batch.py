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

import concurrent.futures as cf
import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vpnid.classifier.running.output import arrow_schema, jsonl_text
from vpnid.classifier.running.pipeline import CaptureStats, Carry, Options, classify_batches, end_carry_batch
from vpnid.classifier.running.records import output_fields
from vpnid.classifier.runtime import prepare_process
from vpnid.features.packets import CaptureError

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
    prepare_process()
    t0 = time.perf_counter()
    stats = CaptureStats()
    warnings: list[str] = []
    batches: list[pa.RecordBatch] = []
    error = None
    try:
        batches = list(classify_batches(path, opts, warn=warnings.append, stats=stats, carry=carry))
    except CaptureError as e:
        error = str(e)
    if last and carry is not None:
        if (tail := end_carry_batch(carry, opts)) is not None:
            batches.append(tail)
        carry = None
    fp = Fingerprint.of(path) if error is None else None
    schema = arrow_schema()
    table = pa.Table.from_batches([_with_registry(b, schema) for b in batches], schema)
    return FileResult(path, table, stats.packets, time.perf_counter() - t0, warnings, error, fp, carry)


def _with_registry(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """A batch in the full record schema (registry columns null when no registry was checked)."""
    if batch.schema.equals(schema):
        return batch
    cols = [batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
            for f in schema]
    return pa.RecordBatch.from_arrays(cols, schema=schema)


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
                f.write(jsonl_text(table.combine_chunks().to_batches()[0], tuple(self.columns))
                        if table.num_rows else "")
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


def executor(workers: int, dask: str | None = None) -> cf.Executor:
    """A local pool of `workers` processes, or an executor whose tasks run on the Dask scheduler at `dask`."""
    if dask:
        from distributed import Client

        return _DaskExecutor(Client(dask))
    return cf.ProcessPoolExecutor(max_workers=max(1, workers))


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
