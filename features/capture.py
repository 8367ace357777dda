"""Read pcap / pcapng capture files (optionally gzip-compressed, or streamed on stdin) into `RawChunk`s.

A regular uncompressed file is memory-mapped and walked in place, `chunk_frames` records at a time,
so its bytes are never copied (pages already walked are handed back to the kernel, which keeps peak
memory flat whatever the file size). Compressed files and streams are read in large blocks instead.
Either way the buffer is walked record by record (only record headers are touched: pcap with a
compiled loop, pcapng in Python) and the frames found become a "piece": numpy columns pointing into
the buffer. Pieces are then regrouped into chunks of `chunk_frames` frames, copying bytes only where a
chunk spans two read blocks. Damage at the end of a file (a cut record, a bogus length) ends the read with one warning
and keeps every frame before it; only a file that cannot be a capture at all raises `CaptureError`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import mmap
import os
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from numba import njit

from vpnid.features.packets import LINKTYPE_RAW, RAW_IP_DLTS, CaptureError, RawChunk

Warn = Callable[[str], None]

READ_BYTES = 32 << 20  # bytes read (or decompressed) per block
MAX_CAPLEN = 256 << 10  # a record claiming more captured bytes than this is corrupt
GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 section 2.3.1
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib: expect a gzip header and trailer
STDIN_NAME = "<stdin>"

# Classic pcap (draft-ietf-opsawg-pcap section 4): magic as stored -> (byte order, nanoseconds per tick).
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAP_FILE_HEADER = 24
PCAP_RECORD_HEADER = 16
PCAP_LINKTYPE_MASK = 0xFFFF  # the upper bits of the LinkType field carry FCS information

# pcapng (draft-ietf-opsawg-pcapng).
SHB_TYPE = 0x0A0D0D0A
SHB_MAGIC = SHB_TYPE.to_bytes(4, "little")  # a palindrome: the same in either byte order
BYTE_ORDER_MAGIC = 0x1A2B3C4D
BYTE_ORDER_MAGIC_SWAPPED = 0x4D3C2B1A
IDB_TYPE = 0x00000001
PB_TYPE = 0x00000002  # obsolete Packet Block
SPB_TYPE = 0x00000003
EPB_TYPE = 0x00000006
PACKET_BLOCK_TYPES = frozenset({EPB_TYPE, SPB_TYPE, PB_TYPE})
SYSTEMD_JOURNAL_TYPE = 0x00000009
CB_COPY_TYPE = 0x00000BAD
CB_NO_COPY_TYPE = 0x40000BAD
# Non-packet blocks Wireshark shows as frames: they take a frame number, so ours match its numbering.
WIRESHARK_NUMBERED = frozenset({SYSTEMD_JOURNAL_TYPE, CB_COPY_TYPE, CB_NO_COPY_TYPE})
SHB_MIN_LENGTH = 28
BLOCK_MIN_LENGTH = 12  # type, length, trailing length
BLOCK_MAX_LENGTH = 16 << 20  # no real block is longer; a longer one is corrupt (and is never buffered)
IDB_MIN_LENGTH = 20  # block head, link type, reserved, snap length, trailing length
EPB_FIXED = 28  # type, length, interface, timestamp (2 words), captured length, original length
SPB_FIXED = 12  # type, length, original length
OPT_ENDOFOPT = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
TSRESOL_DEFAULT = 6  # microseconds
TSRESOL_BASE2 = 0x80
# 64 bits of ticks finer than 10^-19 s or 2^-63 s span under two seconds: such an if_tsresol is corrupt.
TSRESOL_MAX_POW10 = 19
TSRESOL_MAX_POW2 = 63
NO_TIMESTAMP = (1 << 64) - 1  # raw timestamp recorded for an SPB, which has none

NS_PER_S = 1_000_000_000
TSOFFSET_MAX = (1 << 63) // NS_PER_S  # if_tsoffset seconds whose nanoseconds still fit in 64 bits

_log = logging.getLogger(__name__)
# Mapped pages are handed back this many pieces behind the walk: the pieces in between are still in use
# (walked ahead, decoded ahead, in the flow table; see `vpnid.features.stream`) and would fault back in.
RELEASE_LAG = 3


def read_chunks(
    path: str | os.PathLike, *, chunk_frames: int = 262_144, warn: Warn | None = None, eager: bool = False
) -> Iterator[RawChunk]:
    """Yield the frames of a capture file in chunks of at most `chunk_frames` frames.

    `eager` yields what each read block held without waiting for a full chunk: for live captures, where
    a packet must not wait for the next ones (chunk sizes then depend on how the data arrives).

    `path` "-" reads a stream from stdin. Raises `CaptureError` (before yielding anything) when the
    file cannot be read or is not a capture; damage later in the file goes to `warn` (default: the
    module logger) and ends the read after the last good frame. Each chunk's `data` is a read-only view
    of a read buffer (copied only where a chunk spans two buffers).
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be positive, not {chunk_frames}")
    name = STDIN_NAME if path == "-" else os.fspath(path)
    warn = warn or _log.warning
    with _open(path, name) as f:
        stream = _Stream.mapped(f) or _Stream(_decompressed(_raw_blocks(f, name), name, warn))
        yield from _rechunk(_pieces(stream, name, warn, chunk_frames), chunk_frames, eager)


def _open(path: str | os.PathLike, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
    if path == "-":
        return contextlib.nullcontext(sys.stdin.buffer)  # not ours to close
    try:
        return open(path, "rb")
    except OSError as e:
        raise CaptureError(f"{name}: cannot open ({e.strerror})") from None


def _raw_blocks(f: BinaryIO, name: str) -> Iterator[bytes]:
    """The file's bytes in blocks; `read1` so that a pipe delivers what it has without waiting."""
    try:
        while block := f.read1(READ_BYTES):
            yield block
    except OSError as e:
        raise CaptureError(f"{name}: cannot read ({e.strerror})") from None


def _decompressed(blocks: Iterator[bytes], name: str, warn: Warn) -> Iterator[bytes]:
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


class _Stream:
    """The capture's bytes: the current block `buf` with the unparsed tail of the previous one in front,
    or the whole file when it is memory-mapped."""

    def __init__(self, blocks: Iterator[bytes], buf: bytes | mmap.mmap = b"") -> None:
        self._blocks = blocks
        self.buf = buf
        self.pos = 0
        self.failed = False  # a read or decompression error ended the stream early

    @classmethod
    def mapped(cls, f: BinaryIO) -> _Stream | None:
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


def _pieces(stream: _Stream, name: str, warn: Warn, max_frames: int) -> Iterator[RawChunk]:
    """Pieces of at most `max_frames` frames (exactly that many while a mapped file lasts, so that
    `_rechunk` passes them through without copying)."""
    magic = stream.peek(4)
    if magic == SHB_MAGIC:
        return _PcapngReader(stream, name, warn, max_frames).pieces()
    if magic in PCAP_MAGICS:
        return _pcap_pieces(stream, name, warn, max_frames, *PCAP_MAGICS[magic])
    if len(magic) < 4:
        raise CaptureError(f"{name}: not a capture file (only {len(magic)} bytes)")
    raise CaptureError(f"{name}: not a capture file (unknown magic 0x{magic.hex()})")


def _cut(name: str, what: str, where: str) -> str:
    """The warning for a file that ends inside a record."""
    return f"{name}: truncated {what} (file ends {where}); processed up to the cut"


# --- classic pcap -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PcapFormat:
    """What a pcap file header says about all of its records."""

    order: str
    tick_ns: int  # 1000 for microsecond files, 1 for nanosecond files
    linktype: int
    max_caplen: int

    @classmethod
    def read(cls, stream: _Stream, name: str, order: str, tick_ns: int) -> _PcapFormat:
        header = stream.peek(PCAP_FILE_HEADER)
        if len(header) < PCAP_FILE_HEADER:
            raise CaptureError(
                f"{name}: truncated pcap file header ({len(header)} of {PCAP_FILE_HEADER} bytes)")
        stream.pos += PCAP_FILE_HEADER
        # The header's snaplen is advisory: writers such as dpkt keep 1500 there and still write longer
        # records (offloaded segments), and Wireshark reads them. Only an absurd length means corruption.
        network = struct.unpack_from(order + "I", header, 20)[0]
        return cls(order, tick_ns, _normalise_linktype(network & PCAP_LINKTYPE_MASK), MAX_CAPLEN)

    def piece(self, buf: bytes | mmap.mmap, start: int, end: int, starts: np.ndarray, headers: np.ndarray,
              frames: int) -> RawChunk:
        """Columns for the records at `starts`, given their header fields (seconds, fraction, captured
        and original length per row)."""
        u8 = np.frombuffer(buf, np.uint8)
        pos = np.asarray(starts, np.int64)
        seconds, fraction, caplen, wirelen = headers.T
        ts_ns = seconds * NS_PER_S + fraction * self.tick_ns
        return _piece(u8, start, end, pos + PCAP_RECORD_HEADER, caplen, wirelen, ts_ns,
                      np.full(len(pos), self.linktype, np.int32),
                      np.arange(frames + 1, frames + len(pos) + 1, dtype=np.int64))


def _pcap_pieces(stream: _Stream, name: str, warn: Warn, max_frames: int, order: str,
                 tick_ns: int) -> Iterator[RawChunk]:
    fmt = _PcapFormat.read(stream, name, order, tick_ns)
    frames = 0

    def walk(start: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        return _walk_pcap(np.frombuffer(stream.buf, np.uint8), start, order == ">", fmt.max_caplen, max_frames)

    # A mapped file is walked one piece ahead on a second thread (the walk releases the GIL): the walk
    # waits on memory, once per record, and the pages it maps are the next piece's, which is then ready
    # when it is asked for. A stream's buffer changes as blocks arrive, so it is walked when needed.
    mapped = isinstance(stream.buf, mmap.mmap)
    ahead: Future | None = None
    begun: collections.deque[int] = collections.deque(maxlen=RELEASE_LAG + 1)
    with ThreadPoolExecutor(1, thread_name_prefix="vpnid-pcap-walk") if mapped else contextlib.nullcontext() as pool:
        while True:
            start = stream.pos
            begun.append(start)
            stream.release(begun[0] if mapped else None)
            starts, headers, stream.pos, bad_caplen = ahead.result() if ahead is not None else walk(start)
            ahead = None
            if mapped and bad_caplen < 0 and len(starts) == max_frames:
                ahead = pool.submit(walk, stream.pos)
            if len(starts):
                yield fmt.piece(stream.buf, start, stream.pos, starts, headers, frames)
                frames += len(starts)
            if bad_caplen >= 0:
                warn(f"{name}: corrupt record header at frame {frames + 1} (captured length {bad_caplen} "
                     f"exceeds the limit of {fmt.max_caplen} bytes); processed up to it")
                return
            if len(starts) < max_frames and not stream.more_or_warn(warn):
                break
    if not stream.failed:
        yield from _pcap_tail(stream, name, warn, fmt, frames)


@njit(cache=True, nogil=True)
def _walk_pcap(buf: np.ndarray, pos: int, big_endian: bool, max_caplen: int,
               max_records: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Start offsets and header fields (seconds, fraction, captured, original length) of up to
    max_records complete records in buf from pos on, the offset after the last of them, and the captured
    length claimed at that offset when it is corrupt (else -1). Sequential by nature (each record's place
    depends on the one before), hence compiled; the header fields are read while their bytes are in
    the CPU cache, as a later gather would miss it once per record."""
    end = buf.shape[0]
    size = max(0, min(max_records, (end - pos) // PCAP_RECORD_HEADER))
    starts = np.empty(size, np.int64)
    headers = np.empty((size, 4), np.int64)
    n = 0
    while n < size and pos + PCAP_RECORD_HEADER <= end:
        for f in range(4):  # four 32-bit fields
            v = 0
            for i in range(4):
                v |= np.int64(buf[pos + 4 * f + i]) << (8 * (3 - i) if big_endian else 8 * i)
            headers[n, f] = v
        caplen = headers[n, 2]
        if caplen > max_caplen:
            return starts[:n], headers[:n], pos, caplen
        after = pos + PCAP_RECORD_HEADER + caplen
        if after > end:
            break
        starts[n] = pos
        n += 1
        pos = after
    return starts[:n], headers[:n], pos, -1


def _pcap_tail(stream: _Stream, name: str, warn: Warn, fmt: _PcapFormat, frames: int) -> Iterator[RawChunk]:
    """The cut record at the end of the file, if any: yielded short when its header is complete."""
    have = len(stream.buf) - stream.pos
    if have == 0:
        return
    what = f"record at frame {frames + 1}"
    if have < PCAP_RECORD_HEADER:
        warn(_cut(name, what, f"{have} bytes into its {PCAP_RECORD_HEADER}-byte header"))
        return
    header = struct.unpack_from(fmt.order + "4I", stream.buf, stream.pos)
    caplen = header[2]
    yield fmt.piece(stream.buf, stream.pos, len(stream.buf), np.array([stream.pos]), np.array([header], np.int64),
                    frames)
    warn(_cut(name, what, f"{have} bytes into a {PCAP_RECORD_HEADER + caplen}-byte record"))


# --- pcapng -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """Record-header readers for one byte order (each pcapng section has its own)."""

    order: str
    head: struct.Struct  # block type, block total length
    u32: struct.Struct
    epb: struct.Struct  # after the block head: interface id, timestamp high, low, captured, original length
    pb: struct.Struct  # same with a 16-bit interface id and a 16-bit drops count

    @classmethod
    def of(cls, order: str) -> _Layout:
        return cls(order, struct.Struct(order + "II"), struct.Struct(order + "I"),
                   struct.Struct(order + "5I"), struct.Struct(order + "H2x4I"))


# The SHB byte-order magic read as a little-endian number -> the section's layout.
LAYOUTS = {BYTE_ORDER_MAGIC: _Layout.of("<"), BYTE_ORDER_MAGIC_SWAPPED: _Layout.of(">")}


@dataclass(frozen=True, slots=True)
class _Interface:
    """What an IDB says about its packets: link type and how to turn its timestamps into epoch ns."""

    linktype: int
    tsresol: int
    tsoffset: int  # seconds

    def to_ns(self, raw: np.ndarray) -> np.ndarray:
        """Epoch ns of raw 64-bit timestamps (uint64), exact to the nanosecond (floored below it)."""
        exp = self.tsresol & ~TSRESOL_BASE2
        if self.tsresol & TSRESOL_BASE2:
            ticks_per_s = np.uint64(1 << exp)
            frac = (raw % ticks_per_s).astype(np.int64) >> max(exp - 33, 0)  # keeps frac * 1e9 below 2**63
            ns = raw // ticks_per_s * NS_PER_S + ((frac * NS_PER_S) >> min(exp, 33)).astype(np.uint64)
        elif exp <= 9:
            ns = raw * np.uint64(10 ** (9 - exp))
        else:
            ns = raw // np.uint64(10 ** (exp - 9))
        return ns.astype(np.int64) + self.tsoffset * NS_PER_S


class _BadBlock(Exception):
    """A pcapng block that cannot be right; the read stops before it."""


class _PcapngReader:
    """Walks pcapng blocks; keeps the interfaces of every section seen (frames name them by global index)."""

    def __init__(self, stream: _Stream, name: str, warn: Warn, max_frames: int) -> None:
        self.stream, self.name, self.warn, self.max_frames = stream, name, warn, max_frames
        self.interfaces: list[_Interface] = []
        self.section_base = 0  # global index of the current section's interface 0
        self.layout = LAYOUTS[BYTE_ORDER_MAGIC]
        self.frames = 0
        self._check_first_section()

    def _check_first_section(self) -> None:
        head = self.stream.peek(SHB_MIN_LENGTH)
        if len(head) < SHB_MIN_LENGTH:
            raise CaptureError(
                f"{self.name}: truncated pcapng section header block ({len(head)} of {SHB_MIN_LENGTH} bytes)")
        try:
            self._start_section(head, 0)
        except _BadBlock as e:
            raise CaptureError(f"{self.name}: not a capture file ({e})") from None

    def pieces(self) -> Iterator[RawChunk]:
        stream = self.stream
        while True:
            cols = _NgColumns()
            start = stream.pos
            stream.release()
            stream.pos, problem = self._walk(stream.buf, start, cols)
            if cols.offset:
                yield self._piece(stream.buf, start, stream.pos, cols)
            if problem:
                self._corrupt(problem)
                return
            if len(cols.offset) < self.max_frames and not stream.more_or_warn(self.warn):
                break
        if not stream.failed:
            yield from self._tail()

    def _walk(self, buf: bytes | mmap.mmap, pos: int, cols: _NgColumns) -> tuple[int, str | None]:
        """Walk the complete blocks in buf from pos on, collecting up to `max_frames` packet records.
        Returns the offset after the last good complete block, and what is wrong with the block there if
        it is corrupt."""
        end = len(buf)
        layout = self.layout
        frame = self.frames
        try:
            while pos + BLOCK_MIN_LENGTH <= end and len(cols.offset) < self.max_frames:
                btype, length = layout.head.unpack_from(buf, pos)
                if btype == SHB_TYPE:  # the same number in either byte order; the length is not
                    layout = self._start_section(buf, pos)
                    btype, length = layout.head.unpack_from(buf, pos)
                if length % 4 or not BLOCK_MIN_LENGTH <= length <= BLOCK_MAX_LENGTH:
                    raise _BadBlock(f"block length {length}")
                if pos + length > end:
                    break
                if layout.u32.unpack_from(buf, pos + length - 4)[0] != length:
                    raise _BadBlock(f"trailing block length does not repeat {length}")
                if btype in PACKET_BLOCK_TYPES:
                    cols.add(*self._packet(buf, pos, btype, length), frame + 1)
                    frame += 1
                elif btype in WIRESHARK_NUMBERED:
                    frame += 1
                elif btype == IDB_TYPE:
                    self.interfaces.append(self._interface(buf, pos, length))
                pos += length
        except _BadBlock as e:
            return pos, str(e)
        finally:
            self.frames = frame
        return pos, None

    def _start_section(self, buf: bytes, pos: int) -> _Layout:
        """Switch to the byte order of the SHB at pos; its interfaces start after those seen so far."""
        bom = buf[pos + 8 : pos + 12]
        layout = LAYOUTS.get(int.from_bytes(bom, "little"))
        if layout is None:
            raise _BadBlock(f"bad pcapng byte-order magic 0x{bom.hex()}")
        self.layout = layout
        self.section_base = len(self.interfaces)
        return layout

    def _packet(self, buf: bytes, pos: int, btype: int, length: int) -> tuple[int, int, int, int, int]:
        """(data offset, captured length, original length, raw timestamp, global interface) of a packet
        block. `length` may run past the end of buf (a cut last block); `_piece` cuts the captured length."""
        layout = self.layout
        fixed = SPB_FIXED if btype == SPB_TYPE else EPB_FIXED
        if length < fixed + 4:
            raise _BadBlock(f"{length}-byte packet block")
        if btype == SPB_TYPE:  # no interface id (always 0) and no timestamp
            (wirelen,) = layout.u32.unpack_from(buf, pos + 8)
            caplen, iface, raw_ts = min(wirelen, length - fixed - 4, MAX_CAPLEN), 0, NO_TIMESTAMP
        else:
            fields = layout.epb if btype == EPB_TYPE else layout.pb
            iface, ts_high, ts_low, caplen, wirelen = fields.unpack_from(buf, pos + 8)
            raw_ts = ts_high << 32 | ts_low
            if caplen > min(length - fixed - 4, MAX_CAPLEN):
                raise _BadBlock(f"captured length {caplen} in a {length}-byte block")
        if self.section_base + iface >= len(self.interfaces):
            raise _BadBlock(f"packet on interface {iface}, which no interface description block defines")
        return pos + fixed, caplen, wirelen, raw_ts, self.section_base + iface

    def _interface(self, buf: bytes, pos: int, length: int) -> _Interface:
        """Link type and timestamp options of the IDB at pos."""
        if length < IDB_MIN_LENGTH:
            raise _BadBlock(f"{length}-byte interface description block")
        order = self.layout.order
        linktype = _normalise_linktype(struct.unpack_from(order + "H", buf, pos + 8)[0])
        tsresol, tsoffset = TSRESOL_DEFAULT, 0
        for code, value in _options(buf, pos + 16, pos + length - 4, order):
            if code == OPT_IF_TSRESOL and value:
                tsresol = value[0]
            elif code == OPT_IF_TSOFFSET and len(value) == 8:
                (tsoffset,) = struct.unpack(order + "q", value)
        limit = TSRESOL_MAX_POW2 if tsresol & TSRESOL_BASE2 else TSRESOL_MAX_POW10
        if tsresol & ~TSRESOL_BASE2 > limit:
            raise _BadBlock(f"unsupported timestamp resolution 0x{tsresol:02x}")
        if abs(tsoffset) > TSOFFSET_MAX:
            raise _BadBlock(f"timestamp offset of {tsoffset} s")
        return _Interface(linktype, tsresol, tsoffset)

    def _piece(self, buf: bytes, start: int, end: int, cols: _NgColumns) -> RawChunk:
        iface = np.asarray(cols.iface, np.int32)
        raw_ts = np.asarray(cols.raw_ts, np.uint64)
        ts_ns = np.zeros(len(iface), np.int64)
        for i in np.unique(iface):
            mask = iface == i
            ts_ns[mask] = self.interfaces[i].to_ns(raw_ts[mask])
        ts_ns[raw_ts == NO_TIMESTAMP] = 0  # as Wireshark shows them
        linktypes = np.asarray([interface.linktype for interface in self.interfaces], np.int32)
        return _piece(np.frombuffer(buf, np.uint8), start, end, np.asarray(cols.offset, np.int64),
                       cols.caplen, cols.wirelen, ts_ns, linktypes[iface], np.asarray(cols.frame, np.int64))

    def _corrupt(self, problem: str) -> None:
        self.warn(f"{self.name}: corrupt block after frame {self.frames} ({problem}); processed up to it")

    def _tail(self) -> Iterator[RawChunk]:
        """The block cut by the end of the file, if any: a packet block whose fixed fields are all
        there is yielded with the packet bytes that are."""
        buf, pos = self.stream.buf, self.stream.pos
        have = len(buf) - pos
        if have == 0:
            return
        if have < BLOCK_MIN_LENGTH:
            where = f"{have} bytes into a block header"
            self.warn(_cut(self.name, f"block after frame {self.frames}", where))
            return
        btype, length = self.layout.head.unpack_from(buf, pos)
        fixed = SPB_FIXED if btype == SPB_TYPE else EPB_FIXED
        if btype in PACKET_BLOCK_TYPES and have >= fixed:
            cols = _NgColumns()
            try:
                cols.add(*self._packet(buf, pos, btype, length), self.frames + 1)
            except _BadBlock as e:
                self._corrupt(str(e))
                return
            self.frames += 1
            yield self._piece(buf, pos, len(buf), cols)
            what = f"record at frame {self.frames}"
        else:
            what = f"block after frame {self.frames}"
        self.warn(_cut(self.name, what, f"{have} bytes into a {length}-byte block"))


@dataclass(slots=True)
class _NgColumns:
    """Per-packet values collected while walking pcapng blocks (lists: appends are the cheap part)."""

    offset: list[int] = dataclasses.field(default_factory=list)
    caplen: list[int] = dataclasses.field(default_factory=list)
    wirelen: list[int] = dataclasses.field(default_factory=list)
    raw_ts: list[int] = dataclasses.field(default_factory=list)
    iface: list[int] = dataclasses.field(default_factory=list)
    frame: list[int] = dataclasses.field(default_factory=list)

    def add(self, offset: int, caplen: int, wirelen: int, raw_ts: int, iface: int, frame: int) -> None:
        self.offset.append(offset)
        self.caplen.append(caplen)
        self.wirelen.append(wirelen)
        self.raw_ts.append(raw_ts)
        self.iface.append(iface)
        self.frame.append(frame)


def _options(buf: bytes, pos: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
    """(code, value) of the options in buf[pos:end], up to opt_endofopt (values are padded to 4 bytes)."""
    head = struct.Struct(order + "HH")
    while pos + 4 <= end:
        code, size = head.unpack_from(buf, pos)
        if code == OPT_ENDOFOPT:
            return
        yield code, buf[pos + 4 : min(pos + 4 + size, end)]
        pos += 4 + (size + 3) // 4 * 4


# --- shared ---------------------------------------------------------------------------------------------


def _normalise_linktype(linktype: int) -> int:
    """DLT_RAW is 12 or 14 depending on the platform that wrote the file; one value downstream."""
    return LINKTYPE_RAW if linktype in RAW_IP_DLTS else linktype


def _piece(u8: np.ndarray, start: int, end: int, offset: np.ndarray, caplen: Iterable[int] | np.ndarray,
           wirelen: Iterable[int] | np.ndarray, ts_ns: np.ndarray, linktype: np.ndarray,
           frame: np.ndarray) -> RawChunk:
    """A RawChunk over u8[start:end]; captured lengths are cut to the bytes present (a cut last record)."""
    data = u8[start:end]
    offset = offset - start
    caplen = np.minimum(np.asarray(caplen, np.int64), len(data) - offset).astype(np.int32)
    wirelen = np.asarray(wirelen, np.int64).astype(np.int32)
    return RawChunk(data, offset, caplen, wirelen, ts_ns, linktype, frame)


def _rechunk(pieces: Iterable[RawChunk], size: int, eager: bool = False) -> Iterator[RawChunk]:
    """Regroup pieces (one per block walked, of any length) into chunks of `size` frames, the last shorter
    (`eager`: every piece's frames are yielded at once, in chunks of at most `size`)."""
    pending: list[RawChunk] = []
    count = 0
    for piece in pieces:
        while count + len(piece) >= size:
            take = size - count
            pending.append(_slice(piece, 0, take))
            yield _concat(pending)
            piece = _slice(piece, take, len(piece))
            pending, count = [], 0
        if len(piece):
            pending.append(piece)
            count += len(piece)
        if eager and pending:
            yield _concat(pending)
            pending, count = [], 0
    if pending:
        yield _concat(pending)


_COLUMNS = tuple(f.name for f in dataclasses.fields(RawChunk) if f.name not in ("data", "offset"))


def _slice(chunk: RawChunk, i: int, j: int) -> RawChunk:
    """Frames i..j-1 of a chunk, as views; `data` narrowed to their bytes (frames lie in buffer order)."""
    if i >= j:
        return RawChunk.empty()
    first = int(chunk.offset[i])
    last_end = int(chunk.offset[j - 1]) + int(chunk.caplen[j - 1])
    columns = {name: getattr(chunk, name)[i:j] for name in _COLUMNS}
    return RawChunk(data=chunk.data[first:last_end], offset=chunk.offset[i:j] - first, **columns)


def _concat(parts: list[RawChunk]) -> RawChunk:
    if len(parts) == 1:
        return parts[0]
    shifts = np.cumsum([0] + [len(p.data) for p in parts[:-1]])
    columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _COLUMNS}
    return RawChunk(data=np.concatenate([p.data for p in parts]),
                    offset=np.concatenate([p.offset + s for p, s in zip(parts, shifts)]), **columns)
