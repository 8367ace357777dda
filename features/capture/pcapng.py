"""pcapng: sections, interfaces (link type, timestamp resolution and offset) and packet blocks (EPB, SPB,
the obsolete PB). Runs of packet blocks are walked by a compiled loop (`_walk_packets`); the blocks it leaves
(section headers, interface descriptions, anything it does not accept) are read in Python, one at a time,
which also words every complaint."""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numba import njit

from vpnid.features.capture.chunks import NS_PER_S, new_piece, normalise_linktype, u32
from vpnid.features.capture.sources import MAX_CAPLEN, Stream, Warn, truncation
from vpnid.features.packets import CaptureError, RawChunk

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

TSOFFSET_MAX = (1 << 63) // NS_PER_S  # if_tsoffset seconds whose nanoseconds still fit in 64 bits


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


class PcapngReader:
    """Walks pcapng blocks; keeps the interfaces of every section seen (frames name them by global index)."""

    def __init__(self, stream: Stream, name: str, warn: Warn, max_frames: int) -> None:
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
            if cols.count:
                yield self._block_piece(stream.buf, start, stream.pos, cols)
            if problem:
                self._corrupt(problem)
                return
            if cols.count < self.max_frames and not stream.more_or_warn(self.warn):
                break
        if not stream.failed:
            yield from self._tail()

    def _walk(self, buf: bytes | mmap.mmap, pos: int, cols: _NgColumns) -> tuple[int, str | None]:
        """Walk the complete blocks in buf from pos on, collecting up to `max_frames` packet records.
        Returns the offset after the last good complete block, and what is wrong with the block there if
        it is corrupt."""
        end = len(buf)
        u8 = np.frombuffer(buf, np.uint8)
        layout = self.layout
        frame = self.frames
        try:
            while True:
                pos, frame = cols.walk(u8, pos, layout.order == ">", self.section_base, len(self.interfaces),
                                       frame, self.max_frames)
                if not (pos + BLOCK_MIN_LENGTH <= end and cols.count < self.max_frames):
                    break
                # A block the compiled walk left: a section header, an interface, or one it does not accept.
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
        block. `length` may run past the end of buf (a cut last block); `_block_piece` cuts the captured length."""
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
        linktype = normalise_linktype(struct.unpack_from(order + "H", buf, pos + 8)[0])
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

    def _block_piece(self, buf: bytes, start: int, end: int, cols: _NgColumns) -> RawChunk:
        offset, caplen, wirelen, raw_ts, iface, frame = cols.columns()
        ts_ns = np.zeros(len(iface), np.int64)
        for i in np.unique(iface):
            mask = iface == i
            ts_ns[mask] = self.interfaces[i].to_ns(raw_ts[mask])
        ts_ns[raw_ts == NO_TIMESTAMP] = 0  # as Wireshark shows them
        linktypes = np.asarray([interface.linktype for interface in self.interfaces], np.int32)
        return new_piece(np.frombuffer(buf, np.uint8), start, end, offset, caplen, wirelen, ts_ns, linktypes[iface],
                         frame)

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
            self.warn(truncation(self.name, f"block after frame {self.frames}", where))
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
            yield self._block_piece(buf, pos, len(buf), cols)
            what = f"record at frame {self.frames}"
        else:
            what = f"block after frame {self.frames}"
        self.warn(truncation(self.name, what, f"{have} bytes into a {length}-byte block"))


class _NgColumns:
    """Per-packet values of one piece: runs filled by the compiled walk, single packets added by the
    Python path (a cut last block), as arrays (offset, captured and original length, raw timestamp,
    global interface, frame number)."""

    __slots__ = ("parts", "count")

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.count = 0

    def walk(self, u8: np.ndarray, pos: int, big_endian: bool, section_base: int, interfaces: int, frame: int,
             max_frames: int) -> tuple[int, int]:
        """Run `_walk_packets` from pos for up to the frames still wanted; returns (pos, frame) after it."""
        *part, pos, frame = _walk_packets(u8, pos, big_endian, section_base, interfaces, frame, MAX_CAPLEN,
                                          max_frames - self.count)
        if len(part[0]):
            self.parts.append(tuple(part))
            self.count += len(part[0])
        return pos, frame

    def add(self, offset: int, caplen: int, wirelen: int, raw_ts: int, iface: int, frame: int) -> None:
        self.parts.append((np.array([offset], np.int64), np.array([caplen], np.int64), np.array([wirelen], np.int64),
                           np.array([raw_ts], np.uint64), np.array([iface], np.int64), np.array([frame], np.int64)))
        self.count += 1

    def columns(self) -> list[np.ndarray]:
        return [np.concatenate(c) for c in zip(*self.parts)]


@njit(cache=True, nogil=True)
def _walk_packets(buf: np.ndarray, pos: int, big_endian: bool, section_base: int, interfaces: int, frame: int,
                  max_caplen: int, max_records: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The packet blocks (and the blocks that only take a frame number or are skipped) from pos on, up to
    max_records packets: their columns (as `_NgColumns`), the offset after the last block walked and the
    frame number reached. Stops, leaving it to the Python walk, at a section header, an interface
    description, a block cut by the end of buf, and any block the Python walk would refuse: the checks
    here are the same as `PcapngReader._walk` and `_packet`, in the same order. Compiled because blocks
    are sequential by nature (each one's place depends on the one before)."""
    end = buf.shape[0]
    size = max(0, min(max_records, (end - pos) // (SPB_FIXED + 4)))  # the shortest packet block
    offset = np.empty(size, np.int64)
    caplen = np.empty(size, np.int64)
    wirelen = np.empty(size, np.int64)
    raw_ts = np.empty(size, np.uint64)
    iface = np.empty(size, np.int64)
    frames = np.empty(size, np.int64)
    n = 0
    while pos + BLOCK_MIN_LENGTH <= end:
        btype = u32(buf, pos, big_endian)
        length = u32(buf, pos + 4, big_endian)
        if btype == SHB_TYPE or btype == IDB_TYPE:
            break
        if length % 4 or length < BLOCK_MIN_LENGTH or length > BLOCK_MAX_LENGTH or pos + length > end:
            break
        if u32(buf, pos + length - 4, big_endian) != length:
            break
        if btype == EPB_TYPE or btype == PB_TYPE or btype == SPB_TYPE:
            if n == size:
                break
            fixed = SPB_FIXED if btype == SPB_TYPE else EPB_FIXED
            if length < fixed + 4:
                break
            room = min(length - fixed - 4, max_caplen)
            if btype == SPB_TYPE:
                wire = u32(buf, pos + 8, big_endian)
                cap, ifc, ts = min(wire, room), 0, np.uint64(NO_TIMESTAMP)
            else:
                if btype == EPB_TYPE:
                    ifc = u32(buf, pos + 8, big_endian)
                elif big_endian:
                    ifc = (np.int64(buf[pos + 8]) << 8) | buf[pos + 9]
                else:
                    ifc = (np.int64(buf[pos + 9]) << 8) | buf[pos + 8]
                high, low = u32(buf, pos + 12, big_endian), u32(buf, pos + 16, big_endian)
                ts = (np.uint64(high) << np.uint64(32)) | np.uint64(low)
                cap = u32(buf, pos + 20, big_endian)
                wire = u32(buf, pos + 24, big_endian)
                if cap > room:
                    break
            if section_base + ifc >= interfaces:
                break
            frame += 1
            offset[n], caplen[n], wirelen[n], raw_ts[n] = pos + fixed, cap, wire, ts
            iface[n], frames[n] = section_base + ifc, frame
            n += 1
        elif btype == SYSTEMD_JOURNAL_TYPE or btype == CB_COPY_TYPE or btype == CB_NO_COPY_TYPE:
            frame += 1
        pos += length
    return offset[:n], caplen[:n], wirelen[:n], raw_ts[:n], iface[:n], frames[:n], pos, frame


def _options(buf: bytes, pos: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
    """(code, value) of the options in buf[pos:end], up to opt_endofopt (values are padded to 4 bytes)."""
    head = struct.Struct(order + "HH")
    while pos + 4 <= end:
        code, size = head.unpack_from(buf, pos)
        if code == OPT_ENDOFOPT:
            return
        yield code, buf[pos + 4 : min(pos + 4 + size, end)]
        pos += 4 + (size + 3) // 4 * 4
