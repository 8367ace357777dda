"""Output files that can neither destroy an input nor be sent somewhere else.

A report or export is written into a private temporary folder beside its destination and each file is
then renamed into place: a reader never sees half a file, a symlink planted where a file goes is
replaced rather than followed (rename does not follow links), and nothing is moved if writing failed.
Before that, an output that is one of the run's inputs (its captures, its database) is refused, by
path and by inode, so `-o capture.pcap capture.pcap` or an export onto the database cannot empty them.
Files are made readable by their owner only (0600; folders 0700), whatever the umask: they hold
subscriber addresses.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vpnid.classifier.audit.text import printable


class OutputError(Exception):
    """An output cannot be written where it was asked for; the message says why."""


def database_files(location: str) -> list[str]:
    """The files an SQLite database consists of (its write-ahead log and shared-memory index too)."""
    return [location, f"{location}-wal", f"{location}-shm"]


def refuse_inputs(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """OutputError when `output` is one of `inputs` ('-', standard input, is never a file)."""
    for given in inputs:
        if str(given) == "-":
            continue
        same = Path(output).resolve() == Path(given).resolve()
        try:
            same = same or os.path.samefile(output, given)
        except OSError:  # one of them does not exist: not the same file
            pass
        if same:
            raise OutputError(f"{printable(output)}: is also an input ({printable(given)}); refusing to overwrite it")


def private_dir(path: Path) -> Path:
    """`path` as a folder: made (0700) if it is not there, OutputError if something else is."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{printable(path)}: exists and is not a folder; name a folder (new or existing)")
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)  # mkdir's mode passes through the umask
    return path


@contextmanager
def staged(folder: Path, protect: Iterable[str | Path] = ()) -> Iterator[Path]:
    """A private temporary folder to write files into; when the block ends, each of them is made 0600
    and renamed into `folder`, unless its destination is one of `protect` (OutputError, nothing moved)."""
    protect = list(protect)
    try:
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".vpnid-"))
    except OSError as e:
        raise OutputError(f"{printable(folder)}: cannot write there ({e.strerror})") from None
    try:
        yield tmp
        written = sorted(tmp.iterdir())
        for f in written:
            refuse_inputs(folder / f.name, protect)
        for f in written:
            f.chmod(0o600)
            try:
                os.replace(f, folder / f.name)
            except OSError as e:
                raise OutputError(f"{printable(folder / f.name)}: cannot be replaced ({e.strerror})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
