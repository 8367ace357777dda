"""Where capture bytes come from: a memory-mapped regular file (walked in place, pages handed back
behind the walk), gzip-compressed files and stdin (read in large blocks)."""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from vpnid.features.packets import CaptureError

Warn = Callable[[str], None]

READ_BYTES = 32 << 20  # bytes read (or decompressed) per block
MAX_CAPLEN = 256 << 10  # a record claiming more captured bytes than this is corrupt
GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 section 2.3.1
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: expect a gzip header and trailer
STDIN_NAME = "<stdin>"

# Mapped pages are handed back this many pieces behind the piece being walked: the piece before it is
# still in the flow table (`vpnid.features.stream` reads and decodes one chunk ahead, no more). Pages
# released early are still valid (they fault back in from the page cache); pages kept late are resident
# memory, a piece each (~10-20 MB at the 32,768 frames of a chunk).
RELEASE_LAG = 1


def open_capture(path: str | os.PathLike, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
    if path == "-":
        return contextlib.nullcontext(sys.stdin.buffer)  # not ours to close
    try:
        return open(path, "rb")
    except OSError as e:
        raise CaptureError(f"{name}: cannot open ({e.strerror})") from None


def raw_blocks(f: BinaryIO, name: str) -> Iterator[bytes]:
    """The file's bytes in blocks; `read1` so that a pipe delivers what it has without waiting."""
    try:
        while block := f.read1(READ_BYTES):
            yield block
    except OSError as e:
        raise CaptureError(f"{name}: cannot read ({e.strerror})") from None


def decompressed(blocks: Iterator[bytes], name: str, warn: Warn) -> Iterator[bytes]:
    """Pass blocks through, gunzipping them incrementally when the stream starts with the gzip magic."""
    head = _prefix(blocks, len(GZIP_MAGIC))
    if not head:
        raise CaptureError(f"{name}: empty file")
    if not head.startswith(GZIP_MAGIC):
        yield head
        yield from blocks
        return
    yield from _gunzip(head, blocks, name, warn)


def _prefix(blocks: Iterator[bytes], n: int) -> bytes:
    """Blocks joined until they hold the first n bytes of the stream (fewer only if it is shorter)."""
    head = b""
    for block in blocks:
        head += block
        if len(head) >= n:
            break
    return head


def _gunzip(head: bytes, blocks: Iterator[bytes], name: str, warn: Warn) -> Iterator[bytes]:
    """Decompress gzip members one after another (a file may hold several), READ_BYTES out at a time."""
    inflater = zlib.decompressobj(GZIP_WBITS)
    mid_member = False
    for data in itertools.chain([head], blocks):
        while data:
            mid_member = True
            try:
                out = inflater.decompress(data, READ_BYTES)
            except zlib.error as e:
                raise CaptureError(f"{name}: corrupt gzip data ({e})") from None
            if out:
                yield out
            if inflater.eof:
                data, inflater, mid_member = inflater.unused_data, zlib.decompressobj(GZIP_WBITS), False
            else:
                data = inflater.unconsumed_tail
    if mid_member:
        if tail := inflater.flush():
            yield tail
        warn(f"{name}: gzip stream ends early (compressed data cut off)")


class Stream:
    """The capture's bytes: the current block `buf` with the unparsed tail of the previous one in front,
    or the whole file when it is memory-mapped."""

    def __init__(self, blocks: Iterator[bytes], buf: bytes | mmap.mmap = b"") -> None:
        self._blocks = blocks
        self.buf = buf
        self.pos = 0
        self.failed = False  # a read or decompression error ended the stream early

    @classmethod
    def mapped(cls, f: BinaryIO) -> Stream | None:
        """The whole of a regular, non-empty, uncompressed file, mapped read-only; None otherwise."""
        try:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or os.fstat(f.fileno()).st_size == 0:
                return None
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        if mm[: len(GZIP_MAGIC)] == GZIP_MAGIC:
            return None
        mm.madvise(mmap.MADV_SEQUENTIAL)
        return cls(iter(()), mm)

    def release(self, upto: int | None = None) -> None:
        """Let the kernel drop the mapped pages before `upto` (default: `pos`) from this process. The
        data stays valid: a chunk that still looks at them faults them back in from the page cache."""
        upto = self.pos if upto is None else upto
        if isinstance(self.buf, mmap.mmap) and (done := upto - upto % mmap.PAGESIZE):
            self.buf.madvise(mmap.MADV_DONTNEED, 0, done)

    def more(self) -> bool:
        """Append the next block (dropping what was parsed); False at the end of the stream."""
        block = next(self._blocks, None)
        if block is None:
            return False
        self.buf = self.buf[self.pos :] + block
        self.pos = 0
        return True

    def peek(self, n: int) -> bytes:
        """The next n bytes (fewer at the end of the stream), without consuming them."""
        while len(self.buf) - self.pos < n and self.more():
            pass
        return self.buf[self.pos : self.pos + n]

    def more_or_warn(self, warn: Warn) -> bool:
        """`more`, but a read or decompression error after the file header only ends the read."""
        try:
            return self.more()
        except CaptureError as e:
            warn(f"{e}; processed up to the error")
            self.failed = True
            return False


def truncation(name: str, what: str, where: str) -> str:
    """The warning for a file that ends inside a record."""
    return f"{name}: truncated {what} (file ends {where}); processed up to the cut"
